"""Where a node's kernels start from: :func:`prepare_launch` returns their LaunchSpec.

Interpreter or managed environment, working directory and sandbox together; with a sandbox,
the wrapped interpreter is started once with a probe at deploy, so every problem shows then
and not at the first message.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .. import sandbox
from ..config import EnvConfig
from ..errors import EnvironmentBuildError
from ..handles.base import LaunchSpec
from ..kernel import blobs
from .interpreter import check_interpreter
from .managed import ensure_env
from .paths import ENV_DIR_VAR, WORK_DIR_VAR, node_workdir, package_link, prepare_workdir
from .subprocesses import ANSI, Progress, tail

__all__ = [
    "KERNEL_MODULE",
    "PREFLIGHT_TIMEOUT",
    "RUNTIME_DIR_VAR",
    "explain_death",
    "prepare_launch",
    "release_kernel",
]

log = logging.getLogger(__package__)

#: Where per-pool runtime directories of kernels run as env.user go (default: the temp dir).
RUNTIME_DIR_VAR = "KERNELEXEC_RUNTIME_DIR"
KERNEL_MODULE = "kernelexec.kernel"
PREFLIGHT_TIMEOUT = 60.0

_PROBE = r"""
import json, os, sys
import ipykernel
import kernelexec
workdir = os.getcwd()
probe = os.path.join(workdir, ".kernelexec-probe-%d" % os.getpid())
open(probe, "w").close(); os.remove(probe)
if len(sys.argv) > 1:
    open(sys.argv[1]).read()
    other = os.path.join(os.path.dirname(sys.argv[1]), "probe-%d" % os.getpid())
    open(other, "w").close(); os.remove(other)
