"""Building one virtual environment: uv when it is available, else ``python -m venv`` and pip.

Installer output becomes node status lines (:class:`InstallProgress`) and log records.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from pathlib import Path

from ..errors import EnvironmentBuildError
from .interpreter import Interpreter
from .subprocesses import Progress, run, tail

__all__ = ["INSTALLER_VAR", "InstallProgress", "find_uv", "install"]

log = logging.getLogger(__package__)

#: "uv" or "pip" forces the installer (default: uv when found).
INSTALLER_VAR = "KERNELEXEC_INSTALLER"


def find_uv() -> str | None:
    """The uv binary: $KERNELEXEC_INSTALLER=pip disables it; else PATH, then beside python."""
    if os.environ.get(INSTALLER_VAR, "").lower() == "pip":
        return None
    sibling = Path(sys.executable).parent / "uv"
    found = shutil.which("uv") or (str(sibling) if sibling.exists() else None)
    if found is None and os.environ.get(INSTALLER_VAR, "").lower() == "uv":
        msg = f"{INSTALLER_VAR}=uv but no uv binary was found on PATH"
        raise EnvironmentBuildError(msg)
    return found


class InstallProgress:
    """Turns installer output into node status lines and log records."""

    def __init__(self, progress: Progress, key: str) -> None:
        self.progress = progress
        self.key = key
        self.total = 0
        self.done = 0

    def __call__(self, line: str) -> None:
        log.info("env %s: %s", self.key, line)
        stripped = line.strip()
        if match := re.match(r"Resolved (\d+) packages?", stripped):
            self.total = int(match.group(1))
            self.progress(f"resolved {self.total} packages")
        elif match := re.match(r"\+ ([A-Za-z0-9_.-]+)", stripped):  # uv: " + name==1.0"
            self.done += 1
            self.progress(f"installing ({self.done}/{self.total or '?'}) {match.group(1)}")
        elif match := re.match(r"Collecting ([A-Za-z0-9_.-]+)", stripped):  # pip
            self.total += 1
            self.progress(f"collecting ({self.total}) {match.group(1)}")
        elif stripped.startswith("Installing collected packages:"):
            self.progress(f"installing {self.total} packages")


async def install(interp: Interpreter, target: Path, req_file: Path, feed: InstallProgress) -> str:
    """Create the venv at ``target`` and install into it; returns the installer used."""
    uv = find_uv()
    if uv:
        steps = [
            [uv, "venv", "--quiet", "--no-project", "--python", interp.path, str(target)],
            # bytecode now, as pip does: a kernel's user (env.user) cannot write __pycache__
            # here, nor can anyone under PYTHONDONTWRITEBYTECODE, and compiling ipykernel's
            # imports from source doubles a kernel's start (docs/performance.md)
            [uv, "pip", "install", "--no-progress", "--compile-bytecode", "--python",
             str(target / "bin/python"), "-r", str(req_file)],
        ]  # fmt: skip
    else:
        steps = [
            [interp.path, "-m", "venv", str(target)],
            [str(target / "bin/python"), "-m", "pip", "install", "--no-input",
             "--progress-bar", "off", "--disable-pip-version-check", "-r", str(req_file)],
        ]  # fmt: skip
    for argv in steps:
        step = "creating environment" if "venv" in argv else "installing requirements"
        feed.progress(f"{step} ({'uv' if uv else 'pip'})")
        code, lines = await run(argv, on_line=feed)
        if code != 0:
            msg = (
                f"env.requirements: building the environment failed ({Path(argv[0]).name} "
                f"exited with {code}):\n{tail(lines)}"
            )
            raise EnvironmentBuildError(msg)
    return "uv" if uv else "pip"
