"""One home per contract: the constants both sides of a boundary share live in spec.json, and
no module spells them itself (it imports them from kernelexec.protocol or lib/protocol.js).
A module that writes one of these strings again fails here, naming the file and the line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from kernelexec.protocol import load_spec

ROOT = Path(__file__).resolve().parents[1]
SPEC = load_spec()
#: kernel_side.py runs in a stock kernel before the bundle is there: it spells the kernel
#: constants itself, and test_the_gateway_kernel_side_agrees_with_the_spec checks them.
EXEMPT = {ROOT / "kernelexec/handles/gateway/kernel_side.py"}


def _sources() -> list[Path]:
    python = sorted((ROOT / "kernelexec").rglob("*.py"))
    js = sorted((ROOT / "nodered-node/lib").glob("*.js")) + sorted(
        (ROOT / "nodered-node/nodes").glob("*.js")
    )
    return [p for p in python + js if p not in EXEMPT]


def _spelled(value: str) -> list[str]:
    pattern = re.compile(r"""["']""" + re.escape(value) + r"""["']""")
    found = []
    for path in _sources():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return found


def test_no_module_spells_a_kernel_contract_constant() -> None:
    shared = [SPEC["batch_version"], SPEC["value_encoding"]["marker_key"]]
    shared += [value for key, value in SPEC["kernel"].items() if key not in ("doc", "ops")]
    spelled = {value: _spelled(value) for value in shared}
    assert spelled == {value: [] for value in shared}


def test_every_error_code_the_code_raises_is_in_the_spec() -> None:
    """Codes given as literals (``code="X"``, ``code: "X"``, ``bridgeError("X"``,
    ``{"code": "X"``) are spec codes: an error code has its home in spec.json too."""
    pattern = re.compile(
        r"""(?:\bcode\s*[=:]\s*|["']code["']\s*:\s*|bridgeError\(\s*)["']([A-Z][A-Z_]+)["']"""
    )
    unknown = []
    for path in _sources():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for code in pattern.findall(line):
                if code not in SPEC["error_codes"]:
                    unknown.append(f"{path.relative_to(ROOT)}:{number}: {code}")
    assert unknown == []


def test_the_gateway_kernel_side_agrees_with_the_spec() -> None:
    kernel = SPEC["kernel"]
    tree = ast.parse((ROOT / "kernelexec/handles/gateway/kernel_side.py").read_text("utf-8"))
    constants = {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
        and node.targets[0].id in ("REQUEST_TYPE", "REPLY_TYPE", "EVENTS_COMM", "RUNTIME_NAME")
    }
    assert constants == {
        "REQUEST_TYPE": kernel["request_type"],
        "REPLY_TYPE": kernel["reply_type"],
        "EVENTS_COMM": kernel["events_comm"],
        "RUNTIME_NAME": kernel["runtime_name"],
    }


def _names_op(expr: ast.expr) -> bool:
    """``op``, ``x.get("op")`` or ``x["op"]``: where a request's op is read."""
    if isinstance(expr, ast.Name):
        return expr.id == "op"
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute) and expr.args:
        first = expr.args[0]
        return expr.func.attr == "get" and isinstance(first, ast.Constant) and first.value == "op"
    if isinstance(expr, ast.Subscript):
        return isinstance(expr.slice, ast.Constant) and expr.slice.value == "op"
    return False


def test_no_module_spells_a_runtime_op() -> None:
    """The runtime's ops (spec.json kernel.ops) and the context ops (context_ops) are
    kernelexec.protocol.KernelOp and ContextOp members
    wherever a request is built (``{"op": ...}``) or dispatched (``op == ...``, ``op in``):
    a literal op name there fails here. (Their names are common words, so the check looks at
    those two places, not at every string.)"""
    ops = set(SPEC["kernel"]["ops"]) | set(SPEC["context_ops"])
    found = []
    for path in sorted((ROOT / "kernelexec").rglob("*.py")):
        if path in EXEMPT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            literals: list[ast.expr] = []
            if isinstance(node, ast.Dict):
                literals = [v for k, v in zip(node.keys, node.values, strict=True)
                            if isinstance(k, ast.Constant) and k.value == "op"]
            elif isinstance(node, ast.Compare) and _names_op(node.left):
                for right in node.comparators:
                    literals += right.elts if isinstance(right, ast.Tuple) else [right]
            for literal in literals:
                if isinstance(literal, ast.Constant) and literal.value in ops:
                    found.append(f"{path.relative_to(ROOT)}:{literal.lineno}: {literal.value}")
    assert found == []


def test_only_the_results_module_builds_a_result() -> None:
    """A RESULT (or result frame) is made by kernelexec/kernel/results.py, so every producer (the
    runtime, a cold child, the worker, the bridge) sends the same fields: a dict display with
    a RESULT's "outputs" and "done" keys anywhere else fails here."""
    home = ROOT / "kernelexec/kernel/results.py"
    builders = []
    for path in sorted((ROOT / "kernelexec").rglob("*.py")):
        if path in EXEMPT or path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if {"outputs", "done"} <= keys:
                    builders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert builders == []


def test_only_the_results_module_builds_an_event() -> None:
    """The runtime's events (send, done, status, log: a "type" and a "req_id") are made by
    the builders of kernelexec/kernel/results.py; a dict display of one anywhere in the
    kernel package, the pool or the worker fails here. (The bridge's frames have their own
    builders in server/.)"""
    home = ROOT / "kernelexec/kernel/results.py"
    places = [*(ROOT / "kernelexec/kernel").glob("*.py"), ROOT / "kernelexec/pool.py",
              ROOT / "kernelexec/worker.py"]
    builders = []
    for path in sorted(places):
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Dict):
                pairs = {k.value: v for k, v in zip(node.keys, node.values, strict=True)
                         if isinstance(k, ast.Constant)}
                kind = pairs.get("type")
                if isinstance(kind, ast.Constant) and kind.value in EVENT_KINDS:
                    builders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert builders == []


EVENT_KINDS = {"send", "done", "status", "log"}


#: The two exceptions kernelexec defines outside its error tree, on purpose (errors.py says why).
OUTSIDE_THE_TREE = {"MessageTimeout", "_Unsendable"}


def test_every_exception_kernelexec_defines_is_in_the_error_tree() -> None:
    """Each ``class X(...)`` that derives from an exception is a KernelexecError with a code
    from spec.json (imported, so the check sees the real bases, not the names written)."""
    import importlib
    import inspect

    from kernelexec.errors import KernelexecError

    outside: list[str] = []
    for path in sorted((ROOT / "kernelexec").rglob("*.py")):
        if path in EXEMPT or path.name == "__main__.py":
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = importlib.import_module(".".join(p for p in parts if p != "__init__"))
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not issubclass(cls, BaseException):
                continue
            if name in OUTSIDE_THE_TREE:
                continue
            if not issubclass(cls, KernelexecError) or cls.code not in SPEC["error_codes"]:
                outside.append(f"{module.__name__}.{name}")
    assert outside == []
