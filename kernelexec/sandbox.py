"""Isolation for one kernel process, without Docker: cgroups, a network namespace, rlimits, setuid.

Two halves live here (see docs/environments.md):

* **bridge side** — :func:`plan_sandbox` probes what the host allows, creates the pool's
  cgroup directories and returns a :class:`Sandbox` whose :meth:`Sandbox.wrap` turns the kernel
  command into ``python -m kernelexec.sandbox OPTIONS -- KERNEL COMMAND``;
  :func:`explain_death` and :func:`release_kernel` look at one kernel's cgroup after it is gone.
* **kernel side** — :func:`main`, the wrapper. It runs in the kernel's process (same pid as
  the kernel: it ends with ``exec``): it makes a cgroup ``k<pid>`` under each ``--cgroup``
  directory and moves itself in, applies rlimits, enters a new network namespace with only
  loopback up, hands the connection file to the kernel user, drops to that user, then execs.

The wrapper imports the standard library only: it runs before any kernel code and must work
with whatever interpreter the bridge runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import resource
import shutil
import signal
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "CgroupDir",
    "Sandbox",
    "explain_death",
    "main",
    "parse_memory",
    "plan_sandbox",
    "release_kernel",
]

WRAPPER_MODULE = "kernelexec.sandbox"
#: cgroup v2 directory to create kernel cgroups under (a delegated subtree), if set.
CGROUP_ROOT_VAR = "KERNELEXEC_CGROUP_ROOT"
CPU_PERIOD_US = 100_000
#: Smallest RLIMIT_AS a kernel starts under (it maps ~0.8 GB of address space when idle).
MIN_RLIMIT_AS = 1024**3
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_SET_NO_NEW_PRIVS = 38
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
EXIT_SANDBOX_FAILED = 97

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_memory(value: str | int) -> int:
    """Bytes in ``"512M"``, ``"1G"``, ``"1.5GiB"``, ``"256mb"`` or a plain byte count.

    Units are binary, as Docker's ``--memory``. Raises ValueError naming what is accepted.
    """
    match = _MEMORY_RE.match(str(value))
    if not match or float(match.group(1)) <= 0:
        msg = f"{value!r} is not a memory size; use e.g. '512M', '1G' or '1.5G' (binary units)"
        raise ValueError(msg)
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


# --------------------------------------------------------------------------- host probing


@dataclass(frozen=True)
class CgroupDir:
    """One pool's cgroup directory in one hierarchy.

    ``kind`` is "v2" (unified: memory and cpu in the same directory), or "memory" / "cpu"
    (cgroup v1: one hierarchy per controller). Each kernel gets ``path/k<pid>``.
    """

    kind: str
    path: str

    def kernel_dir(self, pid: int) -> Path:
        return Path(self.path) / f"k{pid}"

    def to_arg(self) -> str:
        return f"{self.kind}={self.path}"

    @classmethod
    def from_arg(cls, text: str) -> CgroupDir:
        kind, _, path = text.partition("=")
        if kind not in ("v2", "memory", "cpu") or not path:
            msg = f"--cgroup {text!r}: expected v2=PATH, memory=PATH or cpu=PATH"
            raise ValueError(msg)
        return cls(kind, path)


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount point, mount root, super options) of each cgroup mount."""
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
                continue
            found.append((rfields[0], fields[4], fields[3], set(rfields[2].split(","))))
    return found


