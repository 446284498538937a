"""Kernel side: the wrapper ``python -m kernelexec.sandbox OPTIONS -- KERNEL COMMAND``.

It runs in the kernel's process (same pid as the kernel: it ends with ``exec``): it makes a
cgroup ``k<pid>`` under each ``--cgroup`` directory and moves itself in, applies rlimits,
enters a new network namespace with only loopback up, hands the connection file to the
kernel user, drops to that user (no capabilities, no_new_privs, an allow-listed environment),
then execs. As root, it refuses every fence without ``--user``: root leaves them at will.
Whatever root writes in the kernel user's directory goes through fds (O_EXCL, O_NOFOLLOW,
fchown), never by path.

The wrapper imports the standard library only: it runs before any kernel code and must work
with whatever interpreter the bridge runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import os
import resource
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import EnvironmentBuildError
from .cgroups import CgroupDir, enable_v2_controllers, mkdir_retry, remove_kernel_cgroup

__all__ = [
    "ENV_ALLOWED",
    "ENV_ALLOWED_PREFIXES",
    "EXIT_SANDBOX_FAILED",
    "USER_SUBDIR",
    "SandboxError",
    "allowed_environment",
    "apply",
    "drop_capabilities",
    "main",
]

CPU_PERIOD_US = 100_000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
EXIT_SANDBOX_FAILED = 97


class SandboxError(EnvironmentBuildError):
    """The wrapper could not apply an option; the kernel does not start."""


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        msg = f"cannot write {value!r} to {path}: {exc.strerror or exc}"
        raise SandboxError(msg) from None


# --------------------------------------------------------------------------- cgroups


def _join_cgroup(cg: CgroupDir, memory: int | None, cpu: float | None) -> None:
    pid = os.getpid()
    directory = cg.kernel_dir(pid)
    if directory.exists():  # a dead kernel with our pid left it: start from fresh counters
        remove_kernel_cgroup(directory)
    try:
        mkdir_retry(directory)
        if cg.kind == "v2":
            enable_v2_controllers(
                directory.parent, [c for c, on in (("memory", memory), ("cpu", cpu)) if on]
            )
    except OSError as exc:
        msg = f"cannot create cgroup {directory}: {exc.strerror or exc}"
        raise SandboxError(msg) from None
    _set_limits(cg.kind, directory, memory, cpu)
    _write(directory / "cgroup.procs", str(pid))


def _set_limits(kind: str, directory: Path, memory: int | None, cpu: float | None) -> None:
    if kind == "v2":
        if memory:
            _write(directory / "memory.max", str(memory))
            if (directory / "memory.swap.max").exists():
                _write(directory / "memory.swap.max", "0")
        if cpu:
            _write(directory / "cpu.max", f"{max(1000, int(cpu * CPU_PERIOD_US))} {CPU_PERIOD_US}")
    elif kind == "memory" and memory:
        _write(directory / "memory.limit_in_bytes", str(memory))
        if (directory / "memory.memsw.limit_in_bytes").exists():
            _write(directory / "memory.memsw.limit_in_bytes", str(memory))
    elif kind == "cpu" and cpu:
        _write(directory / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(directory / "cpu.cfs_quota_us", str(max(1000, int(cpu * CPU_PERIOD_US))))


# --------------------------------------------------------------------------- network


def _libc_unshare(flags: int) -> None:
    unshare = getattr(os, "unshare", None)
    if unshare is not None:  # Python >= 3.12
        unshare(flags)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(ctypes.c_int(flags)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


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
        raise SandboxError(msg) from None


# --------------------------------------------------------------------------- user

#: Name of the kernel user's directory inside the pool's runtime directory (which root keeps).
USER_SUBDIR = "kernel"
#: Variables a ``--user`` kernel keeps from the bridge's environment (see docs/environments.md).
ENV_ALLOWED = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TERM"}
    | {"PYDEVD_DISABLE_FILE_VALIDATION"}
)
ENV_ALLOWED_PREFIXES = ("LC_", "KERNELEXEC_", "JPY_")
#: ...except names holding one of these words (the bridge's tokens and the like).
ENV_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "KEY")


def allowed_environment(environ: dict[str, str], keep: Sequence[str] = ()) -> dict[str, str]:
    """The variables a ``--user`` kernel gets: the allow-list, plus ``keep`` (set by the env)."""
    kept = {}
    for name, value in environ.items():
        listed = name in ENV_ALLOWED or name.startswith(ENV_ALLOWED_PREFIXES)
        if name in keep or (listed and not any(w in name.upper() for w in ENV_SECRET_WORDS)):
            kept[name] = value
    return kept


def _open_dir(name: str, dir_fd: int | None = None) -> int:
    """An fd on directory ``name`` (never through a symlink at the last component)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(name, flags, dir_fd=dir_fd)


def _runtime_dirs(runtime_dir: str, uid: int, gid: int) -> tuple[int, str]:
    """(fd, path) of the kernel user's directory ``runtime_dir/kernel``, owned by it, 0700.

    ``runtime_dir`` must be root's and writable by root only, so that the user cannot
    rename or replace ``kernel``; everything inside is handled through fds. It goes with the
    pool's last kernel and is made again here (one squatted by another user is refused).
    """
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(runtime_dir, 0o711)
        holder = _open_dir(runtime_dir)
    except OSError as exc:
        msg = f"cannot open the runtime directory {runtime_dir}: {exc.strerror or exc}"
        raise SandboxError(msg) from None
    try:
        info = os.fstat(holder)
        if info.st_uid != os.geteuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            msg = f"runtime directory {runtime_dir} must be root's and writable by root only"
            raise SandboxError(msg)
        os.fchmod(holder, 0o711)  # whatever the umask: the user passes through
        with contextlib.suppress(FileExistsError):
            os.mkdir(USER_SUBDIR, 0o700, dir_fd=holder)
        own = _open_dir(USER_SUBDIR, dir_fd=holder)
    finally:
        os.close(holder)
    info = os.fstat(own)
    if info.st_uid not in (0, uid):
        os.close(own)
        msg = f"{runtime_dir}/{USER_SUBDIR} belongs to uid {info.st_uid}, not the kernel user"
        raise SandboxError(msg)
    os.fchown(own, uid, gid)
    os.fchmod(own, 0o700)
    return own, os.path.join(runtime_dir, USER_SUBDIR)


