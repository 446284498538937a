"""User code -> a compiled callable whose tracebacks show the user's own line numbers.

Node code comes in two styles, told apart by the parsed tree, never by text:

* **function style** (a ``return`` at top level, outside nested defs/classes), as in
  Node-RED's function node: the module's statements become the body of a function
  ``def <node>(msg, node, context, flow, global_, env)``, ``async def`` when the code
  awaits at top level. The tree is rewrapped, the text is never re-indented, so
  multi-line strings keep their content and every statement keeps its line number.
* **script style** (no top-level ``return``): the code is compiled as a module and run
  in a fresh namespace; top-level ``await`` compiles with ``PyCF_ALLOW_TOP_LEVEL_AWAIT``.

The code is compiled with the filename ``<node NAME>`` (registered in :mod:`linecache`),
so a traceback reads ``File "<node NAME>", line 3`` for the user's third line.
:func:`format_user_traceback` drops the frames of kernelexec itself.

Standard library only: this module runs inside the kernel.
"""

from __future__ import annotations

import ast
import linecache
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from types import CodeType, FunctionType, TracebackType
from typing import Any, Literal

from ..errors import CodeSyntaxError

__all__ = [
    "FILENAME_PREFIX",
    "PARAMS",
    "CompiledCode",
    "compile_node_code",
    "compile_script",
    "error_line",
    "format_user_traceback",
    "is_user_filename",
    "make_function",
]

FILENAME_PREFIX = "<node "
#: The parameters of a function-style node function, in call order.
PARAMS = ("msg", "node", "context", "flow", "global_", "env")
_FUNC_NAME = "__kexec_node__"
_ASYNC_FLAG = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
_AWAITS = (ast.Await, ast.AsyncFor, ast.AsyncWith)
_OWN_DIR = os.path.dirname(os.path.abspath(__file__))

Style = Literal["function", "script"]


@dataclass(frozen=True)
class CompiledCode:
    """Node code ready to run.

    ``code`` is a module code object. Function style: executing it in a namespace
    defines :data:`function_name` there (call it with :data:`PARAMS`). Script style:
    executing it runs the user's statements (when ``is_async``, ``eval`` returns a
    coroutine to await). ``uses_done``: the code mentions ``node.done``.
    """

    style: Style
    is_async: bool
    code: CodeType
    filename: str
    source: str
    uses_done: bool
    function_name: str = _FUNC_NAME


def node_filename(name: str, part: str = "") -> str:
    """``<node NAME>`` or ``<node NAME setup>``: how tracebacks name the user's code."""
    label = " ".join(p for p in (name.strip() or "code", part) if p)
    return f"{FILENAME_PREFIX}{label}>"


def is_user_filename(filename: str) -> bool:
    return filename.startswith(FILENAME_PREFIX)


def _walk_scope(tree: ast.AST) -> Iterator[ast.AST]:
    """Nodes of the top-level scope: does not enter nested functions, classes, lambdas."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        item = stack.pop()
        yield item
        if not isinstance(item, _SCOPES):
            stack.extend(ast.iter_child_nodes(item))


def _has_top_level(tree: ast.AST, kinds: tuple[type[ast.AST], ...]) -> bool:
    return any(isinstance(item, kinds) for item in _walk_scope(tree))


def _has_async_comprehension(tree: ast.AST) -> bool:
    return any(
        isinstance(item, ast.comprehension) and item.is_async for item in _walk_scope(tree)
    )


def _uses_done(tree: ast.AST) -> bool:
    return any(
        isinstance(item, ast.Attribute)
        and item.attr == "done"
        and isinstance(item.value, ast.Name)
        and item.value.id == "node"
        for item in ast.walk(tree)
    )


def _register_source(filename: str, source: str) -> None:
    """Let traceback/linecache show the user's lines (mtime None: never evicted)."""
    lines = source.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    linecache.cache[filename] = (len(source), None, lines, filename)


def syntax_error(exc: SyntaxError, filename: str) -> CodeSyntaxError:
    """A CodeSyntaxError for Python's SyntaxError, naming the user line and column."""
    line = exc.lineno
    where = f" (line {line}, col {exc.offset})" if line and exc.offset else ""
    where = where or (f" (line {line})" if line else "")
    message = f"{exc.msg}{where} in {filename}"
    text = "".join(traceback.format_exception_only(type(exc), exc))
    return CodeSyntaxError(message, type_name=type(exc).__name__, traceback=text, line=line)


def _parse(source: str, filename: str) -> ast.Module:
    try:
        return ast.parse(source, filename, "exec")
    except (SyntaxError, ValueError) as exc:
        raise _as_syntax_error(exc, filename) from None


def _as_syntax_error(exc: Exception, filename: str) -> CodeSyntaxError:
    if isinstance(exc, SyntaxError):
        return syntax_error(exc, filename)
    message = f"{exc} in {filename}"  # ValueError: source contains null bytes
    return CodeSyntaxError(message, type_name=type(exc).__name__)