def _own_cgroups() -> dict[str, str]:
    """Controller name (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    own: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup", encoding="utf-8") as fh:
        for line in fh:
            parts = line.rstrip("\n").split(":", 2)
            if len(parts) == 3:
                for name in parts[1].split(",") if parts[1] else [""]:
                    own[name] = parts[2]
    return own


def _join(mount_point: str, mount_root: str, cgroup_path: str) -> Path:
    rel = cgroup_path
    if mount_root != "/" and rel.startswith(mount_root):
        rel = rel[len(mount_root) :]
    return Path(mount_point) / rel.lstrip("/")


def find_controller(controller: str) -> tuple[str, Path] | None:
    """("v1" | "v2", directory of this process's cgroup) holding ``controller``, or None."""
    own = _own_cgroups()
    for fstype, point, root, opts in _mounts():
        if fstype == "cgroup" and controller in opts and controller in own:
            return "v1", _join(point, root, own[controller])
    for fstype, point, root, _opts in _mounts():
        if fstype != "cgroup2":
            continue
        try:
            available = (Path(point) / "cgroup.controllers").read_text().split()
        except OSError:
            continue
        if controller in available:
            return "v2", _join(point, root, own.get("", "/"))
    return None


def _v2_parent(own: Path) -> Path:
    """Where kernelexec's v2 tree goes: $KERNELEXEC_CGROUP_ROOT, else the hierarchy root."""
    configured = os.environ.get(CGROUP_ROOT_VAR)
    if configured:
        return Path(configured)
    root = own
    while root.parent != root and (root.parent / "cgroup.controllers").exists():
        root = root.parent
    return root / "kernelexec"


def _enable_v2_controllers(leaf_parent: Path, controllers: Sequence[str]) -> None:
    """Write +memory/+cpu to subtree_control from the hierarchy root down to leaf_parent."""
    chain = [
        p for p in (leaf_parent, *leaf_parent.parents) if (p / "cgroup.subtree_control").exists()
    ]
    for directory in reversed(chain):
        control = directory / "cgroup.subtree_control"
        for name in controllers:
            if name not in control.read_text().split():
                control.write_text(f"+{name}")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:40] or "node"


def make_cgroup_dirs(
    node_id: str, *, memory: bool, cpu: bool
) -> tuple[list[CgroupDir], str | None]:
    """Create the pool's cgroup directories; ([dirs], None) or ([], why not)."""
    wanted = [c for c, on in (("memory", memory), ("cpu", cpu)) if on]
    leaf = f"{_safe_name(node_id)}-{os.getpid()}-{os.urandom(3).hex()}"
    dirs: list[CgroupDir] = []
    for controller in wanted:
        found = find_controller(controller)
        if found is None:
            return [], f"no cgroup hierarchy with the {controller} controller is mounted"
        version, own = found
        try:
            if version == "v1":
                sweep_stale_cgroups(own / "kernelexec")
                path = own / "kernelexec" / leaf
                _mkdir_retry(path)
                dirs.append(CgroupDir(controller, str(path)))
            elif not any(d.kind == "v2" for d in dirs):
                parent = _v2_parent(own)
                sweep_stale_cgroups(parent)
                path = parent / leaf
                _mkdir_retry(path)
                _enable_v2_controllers(path, wanted)
                dirs.append(CgroupDir("v2", str(path)))
        except OSError as exc:
            remove_cgroup_dirs(dirs)
            return [], f"cannot create a {version} cgroup for {controller} ({exc})"
    return dirs, None


def _mkdir_retry(path: Path) -> None:
    """mkdir -p, tolerating another pool's cleanup removing the shared parent meanwhile."""
    for _attempt in range(5):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            continue
    path.mkdir(parents=True, exist_ok=True)


def remove_cgroup_dirs(dirs: Sequence[CgroupDir], *, only_dead: bool = False) -> None:
    """Remove kernel cgroups (SIGKILLing what is left in them), then the pool directories.

    ``only_dead``: keep the cgroup of every kernel whose main process still runs (it is
    named ``k<pid>``), and the pool directory while it holds one.
    """
    for cg in dirs:
        base = Path(cg.path)
        for child in base.glob("k*") if base.is_dir() else []:
            if not (only_dead and _kernel_alive(child)):
                _remove_kernel_cgroup(child)
        with contextlib.suppress(OSError):
            base.rmdir()
        if base.parent.name == "kernelexec":  # the shared parent, once no pool uses it
            with contextlib.suppress(OSError):
                base.parent.rmdir()


