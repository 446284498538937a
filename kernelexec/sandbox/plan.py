"""Bridge side: what a pool's sandbox applies, the wrapped kernel command, and after a death.

:func:`plan_sandbox` probes what the host allows, creates the pool's cgroup directories and
returns a :class:`Sandbox` whose :meth:`Sandbox.wrap` turns the kernel command into
``python -m kernelexec.sandbox OPTIONS -- KERNEL COMMAND``; :func:`explain_death` and
:func:`release_kernel` look at one kernel's cgroup after it is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .cgroups import (
    CgroupDir,
    kernel_alive,
    make_cgroup_dirs,
    memory_limit_text,
    oom_kills,
    pid_alive,
    remove_cgroup_dirs,
    remove_kernel_cgroup,
)
from .wrapper import USER_SUBDIR

__all__ = [
    "MIN_RLIMIT_AS",
    "WRAPPER_MODULE",
    "Sandbox",
    "check_user",
    "explain_death",
    "kernel_cgroups",
    "parse_memory",
    "plan_sandbox",
    "release_kernel",
]

#: What runs the wrapper: ``python -m kernelexec.sandbox`` (this package's __main__).
WRAPPER_MODULE = "kernelexec.sandbox"
#: Smallest RLIMIT_AS a kernel starts under (it maps ~0.8 GB of address space when idle).
MIN_RLIMIT_AS = 1024**3

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
    #: Variables the environment sets (PYTHONPATH, VIRTUAL_ENV, PATH) that a user kernel keeps.
    keep_env: tuple[str, ...] = ()
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
            for name in self.keep_env:
                opts += ["--keep-env", name]
        return opts

    @property
    def user_dir(self) -> str | None:
        """The kernel user's directory (made by the wrapper) inside root's runtime directory."""
        return os.path.join(self.runtime_dir, USER_SUBDIR) if self.runtime_dir else None

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
            _clean_runtime_dir(self.runtime_dir)


def _clean_runtime_dir(directory: str) -> None:
    """Remove ``k<pid>*`` files of dead kernels; the whole directory when no kernel is left.

    Only root's own directory (not a symlink, not one another user squatted) is cleaned. The
    kernel user owns ``directory/kernel``: its entries are removed relative to an fd opened
    without following symlinks (unlink removes a planted symlink, not its target).
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        holder = os.open(directory, flags)
    except OSError:
        return  # gone already, or a symlink: not ours to clean
    live = False
    try:
        if os.fstat(holder).st_uid != os.geteuid():
            return
        with contextlib.suppress(OSError):
            fd = os.open(USER_SUBDIR, flags, dir_fd=holder)
            try:
                for name in os.listdir(fd):
                    match = re.match(r"k(\d+)", name)
                    if match and _runs_from(int(match.group(1)), directory):
                        live = True
                    elif match:
                        with contextlib.suppress(OSError):
                            os.unlink(name, dir_fd=fd)
            finally:
                os.close(fd)
    finally:
        os.close(holder)
    if not live:
        shutil.rmtree(directory, ignore_errors=True)  # fd-based: does not follow symlinks


def _runs_from(pid: int, directory: str) -> bool:
    """Whether ``pid`` is a kernel (or wrapper) of the pool whose runtime dir is ``directory``.

    Not merely alive: the kernel user may name entries after any running pid.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().split(b"\0")
    except OSError:
        return False
    own = os.fsencode(directory)
    return pid_alive(pid) and any(a == own or a.startswith(own + b"/") for a in args)


# --------------------------------------------------------------------------- planning


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
    from ..errors import ConfigError

    box = Sandbox(network=network, user=user, cpu=cpu_limit)
    if memory_limit:
        try:
            box.memory = parse_memory(memory_limit)
        except ValueError as exc:
            msg = f"config.env.memory_limit: {exc}"
            raise ConfigError(msg) from None
    if user:
        check_user(user)
    else:
        _refuse_root_fences(memory_limit, cpu_limit, network)
    if not network:
        _check_netns()
    if box.memory or cpu_limit:
        _plan_cgroups(box, node_id, memory_limit, cpu_limit)
    return box


def _plan_cgroups(
    box: Sandbox, node_id: str, memory_limit: str | None, cpu_limit: float | None
) -> None:
    """The pool's cgroups; else RLIMIT_AS for memory where that is enough, else refuse."""
    from ..errors import EnvironmentBuildError

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


def _refuse_root_fences(memory_limit: str | None, cpu_limit: float | None, network: bool) -> None:
    """A root kernel (a root bridge, no env.user) cannot be fenced in: refuse, do not pretend.

    Dropping capabilities is not enough: uid 0 keeps owner access to root's files, so it can
    still write its pid to another cgroup's cgroup.procs (root's, mode 0644) and rewrite
    /etc/crontab or the like to run code outside the network namespace (docs/security.md).
    """
    from ..errors import EnvironmentBuildError

    asked = [
        f"memory_limit={memory_limit}" if memory_limit else "",
        f"cpu_limit={cpu_limit}" if cpu_limit else "",
        "network=false" if not network else "",
    ]
    asked = [a for a in asked if a]
    if os.geteuid() != 0 or not asked:
        return
    msg = (
        f"env.{', env.'.join(asked)}: the bridge runs as root and, without env.user, its "
        "kernels would too; code running as root can leave its cgroup and re-enter the "
        "host's network (even without capabilities, uid 0 may write root's cgroup and "
        "system files), so this isolation would not hold. Set env.user to an unprivileged "
        "account (e.g. `useradd --system --no-create-home nodered-kernels`), or run the "
        "bridge as an unprivileged user"
    )
    raise EnvironmentBuildError(msg)


def user_uid(user: str) -> int:
    """The uid of ``user`` (checked by :func:`check_user` first)."""
    import pwd

    return pwd.getpwnam(user).pw_uid


def check_user(user: str) -> None:
    """Raise EnvironmentBuildError unless kernels may run as ``user`` here."""
    import pwd

    from ..errors import EnvironmentBuildError

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
    from ..errors import EnvironmentBuildError

    if not Path("/proc/self/ns/net").exists():
        msg = "env.network=false: this host has no network namespaces (/proc/self/ns/net)"
        raise EnvironmentBuildError(msg)


# --------------------------------------------------------------------------- after a kernel


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
        kills = oom_kills(directory)
        if kills:
            limit = memory_limit_text(directory)
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
        if not kernel_alive(directory):
            remove_kernel_cgroup(directory)
