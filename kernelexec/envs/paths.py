"""Directories of environments and nodes, and who may use them.

Managed environments live in :func:`env_root`, node working directories in
:func:`work_root`. A kernel started from an interpreter without kernelexec finds the package
through :func:`package_link` on its PYTHONPATH.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from ..errors import EnvironmentBuildError

__all__ = [
    "ENV_DIR_VAR",
    "WORK_DIR_VAR",
    "env_root",
    "node_workdir",
    "package_link",
    "prepare_workdir",
    "remove_workdir",
    "work_root",
]

ENV_DIR_VAR = "KERNELEXEC_ENV_DIR"
WORK_DIR_VAR = "KERNELEXEC_WORK_DIR"


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
    if path.is_symlink():  # planted by the kernel user: remove the link, not what it names
        path.unlink()
        return True
    if not path.is_dir():
        return False
    shutil.rmtree(path)  # fd-based: follows no symlink inside
    return True


def prepare_workdir(path: Path, user: str | None) -> None:
    """Create the node's working directory; owned by ``user`` (0700) when one is set.

    The directory (and what is in it) may already be the kernel user's: everything after
    the mkdir goes through fds, never following a symlink the user may have planted.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        if user:
            import pwd

            entry = pwd.getpwnam(user)
            _chown_tree(path, entry.pw_uid, entry.pw_gid)
    except (OSError, KeyError) as exc:
        msg = f"cannot prepare the working directory {path}: {exc}"
        raise EnvironmentBuildError(msg) from None


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    """The node's directory belongs to its kernel user, files made earlier as another included.

    ``os.fwalk`` opens each directory relative to its parent's fd without following
    symlinks; each entry is chowned relative to that fd (``lchown`` for a symlink itself).
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    top = os.open(path, flags)
    try:
        for _root, dirs, files, dir_fd in os.fwalk(".", dir_fd=top, follow_symlinks=False):
            for name in [*dirs, *files]:
                if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_uid != uid:
                    os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        os.fchown(top, uid, gid)
        os.fchmod(top, 0o700)
    finally:
        os.close(top)


def package_link() -> Path:
    """A directory holding only a ``kernelexec`` symlink to this package (for PYTHONPATH)."""
    package = Path(__file__).resolve().parents[1]
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