def sweep_stale_cgroups(parent: Path) -> None:
    """Remove pool cgroups (``<node>-<bridge pid>-<rand>``) whose bridge process is gone."""
    for pool_dir in parent.iterdir() if parent.is_dir() else []:
        match = re.fullmatch(r".+-(\d+)-[0-9a-f]{6}", pool_dir.name)
        if match and pool_dir.is_dir() and not pid_alive(int(match.group(1))):
            for child in pool_dir.glob("k*"):
                _remove_kernel_cgroup(child)
            with contextlib.suppress(OSError):
                pool_dir.rmdir()


def _kernel_alive(directory: Path) -> bool:
    """Whether the kernel ``k<pid>`` still runs (or its wrapper is still moving in)."""
    try:
        pid = int(directory.name[1:])
    except ValueError:
        return False
    return pid in _cgroup_pids(directory) or pid_alive(pid)


def _cgroup_pids(directory: Path) -> list[int]:
    try:
        return [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _remove_kernel_cgroup(directory: Path) -> None:
    """SIGKILL every process still in ``directory`` (escaped children), then rmdir it."""
    for _attempt in range(50):
        pids = _cgroup_pids(directory)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            directory.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


# --------------------------------------------------------------------------- bridge side


@dataclass
class Sandbox:
    """What the wrapper applies to each kernel of one pool; made by :func:`plan_sandbox`."""

    cgroups: list[CgroupDir] = field(default_factory=list)
    memory: int | None = None
    cpu: float | None = None
    rlimit_as: int | None = None
    network: bool = True
    user: str | None = None
    runtime_dir: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.cgroups or self.rlimit_as or not self.network or self.user)

    def options(self) -> list[str]:
        opts: list[str] = []
        for cg in self.cgroups:
            opts += ["--cgroup", cg.to_arg()]
        if self.memory and self.cgroups:
            opts += ["--memory", str(self.memory)]
        if self.cpu:
            opts += ["--cpu", repr(self.cpu)]
        if self.rlimit_as:
            opts += ["--rlimit-as", str(self.rlimit_as)]
        if not self.network:
            opts.append("--no-network")
        if self.user:
            opts += ["--user", self.user, "--connection-file", "{connection_file}"]
            if self.runtime_dir:
                opts += ["--runtime-dir", self.runtime_dir]
        return opts

    def wrap(self, argv: Sequence[str], python: str | None = None) -> tuple[str, ...]:
        """``argv`` run through the wrapper (``python``: an interpreter that has kernelexec)."""
        if not self.active:
            return tuple(argv)
        head = [python or sys.executable, "-m", WRAPPER_MODULE, *self.options(), "--"]
        return (*head, *argv)

    def cleanup(self) -> None:
        """Remove what dead kernels of this pool left: cgroups (killing stragglers), runtime
        files. Safe to call after each kernel's shutdown: live kernels keep theirs, and the
        pool's directories go with the last kernel. Best effort."""
        remove_cgroup_dirs(self.cgroups, only_dead=True)
        if self.runtime_dir:
            _clean_runtime_dir(Path(self.runtime_dir))


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _clean_runtime_dir(directory: Path) -> None:
    """Remove ``k<pid>*`` files of dead kernels; the whole directory when no kernel is left."""
    live = False
    for item in directory.glob("k*") if directory.is_dir() else []:
        match = re.match(r"k(\d+)", item.name)
        if match and pid_alive(int(match.group(1))):
            live = True
        elif match:
            with contextlib.suppress(OSError):
                item.unlink()
    if not live:
        shutil.rmtree(directory, ignore_errors=True)


