"""cgroups for kernels: find the hierarchies, make and remove pool and kernel directories.

Each pool gets a directory per hierarchy (a :class:`CgroupDir`, named
``<node>-<bridge pid>-<rand>``), and each kernel a ``k<pid>`` directory inside it, made by
the wrapper. Directories whose kernel or bridge is gone are removed, SIGKILLing any process
left in them. Standard library only: the wrapper imports this module too.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CGROUP_ROOT_VAR",
    "CgroupDir",
    "enable_v2_controllers",
    "find_controller",
    "kernel_alive",
    "make_cgroup_dirs",
    "memory_limit_text",
    "mkdir_retry",
    "oom_kills",
    "pid_alive",
    "remove_cgroup_dirs",
    "remove_kernel_cgroup",
    "sweep_stale_cgroups",
]

#: cgroup v2 directory to create kernel cgroups under (a delegated subtree), if set.
CGROUP_ROOT_VAR = "KERNELEXEC_CGROUP_ROOT"


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


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# --------------------------------------------------------------------------- host probing


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


# --------------------------------------------------------------------------- pool directories


def _v2_parent(own: Path) -> Path:
    """Where kernelexec's v2 tree goes: $KERNELEXEC_CGROUP_ROOT, else the hierarchy root."""
    configured = os.environ.get(CGROUP_ROOT_VAR)
    if configured:
        return Path(configured)
    root = own
    while root.parent != root and (root.parent / "cgroup.controllers").exists():
        root = root.parent
    return root / "kernelexec"


def enable_v2_controllers(leaf_parent: Path, controllers: Sequence[str]) -> None:
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
                mkdir_retry(path)
                dirs.append(CgroupDir(controller, str(path)))
            elif not any(d.kind == "v2" for d in dirs):
                parent = _v2_parent(own)
                sweep_stale_cgroups(parent)
                path = parent / leaf
                mkdir_retry(path)
                enable_v2_controllers(path, wanted)
                dirs.append(CgroupDir("v2", str(path)))
        except OSError as exc:
            remove_cgroup_dirs(dirs)
            return [], f"cannot create a {version} cgroup for {controller} ({exc})"
    return dirs, None


def mkdir_retry(path: Path) -> None:
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
            if not (only_dead and kernel_alive(child)):
                remove_kernel_cgroup(child)
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
                remove_kernel_cgroup(child)
            with contextlib.suppress(OSError):
                pool_dir.rmdir()


# --------------------------------------------------------------------------- kernel directories


def kernel_alive(directory: Path) -> bool:
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


def remove_kernel_cgroup(directory: Path) -> None:
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


def oom_kills(directory: Path) -> int:
    """How many processes the OOM killer killed in the kernel cgroup ``directory``."""
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


def memory_limit_text(directory: Path) -> str:
    """The cgroup's memory limit as ``"512M"`` ("?" when unreadable)."""
    for name in ("memory.max", "memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            return f"{int((directory / name).read_text()) // 1024**2}M"
    return "?"