def _compile(tree: ast.Module, filename: str, flags: int = 0) -> CodeType:
    try:
        code: CodeType = compile(tree, filename, "exec", flags=flags, dont_inherit=True)
        return code
    except (SyntaxError, ValueError) as exc:
        raise _as_syntax_error(exc, filename) from None


def _function_module(tree: ast.Module, is_async: bool) -> ast.Module:
    """Wrap the module's statements into ``def __kexec_node__(msg, ...)``; linenos kept."""
    args = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(arg=name) for name in PARAMS],
        kwonlyargs=[],
        kw_defaults=[],
        defaults=[],
    )
    kind = ast.AsyncFunctionDef if is_async else ast.FunctionDef
    func = kind(name=_FUNC_NAME, args=args, body=tree.body or [ast.Pass()], decorator_list=[])
    if "type_params" in kind._fields:  # Python 3.12+
        setattr(func, "type_params", [])  # noqa: B010 - field unknown to older typeshed
    func.lineno, func.col_offset = 1, 0
    wrapped = ast.Module(body=[func], type_ignores=[])
    ast.fix_missing_locations(wrapped)
    return wrapped


def _reject_top_level_yield(tree: ast.Module, filename: str) -> None:
    for item in _walk_scope(tree):
        if isinstance(item, (ast.Yield, ast.YieldFrom)):
            exc = SyntaxError("'yield' outside function; use node.send() to send several msgs")
            exc.lineno, exc.offset = item.lineno, item.col_offset + 1
            raise syntax_error(exc, filename)


def compile_node_code(source: str, name: str = "", part: str = "") -> CompiledCode:
    """Compile message code (either style). Raises CodeSyntaxError with the user line."""
    filename = node_filename(name, part)
    tree = _parse(source, filename)
    is_async = _has_top_level(tree, _AWAITS) or _has_async_comprehension(tree)
    uses_done = _uses_done(tree)
    if _has_top_level(tree, (ast.Return,)):
        _reject_top_level_yield(tree, filename)
        code = _compile(_function_module(tree, is_async), filename)
        style: Style = "function"
    else:
        code = _compile(tree, filename, _ASYNC_FLAG if is_async else 0)
        style = "script"
    _register_source(filename, source)
    return CompiledCode(style, is_async, code, filename, source, uses_done)


def compile_script(source: str, name: str = "", part: str = "setup") -> CompiledCode:
    """Compile setup/stop code: always a script run in the user namespace."""
    filename = node_filename(name, part)
    tree = _parse(source, filename)
    is_async = _has_top_level(tree, _AWAITS) or _has_async_comprehension(tree)
    code = _compile(tree, filename, _ASYNC_FLAG if is_async else 0)
    _register_source(filename, source)
    return CompiledCode("script", is_async, code, filename, source, _uses_done(tree))


def make_function(compiled: CompiledCode, namespace: dict[str, Any]) -> FunctionType:
    """The function-style node function, with ``namespace`` as its globals.

    Built from the code object directly, so nothing is added to ``namespace``.
    """
    for const in compiled.code.co_consts:
        if isinstance(const, CodeType) and const.co_name == compiled.function_name:
            return FunctionType(const.replace(co_name="<module>"), namespace)
    message = f"{compiled.filename} is script-style code and has no node function"
    raise ValueError(message)


def _is_own_frame(filename: str) -> bool:
    return os.path.dirname(os.path.abspath(filename)) == _OWN_DIR


def _trim(tb: TracebackType | None) -> TracebackType | None:
    """Skip the leading frames of kernelexec (the runtime that called the user code)."""
    first = tb
    while first is not None and not is_user_filename(first.tb_frame.f_code.co_filename):
        first = first.tb_next
    return first if first is not None else tb


def _drop_own_frames(te: traceback.TracebackException) -> None:
    seen: set[int] = set()
    current: traceback.TracebackException | None = te
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kept = [f for f in current.stack if not _is_own_frame(f.filename)]
        current.stack = traceback.StackSummary.from_list(kept or list(current.stack))
        current = current.__cause__ or current.__context__


def format_user_traceback(exc: BaseException) -> str:
    """The traceback as the user should see it: their frames and library frames only."""
    tb = _trim(exc.__traceback__)
    te = traceback.TracebackException(type(exc), exc, tb, compact=True)
    _drop_own_frames(te)
    return "".join(te.format())


def error_line(exc: BaseException) -> int | None:
    """The deepest line of user code in the traceback (None when no user frame)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if is_user_filename(tb.tb_frame.f_code.co_filename):
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is None and isinstance(exc, SyntaxError) and exc.filename:
        line = exc.lineno if is_user_filename(exc.filename) else None
    return line


def describe(exc: BaseException) -> dict[str, Any]:
    """type, message, traceback and line of an exception raised by user code."""
    return {
        "type": type(exc).__name__,
        "message": str(exc) or type(exc).__name__,
        "traceback": format_user_traceback(exc),
        "line": error_line(exc),
    }
