"""Bootstrapping the runtime in a stock remote kernel, which has no kernelexec installed.

The worker first executes :func:`runtime_bootstrap_code`, which ships the in-kernel modules
(:func:`bundle_files`) to the kernel together with the kernel-side helper
(:mod:`.kernel_side`, sent as source).
"""

from __future__ import annotations

import ast
import base64
import zlib
from collections.abc import Iterable
from pathlib import Path

from .wire import dumps

__all__ = [
    "BOOTSTRAP_INFO",
    "RUNTIME_ROOTS",
    "bundle_files",
    "is_bootstrap",
    "runtime_bootstrap_code",
    "shipped_sources",
]

#: The in-kernel modules whose imports (within kernelexec) are followed to build the bundle.
RUNTIME_ROOTS = ("kernelexec.kernel.runtime", "kernelexec.kernel.app")

_PACKAGE = Path(__file__).resolve().parents[2]  # kernelexec/
_KERNEL_SIDE = Path(__file__).with_name("kernel_side.py")

# Runs kernel_side.py in a namespace of its own: only __kernelexec_gw__ (and
# __kernelexec__, from the runtime) are left in the user's namespace.
_RUN_KERNEL_SIDE = """\
def _kernelexec_bootstrap(source, bundle, digest):
    namespace = {"__name__": "kernelexec_gateway_kernel_side"}
    exec(compile(source, "kernelexec/handles/gateway/kernel_side.py", "exec"), namespace)
    namespace["bootstrap"](bundle, digest)
"""

#: the execute_reply payload source of what the bootstrap says (kernel_side.INFO_SOURCE)
BOOTSTRAP_INFO = "kernelexec-gw"


def is_bootstrap(code: str) -> bool:
    """Whether ``code`` is a :func:`runtime_bootstrap_code` (its execute is bounded)."""
    return code.startswith(_RUN_KERNEL_SIDE)


def shipped_sources() -> dict[str, bytes]:
    """Every Python source a stock kernel runs: the bundle and the kernel-side helper (all
    must parse as Python 3.9, the oldest Python kernelexec supports in a kernel)."""
    files = {k: v for k, v in bundle_files().items() if k.endswith(".py")}
    files["kernelexec/handles/gateway/kernel_side.py"] = _KERNEL_SIDE.read_bytes()
    return files


def _imports_of(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    # a package's __init__ is shipped for itself: only its module-level imports count
    nodes = tree.body if path.name == "__init__.py" else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return {name for name in found if name == "kernelexec" or name.startswith("kernelexec.")}


def _module_path(root: Path, module: str) -> Path | None:
    rel = Path(*module.split(".")[1:])
    for candidate in (root / rel / "__init__.py", root.joinpath(rel).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def bundle_files(roots: Iterable[str] = RUNTIME_ROOTS) -> dict[str, bytes]:
    """The kernelexec files a remote kernel needs: the roots, what they import within
    kernelexec (followed transitively), their packages' ``__init__`` and data files."""
    root = _PACKAGE
    files: dict[str, bytes] = {}
    todo = [m for m in roots if _module_path(root, m)]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_path(root, module)
        if path is None:
            continue
        rel = path.relative_to(root.parent).as_posix()
        files[rel] = path.read_bytes()
        if path.name == "__init__.py":
            for data in path.parent.iterdir():
                if data.is_file() and data.suffix not in (".py", ".pyc", ".pyi"):
                    files[data.relative_to(root.parent).as_posix()] = data.read_bytes()
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(_imports_of(path, module))
    return files


def runtime_bootstrap_code(roots: Iterable[str] = RUNTIME_ROOTS) -> str:
    """Code to execute once in a stock remote kernel (after start and every restart).

    It writes the in-kernel kernelexec modules into a private temporary directory of the
    kernel's machine (removed when the kernel exits), puts it first on sys.path, tunes the
    kernel (no post-execute sleep, no history), defines ``__kernelexec_gw__`` (reassembly
    of staged buffers) and ``__kernelexec__ = kernelexec.kernel.runtime.install(get_ipython())``.
    """
    files = bundle_files(roots)
    payload = dumps({k: base64.b64encode(v).decode("ascii") for k, v in sorted(files.items())})
    bundle = base64.b64encode(zlib.compress(payload, 9)).decode("ascii")
    digest = f"{zlib.crc32(payload):08x}"
    source = _KERNEL_SIDE.read_text(encoding="utf-8")
    return (
        f"{_RUN_KERNEL_SIDE}"
        f"_kernelexec_bootstrap({source!r}, {bundle!r}, {digest!r})\n"
        "del _kernelexec_bootstrap\n"
    )