def plan_sandbox(
    *,
    node_id: str,
    memory_limit: str | None,
    cpu_limit: float | None,
    network: bool,
    user: str | None,
) -> Sandbox:
    """Check the host can apply each option and make the pool's cgroups.

    Raises :class:`kernelexec.errors.EnvironmentBuildError` naming the option the host cannot
    provide and why; never returns a sandbox that silently lacks one.
    """
    from .errors import ConfigError, EnvironmentBuildError

    box = Sandbox(network=network, user=user, cpu=cpu_limit)
    if memory_limit:
        try:
            box.memory = parse_memory(memory_limit)
        except ValueError as exc:
            msg = f"config.env.memory_limit: {exc}"
            raise ConfigError(msg) from None
    if user:
        check_user(user)
    if not network:
        _check_netns()
    if box.memory or cpu_limit:
        box.cgroups, why = make_cgroup_dirs(node_id, memory=bool(box.memory), cpu=bool(cpu_limit))
        if why and cpu_limit:
            msg = (
                f"env.cpu_limit={cpu_limit}: this host cannot limit CPU: {why}. kernelexec needs "
                "the cgroup cpu controller (cpu.max / cpu.cfs_quota_us) writable by the bridge; "
                "nice and RLIMIT_CPU are not equivalent (RLIMIT_CPU kills the kernel after that "
                "many CPU seconds in total), so the option is refused rather than ignored. "
                "Remove cpu_limit or run the bridge where it may create cgroups."
            )
            raise EnvironmentBuildError(msg)
        if why and (box.memory or 0) < MIN_RLIMIT_AS:
            msg = (
                f"env.memory_limit={memory_limit}: this host cannot give the kernel a memory "
                f"cgroup ({why}); the fallback, RLIMIT_AS, limits address space, and an IPython "
                "kernel maps ~0.8 GB before running anything: use at least 1G, or run the "
                "bridge where it may create cgroups"
            )
            raise EnvironmentBuildError(msg)
        if why:
            box.rlimit_as = box.memory
            box.notes.append(
                f"memory_limit={memory_limit} applied as RLIMIT_AS (address space, per process) "
                f"because {why}"
            )
    return box


def check_user(user: str) -> None:
    """Raise EnvironmentBuildError unless kernels may run as ``user`` here."""
    import pwd

    from .errors import EnvironmentBuildError

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        msg = f"env.user={user!r}: no such user on this host; create it (useradd {user})"
        raise EnvironmentBuildError(msg) from None
    if entry.pw_uid == 0:
        msg = f"env.user={user!r} is root; name an unprivileged user"
        raise EnvironmentBuildError(msg)
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        msg = (
            f"env.user={user!r}: the bridge runs as uid {os.geteuid()}, not root, so it cannot "
            "start kernels as another user; run the bridge as root or remove env.user"
        )
        raise EnvironmentBuildError(msg)


def _check_netns() -> None:
    from .errors import EnvironmentBuildError

    if not Path("/proc/self/ns/net").exists():
        msg = "env.network=false: this host has no network namespaces (/proc/self/ns/net)"
        raise EnvironmentBuildError(msg)


def kernel_cgroups(argv: Sequence[str]) -> list[CgroupDir]:
    """The ``--cgroup`` options of a wrapped command (a LaunchSpec's argv)."""
    found: list[CgroupDir] = []
    if WRAPPER_MODULE not in argv:
        return found
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--cgroup" and i + 1 < len(argv):
            with contextlib.suppress(ValueError):
                found.append(CgroupDir.from_arg(argv[i + 1]))
    return found