print(json.dumps({"uid": os.getuid(), "python": sys.version.split()[0]}))
"""

_RUNTIME_DIRS: set[str] = set()


def _make_runtime_dir() -> str:
    """Root's directory for one pool's kernel files (the user's own is inside, made by the
    wrapper); swept when its bridge is gone. Mode 0711: the user passes, cannot rename."""
    base = Path(os.environ.get(RUNTIME_DIR_VAR) or tempfile.gettempdir())
    for stale in base.glob("kernelexec-run-*-*"):
        match = re.fullmatch(r"kernelexec-run-(\d+)-\w+", stale.name)
        with contextlib.suppress(OSError):
            mine = stale.lstat().st_uid == os.geteuid() and not stale.is_symlink()
            if match and mine and not sandbox.pid_alive(int(match.group(1))):
                shutil.rmtree(stale, ignore_errors=True)  # fd-based: follows no symlink
    if not _RUNTIME_DIRS:
        atexit.register(_remove_runtime_dirs)
    path = tempfile.mkdtemp(prefix=f"kernelexec-run-{os.getpid()}-", dir=base)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o711)  # the wrapper checks it is root's and writable by root only
    finally:
        os.close(fd)
    _RUNTIME_DIRS.add(path)
    return path


def _remove_runtime_dirs() -> None:
    for path in _RUNTIME_DIRS:
        shutil.rmtree(path, ignore_errors=True)


def _python_path(extra: Path) -> str:
    current = os.environ.get("PYTHONPATH")
    return f"{extra}{os.pathsep}{current}" if current else str(extra)


async def prepare_launch(
    env: EnvConfig, *, node_id: str, workdir: str, progress: Progress
) -> LaunchSpec:
    """Build or reuse the node's environment and sandbox; the LaunchSpec its kernels start from.

    Raises EnvironmentBuildError (ENV_FAILED) when the environment cannot be built or the host
    cannot provide an isolation option (saying which and why), ConfigError for a bad value.
    ``spec.cleanup()`` may run after each kernel's shutdown (LocalKernel does): it removes only
    what dead kernels left, and the pool's directories with the last one.
    """
    if env.user:
        sandbox.check_user(env.user)
        blobs.trust_kernel_user(sandbox.user_uid(env.user))  # its kernels' outputs are ours to read
    cwd = node_workdir(node_id, workdir)
    prepare_workdir(cwd, env.user)
    python, extra_env, described = await _interpreter(env, progress)
    kernel_argv = (python, "-m", KERNEL_MODULE, "-f", "{connection_file}")
    box = sandbox.plan_sandbox(
        node_id=node_id,
        memory_limit=env.memory_limit,
        cpu_limit=env.cpu_limit,
        network=env.network,
        user=env.user,
    )
    if not box.active:
        return LaunchSpec(argv=kernel_argv, env=extra_env, cwd=str(cwd), description=described)
    try:
        return await _sandboxed_spec(box, kernel_argv, extra_env, cwd, described, progress)
    except BaseException:
        box.cleanup()
        raise


async def _interpreter(env: EnvConfig, progress: Progress) -> tuple[str, dict[str, str], str]:
    """(python, extra environment variables, description) of the node's kernels."""
    python, extra_env, described = sys.executable, dict[str, str](), "bridge interpreter"
    if "PYTHONPATH" in os.environ:  # how the bridge's interpreter may find kernelexec
        extra_env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    if env.requirements:
        info = await ensure_env(env.python, env.requirements, progress)
        python = str(info.python_bin)
        extra_env = {
            "PYTHONPATH": _python_path(package_link()),
            "VIRTUAL_ENV": str(info.path),
            "PATH": f"{info.path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        described = f"environment {info.key} (Python {info.version.split()[0]})"
    elif env.python:
        progress(f"checking {env.python}")
        interp = await check_interpreter(env.python)
        python, described = interp.path, f"{interp.path} (Python {interp.short})"
        extra_env = {"PYTHONPATH": _python_path(package_link())}
    return python, extra_env, described


async def _sandboxed_spec(
    box: sandbox.Sandbox,
    kernel_argv: tuple[str, ...],
    extra_env: dict[str, str],
    cwd: Path,
    described: str,
    progress: Progress,
) -> LaunchSpec:
    if box.user:  # connection file copy and ipc sockets the kernel user can reach
        box.runtime_dir = _make_runtime_dir()
        box.keep_env = tuple(extra_env)
    for note in box.notes:
        log.warning("%s", note)
        progress(note)
    progress("checking the sandbox")
    await _preflight(box, kernel_argv[0], extra_env, cwd)
    isolation = [
        f"memory {box.memory // 1024**2}M" if box.memory else "",
        "(RLIMIT_AS)" if box.rlimit_as else "",
        f"cpu {box.cpu}" if box.cpu else "",
        "no network" if not box.network else "",
        f"user {box.user}" if box.user else "",
    ]
    return LaunchSpec(
        argv=box.wrap(kernel_argv),
        env=extra_env,
        cwd=str(cwd),
        transport="ipc",  # unix sockets: reachable from inside a network namespace
        cleanup=box.cleanup,
        description=f"{described}, " + " ".join(part for part in isolation if part),
    )


async def _preflight(
    box: sandbox.Sandbox, python: str, extra_env: dict[str, str], cwd: Path
) -> None:
    """Start the wrapped interpreter once with a probe: every option is checked at deploy."""
    probe_file = ""
    if box.runtime_dir:
        probe_file = os.path.join(box.runtime_dir, "probe.json")
        Path(probe_file).write_text("{}")
    argv = [a.replace("{connection_file}", probe_file) for a in box.wrap([python, "-c", _PROBE])]
    if probe_file:
        argv.append(probe_file)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **extra_env},
        cwd=str(cwd),
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PREFLIGHT_TIMEOUT)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        sandbox.release_kernel(argv, proc.pid)
        raise
    why = sandbox.explain_death(argv, proc.pid)
    if box.runtime_dir and box.user_dir:
        for name in (probe_file, os.path.join(box.user_dir, f"k{proc.pid}.json")):
            with contextlib.suppress(OSError):
                os.remove(name)  # the last component only: a symlink is removed, not followed
    sandbox.remove_cgroup_dirs(box.cgroups)  # the wrapper makes them again for each kernel
    if proc.returncode != 0:
        raise _preflight_failed(box, python, cwd, proc.returncode, why, out)


def _preflight_failed(
    box: sandbox.Sandbox, python: str, cwd: Path, code: int | None, why: str | None, out: bytes
) -> EnvironmentBuildError:
    text = tail(ANSI.sub("", out.decode(errors="replace")).splitlines(), 8)
    hint = ""
    if box.user and not why:
        hint = (
            f"; user {box.user!r} must be able to read the interpreter {python}, the "
            f"environment directory ({ENV_DIR_VAR}) and the kernelexec package, pass through "
            f"{os.path.dirname(box.runtime_dir or '')} ({RUNTIME_DIR_VAR}), and write "
            f"the working directory {cwd} ({WORK_DIR_VAR})"
        )
    msg = f"the kernel sandbox failed its start check (exit {code}): "
    msg += f"{why or text}{hint}"
    return EnvironmentBuildError(msg)


def explain_death(spec: LaunchSpec, pid: int | None) -> str | None:
    """Why the kernel ``pid`` started from ``spec`` died, when the sandbox knows (OOM kill)."""
    return sandbox.explain_death(spec.argv, pid)


def release_kernel(spec: LaunchSpec, pid: int | None) -> None:
    """Remove the dead kernel's cgroup, killing anything it left. Call after explain_death."""
    sandbox.release_kernel(spec.argv, pid)
