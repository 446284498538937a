"""Kernel side: the wrapper ``python -m kernelexec.sandbox OPTIONS -- KERNEL COMMAND``.

It runs in the kernel's process (same pid as the kernel: it ends with ``exec``): it makes a
cgroup ``k<pid>`` under each ``--cgroup`` directory and moves itself in, applies rlimits,
enters a new network namespace with only loopback up, hands the connection file to the
kernel user, drops to that user, then execs.

The wrapper imports the standard library only: it runs before any kernel code and must work
with whatever interpreter the bridge runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from .cgroups import CgroupDir, enable_v2_controllers, mkdir_retry, remove_kernel_cgroup

__all__ = ["EXIT_SANDBOX_FAILED", "SandboxFailure", "apply", "main"]

CPU_PERIOD_US = 100_000
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_SET_NO_NEW_PRIVS = 38
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
EXIT_SANDBOX_FAILED = 97


class SandboxFailure(Exception):
    """The wrapper could not apply an option; the kernel does not start."""


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        msg = f"cannot write {value!r} to {path}: {exc.strerror or exc}"
        raise SandboxFailure(msg) from None


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
        raise SandboxFailure(msg) from None
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


# --------------------------------------------------------------------------- user


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
