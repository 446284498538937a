"""wrapping: styles, true user line numbers, syntax errors, trimmed tracebacks."""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

import pytest

from kernelexec.errors import CodeSyntaxError
from kernelexec.kernel.wrapping import (
    compile_node_code,
    compile_script,
    describe,
    error_line,
    format_user_traceback,
    make_function,
)


def call(source: str, msg: Any = None, namespace: dict[str, Any] | None = None) -> Any:
    compiled = compile_node_code(source, "t")
    func = make_function(compiled, namespace if namespace is not None else {})
    return func(msg, None, None, None, None, None)


def test_function_style_returns_the_msg() -> None:
    assert call("msg['payload'] += 1\nreturn msg", {"payload": 1}) == {"payload": 2}


def test_function_style_detected_only_by_top_level_return() -> None:
    nested = "def f():\n    return 1\nclass C:\n    def m(self):\n        return 2\nx = f()"
    assert compile_node_code(nested).style == "script"
    assert compile_node_code("if True:\n    return 1").style == "function"
    assert compile_node_code("for i in []:\n    pass\nelse:\n    return 2").style == "function"


def test_multiline_strings_keep_their_content() -> None:
    source = 'text = """a\n  b\nc"""\nreturn text'
    assert call(source) == "a\n  b\nc"


def test_runtime_error_reports_the_user_line() -> None:
    source = "a = 1\nb = 2\nc = a / 0\nreturn c"
    with pytest.raises(ZeroDivisionError) as info:
        call(source)
    assert error_line(info.value) == 3
    text = format_user_traceback(info.value)
    assert 'File "<node t>", line 3' in text
    assert "c = a / 0" in text
    assert "wrapping.py" not in text and "test_wrapping" not in text


def test_error_in_nested_user_function_names_the_deepest_user_line() -> None:
    source = "def f(x):\n    return x['missing']\n\nreturn f({})"
    with pytest.raises(KeyError) as info:
        call(source)
    assert error_line(info.value) == 2
    assert describe(info.value)["type"] == "KeyError"


def test_globals_are_the_given_namespace_and_are_not_polluted() -> None:
    namespace: dict[str, Any] = {"factor": 3}
    assert call("return msg * factor", 2, namespace) == 6
    assert call("global seen\nseen = msg\nreturn None", 5, namespace) is None
    assert namespace["seen"] == 5
    assert set(namespace) == {"factor", "seen"}


def test_syntax_error_carries_the_user_line_and_column() -> None:
    with pytest.raises(CodeSyntaxError) as info:
        compile_node_code("x = 1\ny = 2\nz = (\nreturn x", "bad")
    error = info.value.to_dict()
    assert error["code"] == "SYNTAX_ERROR"
    assert error["line"] == 3
    assert "<node bad>" in error["message"]
    assert "line 3" in error["traceback"]


def test_compile_time_errors_keep_the_user_line() -> None:
    with pytest.raises(CodeSyntaxError) as info:
        compile_node_code("x = 1\n\nbreak\nreturn x")
    assert info.value.line == 3


def test_top_level_yield_is_rejected_with_a_hint() -> None:
    with pytest.raises(CodeSyntaxError) as info:
        compile_node_code("yield 1\nreturn 2")
    assert info.value.line == 1
    assert "node.send" in info.value.message


def test_null_bytes_become_a_syntax_error() -> None:
    with pytest.raises(CodeSyntaxError):
        compile_node_code("x = 1\x00")


def test_top_level_await_makes_an_async_function() -> None:
    compiled = compile_node_code("import asyncio\nawait asyncio.sleep(0)\nreturn msg + 1")
    assert compiled.is_async and compiled.style == "function"
    func = make_function(compiled, {})
    assert asyncio.run(func(1, None, None, None, None, None)) == 2


def test_await_inside_nested_async_def_is_not_top_level() -> None:
    compiled = compile_node_code("async def f():\n    await g()\nreturn 1")
    assert not compiled.is_async


def test_async_comprehension_counts_as_top_level_await() -> None:
    assert compile_node_code("xs = [x async for x in agen()]\nreturn xs").is_async


def test_script_with_top_level_await_evaluates_to_a_coroutine() -> None:
    compiled = compile_node_code("import asyncio\nawait asyncio.sleep(0)\nresult = 7")
    assert compiled.style == "script" and compiled.is_async
    namespace: dict[str, Any] = {}

    async def run() -> None:
        await eval(compiled.code, namespace)

    asyncio.run(run())
    assert namespace["result"] == 7


def test_script_error_line_is_true() -> None:
    compiled = compile_script("a = 1\n\nraise ValueError('boom')\n", "s")
    with pytest.raises(ValueError) as info:
        exec(compiled.code, {})
    assert error_line(info.value) == 3
    assert 'File "<node s setup>", line 3' in format_user_traceback(info.value)


def test_uses_done_detection() -> None:
    assert compile_node_code("node.done()\nreturn").uses_done
    assert not compile_node_code("done = 1\nreturn msg").uses_done


def test_traceback_module_shows_the_user_source_line() -> None:
    compiled = compile_node_code("x = 1\nraise RuntimeError('here')\nreturn x", "src")
    func = make_function(compiled, {})
    with pytest.raises(RuntimeError) as info:
        func(None, None, None, None, None, None)
    text = "".join(traceback.format_exception(info.value))
    assert "raise RuntimeError('here')" in text


def test_chained_exceptions_are_formatted_without_kernelexec_frames() -> None:
    source = "try:\n    1/0\nexcept Exception as e:\n    raise ValueError('x') from e\nreturn 1"
    with pytest.raises(ValueError) as info:
        call(source)
    text = format_user_traceback(info.value)
    assert "ZeroDivisionError" in text and "line 4" in text and "line 2" in text
    assert "wrapping.py" not in text
