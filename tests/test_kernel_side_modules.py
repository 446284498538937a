"""Which code runs inside the kernel, pinned: the modules a kernel imports need nothing but the
standard library, and a gateway kernel receives exactly them (plus the two that need Jupyter's
own packages, which every kernel has)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from kernelexec.kernels.gateway.bootstrap import bundle_files

#: Modules of kernelexec that run in a kernel process and use the standard library only.
STDLIB_ONLY = (
    "kernelexec",
    "kernelexec.blobs",
    "kernelexec.coldfork",
    "kernelexec.convert",
    "kernelexec.errors",
    "kernelexec.framing",
    "kernelexec.guard",
    "kernelexec.lane",
    "kernelexec.nodeapi",
    "kernelexec.prewarm",
    "kernelexec.protocol",
    "kernelexec.reaper",
    "kernelexec.resultpipe",
    "kernelexec.results",
    "kernelexec.runtime",
    "kernelexec.wrapping",
)
#: In the kernel too, but built on ipykernel / jupyter_client (present in every kernel).
ON_JUPYTER = ("kernelexec.kernel", "kernelexec.kernels", "kernelexec.kernels.base",
              "kernelexec.kernels.decoding")

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
    packages = {"kernelexec", "kernelexec.kernels", "kernelexec.protocol"}
    expected = {_path(m, m in packages) for m in STDLIB_ONLY + ON_JUPYTER}
    shipped = {name for name in bundle_files() if name.endswith(".py")}
    assert shipped == expected
