"""Where a node's kernels run: interpreter, managed virtual environment, sandbox, working dir.

The worker calls :func:`prepare_launch` once per pool (at deploy); it returns the
:class:`~kernelexec.kernels.base.LaunchSpec` every kernel of the pool, and every restart,
starts from. See docs/environments.md for each option and what the host must allow.

Managed environments (``env.requirements`` non-empty) are virtual environments holding
ipykernel and the requirements, built with ``uv`` when it is available (else ``python -m venv``
and pip), keyed by the interpreter and the normalized requirements, stored in
:func:`env_root` and shared by every node and restart that asks for the same.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import sandbox
from .config import EnvConfig
from .errors import EnvironmentBuildError
from .kernels.base import LaunchSpec

__all__ = [
    "IPYKERNEL_REQUIREMENT",
    "EnvInfo",
    "ensure_env",
    "env_root",
    "explain_death",
    "grant_to_kernel",
    "list_envs",
    "node_workdir",
    "prepare_launch",
    "release_kernel",
    "remove_env",
    "remove_workdir",
    "work_root",
]

log = logging.getLogger("kernelexec.envs")

Progress = Callable[[str], None]

ENV_DIR_VAR = "KERNELEXEC_ENV_DIR"
WORK_DIR_VAR = "KERNELEXEC_WORK_DIR"
#: Where per-pool runtime directories of kernels run as env.user go (default: the temp dir).
RUNTIME_DIR_VAR = "KERNELEXEC_RUNTIME_DIR"
#: "uv" or "pip" forces the installer (default: uv when found).
INSTALLER_VAR = "KERNELEXEC_INSTALLER"
#: Same range as kernelexec's own dependency (pyproject.toml).
IPYKERNEL_REQUIREMENT = "ipykernel>=6.29,<8"
KERNEL_MODULE = "kernelexec.kernel"
MARKER = "kernelexec-env.json"
ENV_FORMAT = 1
PREFLIGHT_TIMEOUT = 60.0

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
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


# --------------------------------------------------------------------------- directories


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def env_root() -> Path:
    """$KERNELEXEC_ENV_DIR, else $XDG_CACHE_HOME/kernelexec/envs (~/.cache/kernelexec/envs)."""
    configured = os.environ.get(ENV_DIR_VAR)
    return Path(configured) if configured else _xdg("XDG_CACHE_HOME", ".cache") / "kernelexec/envs"


def work_root() -> Path:
    """$KERNELEXEC_WORK_DIR, else $XDG_DATA_HOME/kernelexec/work (~/.local/share/...)."""
    configured = os.environ.get(WORK_DIR_VAR)
    if configured:
        return Path(configured)
    return _xdg("XDG_DATA_HOME", ".local/share") / "kernelexec/work"


def _safe(node_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", node_id).strip(".") or "node"


def node_workdir(node_id: str, workdir: str = "") -> Path:
    """The node's working directory: ``workdir`` if given, else ``work_root()/<node_id>``."""
    return Path(workdir).expanduser() if workdir else work_root() / _safe(node_id)


def remove_workdir(node_id: str, workdir: str = "") -> bool:
    """Delete a node's working directory (the node was removed from the flow). True if it was."""
    path = node_workdir(node_id, workdir)
    if not path.is_dir():
        return False
    shutil.rmtree(path)
    return True


