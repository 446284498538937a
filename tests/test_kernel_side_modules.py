"""Which code runs inside the kernel, pinned: the modules a kernel imports need nothing but the
standard library, and a gateway kernel receives exactly them (plus the two that need Jupyter's
own packages, which every kernel has)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import kernelexec.kernel
from kernelexec.handles.gateway.bootstrap import bundle_files

#: Modules of kernelexec that run in a kernel process and use the standard library only.
STDLIB_ONLY = (
    "kernelexec",
    "kernelexec.errors",
    "kernelexec.protocol",
    "kernelexec.kernel",
    "kernelexec.kernel.answers",
    "kernelexec.kernel.blobs",
    "kernelexec.kernel.clone",
    "kernelexec.kernel.coldfork",
    "kernelexec.kernel.convert",
    "kernelexec.kernel.debugging",
    "kernelexec.kernel.framing",
    "kernelexec.kernel.guard",
    "kernelexec.kernel.lane",
    "kernelexec.kernel.nodeapi",
    "kernelexec.kernel.packing",
    "kernelexec.kernel.prewarm",
    "kernelexec.kernel.reaper",
    "kernelexec.kernel.resultpipe",
    "kernelexec.kernel.results",
    "kernelexec.kernel.runtime",
    "kernelexec.kernel.wrapping",
    "kernelexec.kernel.zygote",
)
#: In the kernel too, but built on ipykernel / jupyter_client (present in every kernel).
ON_JUPYTER = ("kernelexec.kernel.app", "kernelexec.kernel.decoding")

_BLOCKER = textwrap.dedent(
    """
    import importlib, importlib.abc, sys
    allowed = set(sys.argv[1].split(","))

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            top = name.split(".")[0]
            if top == "kernelexec" and name not in allowed:
                raise ImportError(f"{name} is not an in-kernel module")
            if top != "kernelexec" and top not in sys.stdlib_module_names:
                raise ImportError(f"{name} is not in the standard library")
            return None

    sys.meta_path.insert(0, Blocker())
    for module in sys.argv[1].split(","):
        importlib.import_module(module)
    """
)


def _path(module: str, package: bool) -> str:
    return module.replace(".", "/") + ("/__init__.py" if package else ".py")


def test_the_in_kernel_modules_import_with_only_the_standard_library() -> None:
    """Imported in a fresh interpreter where every other import fails: any third-party
    package or bridge-side kernelexec module they reached would fail this."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", _BLOCKER, ",".join(STDLIB_ONLY)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_gateway_kernel_receives_exactly_the_in_kernel_modules() -> None:
    packages = {"kernelexec", "kernelexec.kernel", "kernelexec.protocol"}
    expected = {_path(m, m in packages) for m in STDLIB_ONLY + ON_JUPYTER}
    shipped = {name for name in bundle_files() if name.endswith(".py")}
    assert shipped == expected


def test_the_kernel_package_is_what_runs_in_the_kernel() -> None:
    """Every module of kernelexec/kernel/ is listed above (so it is checked for imports and
    shipped to gateway kernels), and nothing listed lives elsewhere but the shared contract
    (kernelexec.errors, kernelexec.protocol) and the package's own __init__."""
    package = Path(kernelexec.kernel.__file__).parent
    modules = {f"kernelexec.kernel.{p.stem}" for p in package.glob("*.py")}
    modules = {"kernelexec.kernel" if m.endswith(".__init__") else m for m in modules}
    modules.discard("kernelexec.kernel.__main__")  # the program's entry: `python -m`
    listed = set(STDLIB_ONLY + ON_JUPYTER)
    assert modules == {m for m in listed if m.startswith("kernelexec.kernel")}
    assert listed - modules == {"kernelexec", "kernelexec.errors", "kernelexec.protocol"}