def _oom_kills(directory: Path) -> int:
    for name in ("memory.events", "memory.oom_control"):
        try:
            text = (directory / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return 0


def _memory_limit_text(directory: Path) -> str:
    for name in ("memory.max", "memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            return f"{int((directory / name).read_text()) // 1024**2}M"
    return "?"


def explain_death(argv: Sequence[str], pid: int | None) -> str | None:
    """Why kernel ``pid`` (started from the wrapped ``argv``) died, when the sandbox can tell.

    Returns a sentence for the KERNEL_DIED error when its cgroup recorded an OOM kill, else
    None. Call it once the process has exited (before restarting it): it then releases the
    kernel's cgroups (:func:`release_kernel`), so a second call returns None.
    """
    if pid is None:
        return None
    for cg in kernel_cgroups(argv):
        if cg.kind not in ("v2", "memory"):
            continue
        directory = cg.kernel_dir(pid)
        kills = _oom_kills(directory)
        if kills:
            limit = _memory_limit_text(directory)
            release_kernel(argv, pid)
            return (
                f"the kernel hit its memory limit (env.memory_limit, {limit}) and was killed by "
                f"the out-of-memory killer ({kills} process(es) killed); use less memory per "
                "message or raise memory_limit"
            )
    release_kernel(argv, pid)
    return None


def release_kernel(argv: Sequence[str], pid: int | None) -> None:
    """Remove kernel ``pid``'s cgroups, SIGKILLing any process it left behind.

    Does nothing while the kernel process itself still runs. Idempotent.
    """
    if pid is None:
        return
    for cg in kernel_cgroups(argv):
        directory = cg.kernel_dir(pid)
        if not _kernel_alive(directory):
            _remove_kernel_cgroup(directory)


# --------------------------------------------------------------------------- kernel side


class SandboxFailure(Exception):
    """The wrapper could not apply an option; the kernel does not start."""


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        msg = f"cannot write {value!r} to {path}: {exc.strerror or exc}"
        raise SandboxFailure(msg) from None


def _join_cgroup(cg: CgroupDir, memory: int | None, cpu: float | None) -> None:
    pid = os.getpid()
    directory = cg.kernel_dir(pid)
    if directory.exists():  # a dead kernel with our pid left it: start from fresh counters
        _remove_kernel_cgroup(directory)
    try:
        _mkdir_retry(directory)
        if cg.kind == "v2":
            _enable_v2_controllers(
                directory.parent, [c for c, on in (("memory", memory), ("cpu", cpu)) if on]
            )
    except OSError as exc:
        msg = f"cannot create cgroup {directory}: {exc.strerror or exc}"
        raise SandboxFailure(msg) from None
    if cg.kind == "v2":
        if memory:
            _write(directory / "memory.max", str(memory))
            if (directory / "memory.swap.max").exists():
                _write(directory / "memory.swap.max", "0")
        if cpu:
            _write(directory / "cpu.max", f"{max(1000, int(cpu * CPU_PERIOD_US))} {CPU_PERIOD_US}")
    elif cg.kind == "memory" and memory:
        _write(directory / "memory.limit_in_bytes", str(memory))
        if (directory / "memory.memsw.limit_in_bytes").exists():
            _write(directory / "memory.memsw.limit_in_bytes", str(memory))
    elif cg.kind == "cpu" and cpu:
        _write(directory / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(directory / "cpu.cfs_quota_us", str(max(1000, int(cpu * CPU_PERIOD_US))))
    _write(directory / "cgroup.procs", str(pid))


def _libc_unshare(flags: int) -> None:
    unshare = getattr(os, "unshare", None)
    if unshare is not None:  # Python >= 3.12
        unshare(flags)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(ctypes.c_int(flags)) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _loopback_up() -> None:
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22s", b"lo", 0, b"")
        flags = struct.unpack("16sH22s", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH22s", b"lo", flags | IFF_UP, b""))


def _leave_network() -> None:
    """New network namespace with only loopback (up). Unprivileged: inside a user namespace."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        if uid == 0:
            _libc_unshare(CLONE_NEWNET)
        else:
            _libc_unshare(CLONE_NEWUSER | CLONE_NEWNET)
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        _loopback_up()
    except OSError as exc:
        msg = f"cannot create a network namespace: {exc.strerror or exc}"
        raise SandboxFailure(msg) from None


def _relocate(connection_file: str, runtime_dir: str, uid: int, gid: int) -> str:
    """Copy the connection file where the kernel user can read it; returns the copy's path.

    For ipc, the sockets move into ``runtime_dir`` too (the bridge's runtime directory is
    private to its user): the paths the bridge connects to become symlinks to them.
    """
    try:
        with open(connection_file, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError) as exc:
        msg = f"cannot read the connection file {connection_file}: {exc}"
        raise SandboxFailure(msg) from None
    prefix = os.path.join(runtime_dir, f"k{os.getpid()}")
    if info.get("transport") == "ipc":
        old_ip, info["ip"] = info["ip"], f"{prefix}-ipc"
        for name in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
            link = f"{old_ip}-{info[name]}"
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(f"{info['ip']}-{info[name]}", link)
    copy = f"{prefix}.json"
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(info, fh)
    os.chown(copy, uid, gid)
    return copy


def _own_runtime_dir(path: str, uid: int, gid: int) -> None:
    """Make ``path`` a 0700 directory of the kernel user; refuse one a third party made."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (0, uid):
        msg = f"runtime directory {path} is not a directory of root or the kernel user"
        raise SandboxFailure(msg)
    os.chown(path, uid, gid)
    os.chmod(path, 0o700)


def _become(user: str, runtime_dir: str | None, connection_file: str | None) -> str | None:
    """Switch to ``user`` for good; returns the connection file path the kernel must use."""
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        msg = f"no such user {user!r}"
        raise SandboxFailure(msg) from None
    uid, gid = entry.pw_uid, entry.pw_gid
    try:
        if runtime_dir:
            _own_runtime_dir(runtime_dir, uid, gid)
            if connection_file:
                connection_file = _relocate(connection_file, runtime_dir, uid, gid)
        os.initgroups(user, gid)
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        msg = f"cannot switch to user {user!r}: {exc.strerror or exc}"
        raise SandboxFailure(msg) from None
    home = entry.pw_dir
    if not (os.path.isdir(home) and os.access(home, os.W_OK)) and runtime_dir:
        home = runtime_dir  # IPython and friends want a writable home (system users have none)
    os.environ.update(HOME=home, USER=user, LOGNAME=user)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    cwd = os.getcwd()
    if not os.access(cwd, os.R_OK | os.W_OK | os.X_OK):
        msg = f"user {user!r} cannot write its working directory {cwd}"
        raise SandboxFailure(msg)
    return connection_file


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kernelexec.sandbox",
        description="Apply kernelexec isolation to this process, then exec COMMAND.",
    )
    parser.add_argument("--cgroup", action="append", default=[], type=CgroupDir.from_arg)
    parser.add_argument("--memory", type=int, help="bytes, applied in each --cgroup")
    parser.add_argument("--cpu", type=float, help="CPUs (cgroup quota)")
    parser.add_argument("--rlimit-as", type=int, help="RLIMIT_AS bytes (no cgroup)")
    parser.add_argument("--no-network", action="store_true")
    parser.add_argument("--user")
    parser.add_argument("--connection-file", help="the kernel's, relocated for --user")
    parser.add_argument("--runtime-dir", help="directory given to --user for kernel files")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    return parser


def apply(args: argparse.Namespace, command: list[str]) -> list[str]:
    """Apply every option to this process (root-only steps first); the command to exec."""
    for cg in args.cgroup:
        _join_cgroup(cg, args.memory, args.cpu)
    if args.rlimit_as:
        resource.setrlimit(resource.RLIMIT_AS, (args.rlimit_as, args.rlimit_as))
    if args.no_network:
        _leave_network()
    if args.user:
        moved = _become(args.user, args.runtime_dir, args.connection_file)
        if moved and args.connection_file:
            command = [moved if arg == args.connection_file else arg for arg in command]
    return command


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = [c for c in args.command]
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        sys.stderr.write("kernelexec sandbox: no command after --\n")
        return 2
    try:
        command = apply(args, command)
    except SandboxFailure as exc:
        sys.stderr.write(f"kernelexec sandbox: {exc}\n")
        return EXIT_SANDBOX_FAILED
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.stderr.write(f"kernelexec sandbox: cannot run {command[0]}: {exc.strerror}\n")
    return EXIT_SANDBOX_FAILED


if __name__ == "__main__":
    sys.exit(main())