def _create_private(name: str, dir_fd: int, data: bytes, uid: int, gid: int) -> None:
    """Write a new file ``name`` in the user's directory (O_EXCL, O_NOFOLLOW), then fchown it.

    A leftover entry (file or planted symlink) is unlinked, never written through.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        os.unlink(name, dir_fd=dir_fd)  # removes the entry itself, a symlink included
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def _relocate(connection_file: str, user_dir: tuple[int, str], uid: int, gid: int) -> str:
    """Copy the connection file where the kernel user can read it; returns the copy's path.

    For ipc, the sockets move into the user's directory too (the bridge's runtime directory
    is private to its user): the paths the bridge connects to become symlinks to them.
    """
    try:
        with open(connection_file, encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError) as exc:
        msg = f"cannot read the connection file {connection_file}: {exc}"
        raise SandboxError(msg) from None
    dir_fd, dir_path = user_dir
    name = f"k{os.getpid()}"
    if info.get("transport") == "ipc":
        old_ip, info["ip"] = info["ip"], os.path.join(dir_path, f"{name}-ipc")
        for port in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"):
            link = f"{old_ip}-{info[port]}"  # in the bridge's own private directory
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(f"{info['ip']}-{info[port]}", link)
    _create_private(f"{name}.json", dir_fd, json.dumps(info).encode(), uid, gid)
    return os.path.join(dir_path, f"{name}.json")


def drop_capabilities() -> None:
    """Empty the bounding and ambient sets (setuid empties the rest), so nothing regains them."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        last = 63
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(last + 1):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() != errno.EINVAL:
            msg = f"cannot drop capability {cap}: {os.strerror(ctypes.get_errno())}"
            raise SandboxError(msg)


def _become(
    user: str, runtime_dir: str | None, connection_file: str | None, keep_env: Sequence[str]
) -> str | None:
    """Switch to ``user`` for good; returns the connection file path the kernel must use.

    Root's steps in the user's directory go through fds (:func:`_runtime_dirs`); then the
    capability sets are emptied, the ids switched, no_new_privs set, and the environment cut
    down to :func:`allowed_environment`.
    """
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        msg = f"no such user {user!r}"
        raise SandboxError(msg) from None
    uid, gid = entry.pw_uid, entry.pw_gid
    user_dir = None
    try:
        if runtime_dir:
            fd, user_dir = _runtime_dirs(runtime_dir, uid, gid)
            try:
                if connection_file:
                    connection_file = _relocate(connection_file, (fd, user_dir), uid, gid)
            finally:
                os.close(fd)
        drop_capabilities()
        os.initgroups(user, gid)
        os.setgid(gid)
        os.setuid(uid)
    except OSError as exc:
        msg = f"cannot switch to user {user!r}: {exc.strerror or exc}"
        raise SandboxError(msg) from None
    home = entry.pw_dir
    if not (os.path.isdir(home) and os.access(home, os.W_OK)) and user_dir:
        home = user_dir  # IPython and friends want a writable home (system users have none)
    kept = allowed_environment(dict(os.environ), keep_env)
    os.environ.clear()
    os.environ.update(kept, HOME=home, USER=user, LOGNAME=user)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    cwd = os.getcwd()
    if not os.access(cwd, os.R_OK | os.W_OK | os.X_OK):
        msg = f"user {user!r} cannot write its working directory {cwd}"
        raise SandboxError(msg)
    return connection_file


# --------------------------------------------------------------------------- the command


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
    parser.add_argument("--runtime-dir", help="root's directory holding the --user's one")
    parser.add_argument(
        "--keep-env", action="append", default=[], help="a variable --user keeps (repeatable)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    return parser


def _refuse_root_without_user(args: argparse.Namespace) -> None:
    """As root, a fence without --user does not hold (root leaves cgroups and namespaces)."""
    fences = [
        name
        for name, on in (
            ("--cgroup", args.cgroup),
            ("--rlimit-as", args.rlimit_as),
            ("--no-network", args.no_network),
        )
        if on
    ]
    if fences and os.geteuid() == 0 and not args.user:
        msg = (
            f"{', '.join(fences)} as root need --user: a root kernel can leave its cgroup, "
            "raise its rlimits and re-enter the host network (docs/security.md)"
        )
        raise SandboxError(msg)


def apply(args: argparse.Namespace, command: list[str]) -> list[str]:
    """Apply every option to this process (root-only steps first); the command to exec."""
    _refuse_root_without_user(args)
    for cg in args.cgroup:
        _join_cgroup(cg, args.memory, args.cpu)
    if args.rlimit_as:
        resource.setrlimit(resource.RLIMIT_AS, (args.rlimit_as, args.rlimit_as))
    if args.no_network:
        _leave_network()
    if args.user:
        moved = _become(args.user, args.runtime_dir, args.connection_file, args.keep_env)
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
    except SandboxError as exc:
        sys.stderr.write(f"kernelexec sandbox: {exc}\n")
        return EXIT_SANDBOX_FAILED
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.stderr.write(f"kernelexec sandbox: cannot run {command[0]}: {exc.strerror}\n")
    return EXIT_SANDBOX_FAILED
