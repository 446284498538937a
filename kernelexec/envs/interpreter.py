"""The Python interpreter kernels run on: found, its version learnt, ipykernel checked."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass

from ..errors import EnvironmentBuildError
from .subprocesses import run, tail

__all__ = ["IPYKERNEL_REQUIREMENT", "Interpreter", "check_interpreter", "inspect_interpreter"]

#: Same range as kernelexec's own dependency (pyproject.toml).
IPYKERNEL_REQUIREMENT = "ipykernel>=6.29,<8"

_INFO = "import json, sys; print(json.dumps([sys.version, sys.version_info[:3]]))"


@dataclass(frozen=True)
class Interpreter:
    path: str  # as given (a venv's python keeps its venv)
    resolved: str  # symlinks resolved: the identity used in the environment key
    version: str  # full sys.version
    short: str  # "3.11.7"


async def inspect_interpreter(python: str | None) -> Interpreter:
    """Resolve and run ``python`` (None: the bridge's) once to learn its version."""
    given = python or sys.executable
    found = shutil.which(given) if os.sep not in given else given
    if not found or not os.path.exists(found):
        msg = f"env.python: interpreter {given!r} not found; give a full path to a python3 binary"
        raise EnvironmentBuildError(msg)
    code, lines = await run([found, "-c", _INFO], timeout=30)
    try:
        version, info = json.loads(lines[-1])
    except (IndexError, ValueError):
        msg = f"env.python: {found} did not run as a Python interpreter: {tail(lines, 5)}"
        raise EnvironmentBuildError(msg) from None
    if code != 0 or tuple(info) < (3, 10):
        msg = f"env.python: {found} is Python {version.split()[0]}; kernelexec needs >= 3.10"
        raise EnvironmentBuildError(msg)
    short = ".".join(str(n) for n in info)
    return Interpreter(found, os.path.realpath(found), version, short)


async def check_interpreter(python: str) -> Interpreter:
    """An interpreter given alone must have ipykernel; say what to install if not."""
    interp = await inspect_interpreter(python)
    code, lines = await run([interp.path, "-c", "import ipykernel"], timeout=60)
    if code != 0:
        msg = (
            f"env.python: {interp.path} cannot import ipykernel ({tail(lines, 1)}); install it "
            f"with `{interp.path} -m pip install '{IPYKERNEL_REQUIREMENT}'`, or list "
            "env.requirements so that kernelexec builds a managed environment"
        )
        raise EnvironmentBuildError(msg)
    return interp
