"""Shared fixtures. Every test runs real kernels; nothing may be left behind."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def kernel_processes() -> list[str]:
    """Kernel processes started by this test session (children of this process tree)."""
    out = subprocess.run(
        ["pgrep", "-af", "kernelexec.kernel|kernelexec.handles.template|ipykernel_launcher"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [line for line in out.splitlines() if line.strip() and "pgrep" not in line]


def shm_files() -> set[str]:
    directory = Path("/dev/shm")
    if not directory.is_dir():
        return set()
    return {p.name for p in directory.glob("kernelexec-*")}


@pytest.fixture(autouse=True, scope="session")
def _nothing_left_behind() -> Iterator[None]:
    before_files = shm_files()
    yield
    left = sorted(shm_files() - before_files)
    assert not left, f"/dev/shm files left behind by the tests: {left}"


@pytest.fixture(autouse=True, scope="session")
def _private_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Work directories of the tests' nodes live in a temporary directory."""
    old = os.environ.get("KERNELEXEC_WORK_DIR")
    os.environ["KERNELEXEC_WORK_DIR"] = str(tmp_path_factory.mktemp("work"))
    yield
    if old is None:
        os.environ.pop("KERNELEXEC_WORK_DIR", None)
    else:
        os.environ["KERNELEXEC_WORK_DIR"] = old


TEST_USER = "kernelexec-test"


@pytest.fixture(scope="module")
def test_user() -> Iterator[str]:
    """An unprivileged system user for the user-isolation tests (created, then removed)."""
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd")
    created = False
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
        )
        created = True
    yield TEST_USER
    if created:
        subprocess.run(["userdel", TEST_USER], check=False)