def grant_to_kernel(env: EnvConfig, path: str) -> None:
    """Make a file the bridge wrote (an input blob) readable by the kernel user of ``env``.

    No-op unless ``env.user`` is set; the bridge must then be root, so chown succeeds.
    """
    if env.user:
        import pwd

        entry = pwd.getpwnam(env.user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _prepare_workdir(path: Path, user: str | None) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        if user:
            import pwd

            entry = pwd.getpwnam(user)
            _chown_tree(path, entry.pw_uid, entry.pw_gid)
            path.chmod(0o700)
    except (OSError, KeyError) as exc:
        msg = f"cannot prepare the working directory {path}: {exc}"
        raise EnvironmentBuildError(msg) from None


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    """The node's directory belongs to its kernel user, files made earlier as another included."""
    for top, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            item = os.path.join(top, name)
            if os.lstat(item).st_uid != uid:
                os.chown(item, uid, gid, follow_symlinks=False)
    os.chown(path, uid, gid)


def _package_link() -> Path:
    """A directory holding only a ``kernelexec`` symlink to this package (for PYTHONPATH)."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256(str(package).encode()).hexdigest()[:10]
    holder = env_root() / f".lib-{digest}"
    link = holder / "kernelexec"
    if link.is_symlink() and Path(os.readlink(link)) == package:
        return holder
    holder.mkdir(parents=True, exist_ok=True)
    temp = holder / f".kernelexec-{os.getpid()}-{os.urandom(3).hex()}"
    temp.symlink_to(package, target_is_directory=True)
    temp.replace(link)
    return holder


# --------------------------------------------------------------------------- subprocesses


async def _run(
    argv: Sequence[str], *, on_line: Callable[[str], None] | None = None, timeout: float = 0
) -> tuple[int, list[str]]:
    """Run argv (no shell) without blocking the loop; (exit code, output lines)."""
    env = {**os.environ, "NO_COLOR": "1", "PIP_NO_INPUT": "1", "PYTHONUNBUFFERED": "1"}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
    except OSError as exc:
        return 127, [f"cannot run {argv[0]}: {exc.strerror or exc}"]
    lines: list[str] = []

    async def pump() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = _ANSI.sub("", raw.decode(errors="replace")).rstrip()
            lines.append(line)
            if on_line is not None:
                on_line(line)

    try:
        await asyncio.wait_for(pump(), timeout or None)
        return await proc.wait(), lines
    except (asyncio.TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise


def _tail(lines: Sequence[str], count: int = 15) -> str:
    kept = [line for line in lines if line.strip()]
    return "\n".join(kept[-count:])


@dataclass(frozen=True)
class Interpreter:
    path: str  # as given (a venv's python keeps its venv)
    resolved: str  # symlinks resolved: the identity used in the environment key
    version: str  # full sys.version
    short: str  # "3.11.7"


_INFO = "import json, sys; print(json.dumps([sys.version, sys.version_info[:3]]))"


async def inspect_interpreter(python: str | None) -> Interpreter:
    """Resolve and run ``python`` (None: the bridge's) once to learn its version."""
    given = python or sys.executable
    found = shutil.which(given) if os.sep not in given else given
    if not found or not os.path.exists(found):
        msg = f"env.python: interpreter {given!r} not found; give a full path to a python3 binary"
        raise EnvironmentBuildError(msg)
    code, lines = await _run([found, "-c", _INFO], timeout=30)
    try:
        version, info = json.loads(lines[-1])
    except (IndexError, ValueError):
        msg = f"env.python: {found} did not run as a Python interpreter: {_tail(lines, 5)}"
        raise EnvironmentBuildError(msg) from None
    if code != 0 or tuple(info) < (3, 10):
        msg = f"env.python: {found} is Python {version.split()[0]}; kernelexec needs >= 3.10"
        raise EnvironmentBuildError(msg)
    short = ".".join(str(n) for n in info)
    return Interpreter(found, os.path.realpath(found), version, short)


async def check_interpreter(python: str) -> Interpreter:
    """An interpreter given alone must have ipykernel; say what to install if not."""
    interp = await inspect_interpreter(python)
    code, lines = await _run([interp.path, "-c", "import ipykernel"], timeout=60)
    if code != 0:
        msg = (
            f"env.python: {interp.path} cannot import ipykernel ({_tail(lines, 1)}); install it "
            f"with `{interp.path} -m pip install '{IPYKERNEL_REQUIREMENT}'`, or list "
            "env.requirements so that kernelexec builds a managed environment"
        )
        raise EnvironmentBuildError(msg)
    return interp


# --------------------------------------------------------------------------- managed envs


def normalize_requirements(requirements: Sequence[str]) -> tuple[str, ...]:
    """Strip, drop blanks and comments, collapse spaces, dedupe, sort (case-insensitive)."""
    cleaned = {" ".join(line.split("#", 1)[0].split()) for line in requirements}
    return tuple(sorted((line for line in cleaned if line), key=str.lower))


def env_key(interp: Interpreter, requirements: Sequence[str]) -> str:
    """Hash of interpreter (resolved path + version) and normalized requirements."""
    identity = {
        "format": ENV_FORMAT,
        "python": interp.resolved,
        "version": interp.version,
        "ipykernel": IPYKERNEL_REQUIREMENT,
        "requirements": list(normalize_requirements(requirements)),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EnvInfo:
    """One managed environment, as ``kernelexec env list`` shows it."""

    key: str
    path: Path
    python: str
    version: str
    requirements: tuple[str, ...]
    installer: str
    build_seconds: float
    created: float
    last_used: float
    size: int

    @property
    def python_bin(self) -> Path:
        return self.path / "bin" / "python"


def _read_env(path: Path, *, with_size: bool = False) -> EnvInfo | None:
    try:
        meta = json.loads((path / MARKER).read_text())
        last_used = (path / ".last-used").stat().st_mtime
    except (OSError, ValueError):
        return None
    size = 0
    if with_size:
        for item in path.rglob("*"):
            with contextlib.suppress(OSError):
                if item.is_file() and not item.is_symlink():
                    size += item.stat().st_size
    return EnvInfo(
        key=path.name,
        path=path,
        python=meta["python"],
        version=meta["version"],
        requirements=tuple(meta["requirements"]),
        installer=meta["installer"],
        build_seconds=float(meta["build_seconds"]),
        created=float(meta["created"]),
        last_used=last_used,
        size=size,
    )


def list_envs(*, with_size: bool = True) -> list[EnvInfo]:
    """Every complete managed environment in :func:`env_root`, most recently used first."""
    root = env_root()
    found = [_read_env(p, with_size=with_size) for p in root.iterdir()] if root.is_dir() else []
    return sorted((e for e in found if e), key=lambda e: e.last_used, reverse=True)


def remove_env(key: str) -> bool:
    """Delete one environment (under its build lock). True if it existed."""
    path = env_root() / key
    if not (path / MARKER).exists() or "/" in key or key.startswith("."):
        return False
    with _flock(env_root() / f".{key}.lock", blocking=True):
        trash = env_root() / f".trash-{key}-{os.getpid()}"
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    with contextlib.suppress(OSError):
        (env_root() / f".{key}.lock").unlink()
    return True


@contextlib.contextmanager
def _flock(path: Path, *, blocking: bool) -> Iterator[bool]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


async def _locked(path: Path, progress: Progress, what: str) -> int:
    """Take an exclusive flock on ``path`` without blocking the loop; returns the fd."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    announced = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if not announced:
                progress(f"waiting for another build of {what}")
                announced = True
            try:
                await asyncio.sleep(0.2)
            except asyncio.CancelledError:
                os.close(fd)
                raise


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


class _InstallProgress:
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


async def _install(
    interp: Interpreter, target: Path, req_file: Path, feed: _InstallProgress
) -> str:
    """Create the venv at ``target`` and install into it; returns the installer used."""
    uv = find_uv()
    if uv:
        steps = [
            [uv, "venv", "--quiet", "--no-project", "--python", interp.path, str(target)],
            [uv, "pip", "install", "--no-progress", "--python", str(target / "bin/python"),
             "-r", str(req_file)],
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
        code, lines = await _run(argv, on_line=feed)
        if code != 0:
            msg = (
                f"env.requirements: building the environment failed ({Path(argv[0]).name} "
                f"exited with {code}):\n{_tail(lines)}"
            )
            raise EnvironmentBuildError(msg)
    return "uv" if uv else "pip"


def _retarget(tree: Path, old: str, new: str) -> None:
    """Rewrite the build directory's path in bin/ scripts (shebangs, activate) after rename."""
    for item in (tree / "bin").iterdir():
        if item.is_symlink() or not item.is_file() or item.stat().st_size > 1_000_000:
            continue
        data = item.read_bytes()
        if old.encode() in data:
            item.write_bytes(data.replace(old.encode(), new.encode()))


def _sweep_builds(root: Path) -> None:
    """Remove half-built directories whose builder process is gone."""
    for item in root.glob(".build-*"):
        pid = item.name.rsplit("-", 2)[-2]
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid), 0)
            continue
        shutil.rmtree(item, ignore_errors=True)


async def ensure_env(
    python: str | None, requirements: Sequence[str], progress: Progress
) -> EnvInfo:
    """The managed environment for (python, requirements), built once and then reused.

    Built in ``.build-<key>-<pid>-<rand>`` and renamed into place when complete, under a file
    lock so that concurrent asks (other nodes, other bridges) build it once.
    """
    interp = await inspect_interpreter(python)
    reqs = normalize_requirements(requirements)
    key = env_key(interp, reqs)
    root = env_root()
    final = root / key
    fd = await _locked(root / f".{key}.lock", progress, f"environment {key}")
    try:
        info = _read_env(final)
        if info is None:
            await _build(interp, reqs, key, progress)
            info = _read_env(final)
        else:
            progress(f"environment {key} ready (reused)")
        (final / ".last-used").touch()
    finally:
        os.close(fd)
    if info is None:
        msg = f"environment {key} vanished right after being built in {final}"
        raise EnvironmentBuildError(msg)
    return info


async def _build(interp: Interpreter, reqs: tuple[str, ...], key: str, progress: Progress) -> None:
    root = env_root()
    final = root / key
    _sweep_builds(root)
    if final.exists():  # incomplete leftover (no marker): start over
        shutil.rmtree(final)
    tmp = root / f".build-{key}-{os.getpid()}-{os.urandom(3).hex()}"
    tmp.mkdir(parents=True)
    feed = _InstallProgress(progress, key)
    started = time.monotonic()
    log.info("building environment %s in %s for %s", key, final, ", ".join(reqs))
    try:
        req_file = tmp / "kernelexec-requirements.txt"
        req_file.write_text("\n".join([IPYKERNEL_REQUIREMENT, *reqs]) + "\n")
        venv = tmp / "venv"
        installer = await _install(interp, venv, req_file, feed)
        for item in venv.iterdir():
            item.rename(tmp / item.name)
        venv.rmdir()
        meta = {
            "format": ENV_FORMAT,
            "python": interp.resolved,
            "version": interp.version,
            "requirements": list(reqs),
            "installer": installer,
            "build_seconds": round(time.monotonic() - started, 3),
            "created": time.time(),
        }
        _retarget(tmp, str(venv), str(final))
        (tmp / ".last-used").touch()
        (tmp / MARKER).write_text(json.dumps(meta, indent=1))
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("environment %s built with %s in %.1f s", key, installer, meta["build_seconds"])
    progress(f"environment built in {meta['build_seconds']:.1f} s")


# --------------------------------------------------------------------------- launch


_RUNTIME_DIRS: set[str] = set()


def _make_runtime_dir() -> str:
    """A private directory for one pool's kernel files; swept when its bridge is gone."""
    base = Path(os.environ.get(RUNTIME_DIR_VAR) or tempfile.gettempdir())
    for stale in base.glob("kernelexec-run-*-*"):
        match = re.fullmatch(r"kernelexec-run-(\d+)-\w+", stale.name)
        if match and not stale.is_symlink() and not sandbox.pid_alive(int(match.group(1))):
            shutil.rmtree(stale, ignore_errors=True)
    if not _RUNTIME_DIRS:
        atexit.register(_remove_runtime_dirs)
    path = tempfile.mkdtemp(prefix=f"kernelexec-run-{os.getpid()}-", dir=base)
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
    cwd = node_workdir(node_id, workdir)
    _prepare_workdir(cwd, env.user)
    python, extra_env, described = sys.executable, dict[str, str](), "bridge interpreter"
    if env.requirements:
        info = await ensure_env(env.python, env.requirements, progress)
        python = str(info.python_bin)
        extra_env = {
            "PYTHONPATH": _python_path(_package_link()),
            "VIRTUAL_ENV": str(info.path),
            "PATH": f"{info.path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        described = f"environment {info.key} (Python {info.version.split()[0]})"
    elif env.python:
        progress(f"checking {env.python}")
        interp = await check_interpreter(env.python)
        python, described = interp.path, f"{interp.path} (Python {interp.short})"
        extra_env = {"PYTHONPATH": _python_path(_package_link())}
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
    if box.runtime_dir:
        for name in ("probe.json", f"k{proc.pid}.json"):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(box.runtime_dir, name))
    sandbox.remove_cgroup_dirs(box.cgroups)  # the wrapper makes them again for each kernel
    if proc.returncode != 0:
        text = _tail(_ANSI.sub("", out.decode(errors="replace")).splitlines(), 8)
        hint = ""
        if box.user and not why:
            hint = (
                f"; user {box.user!r} must be able to read the interpreter {python}, the "
                f"environment directory ({ENV_DIR_VAR}) and the kernelexec package, and write "
                f"the working directory {cwd} ({WORK_DIR_VAR})"
            )
        msg = f"the kernel sandbox failed its start check (exit {proc.returncode}): "
        msg += f"{why or text}{hint}"
        raise EnvironmentBuildError(msg)


def explain_death(spec: LaunchSpec, pid: int | None) -> str | None:
    """Why the kernel ``pid`` started from ``spec`` died, when the sandbox knows (OOM kill)."""
    return sandbox.explain_death(spec.argv, pid)


def release_kernel(spec: LaunchSpec, pid: int | None) -> None:
    """Remove the dead kernel's cgroup, killing anything it left. Call after explain_death."""
    sandbox.release_kernel(spec.argv, pid)
