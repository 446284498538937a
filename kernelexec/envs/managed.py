"""Managed environments: virtual environments holding ipykernel and a node's requirements.

Keyed by the interpreter and the normalized requirements, stored in :func:`env_root` and
shared by every node and restart that asks for the same. Each is built once, under a file
lock, in a ``.build-*`` directory renamed into place when complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, EnvironmentBuildError
from .installer import InstallProgress, install
from .interpreter import IPYKERNEL_REQUIREMENT, Interpreter, inspect_interpreter
from .paths import env_root
from .subprocesses import Progress

__all__ = [
    "ENV_FORMAT",
    "MARKER",
    "EnvInfo",
    "ensure_env",
    "env_key",
    "list_envs",
    "normalize_requirements",
    "remove_env",
]

log = logging.getLogger(__package__)

MARKER = "kernelexec-env.json"
ENV_FORMAT = 1


#: A comment as pip reads one: ``#`` at the start of a line or after whitespace; a ``#``
#: inside a URL (``pkg @ https://host/p.whl#sha256=...``) is a fragment and stays.
_COMMENT = re.compile(r"(^|\s+)#.*$")
#: An option word: at the start of a line, or after whitespace (``numpy --hash=...``).
_OPTION = re.compile(r"(^|\s)-")


def requirement_line(line: str) -> str:
    """One requirement line without its comment and extra spaces ("" for none).

    Raises ConfigError for a line carrying an installer option (``-r FILE``, ``-e PATH``,
    ``--index-url URL``, ``--hash ...``): it would reach uv/pip, running as the bridge's user,
    as an option rather than a package.
    """
    text = " ".join(_COMMENT.sub("", line).split())
    if _OPTION.search(text):
        msg = (
            f"env.requirements: the line {text!r} carries an installer option; list packages "
            "only, one per line (`name`, `name==1.2`, `name @ https://host/name.whl#sha256=...`). "
            "For another package index set UV_INDEX_URL or PIP_INDEX_URL in the bridge's "
            "environment; for a pinned file use its URL with a #sha256= fragment"
        )
        raise ConfigError(msg)
    return text


def normalize_requirements(requirements: Sequence[str]) -> tuple[str, ...]:
    """Strip, drop blanks and comments, collapse spaces, dedupe, sort (case-insensitive).

    Refuses installer options (:func:`requirement_line`); keeps URL fragments.
    """
    cleaned = {requirement_line(line) for line in requirements}
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


# --------------------------------------------------------------------------- locks


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


# --------------------------------------------------------------------------- building


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
    feed = InstallProgress(progress, key)
    started = time.monotonic()
    log.info("building environment %s in %s for %s", key, final, ", ".join(reqs))
    try:
        req_file = tmp / "kernelexec-requirements.txt"
        req_file.write_text("\n".join([IPYKERNEL_REQUIREMENT, *reqs]) + "\n")
        venv = tmp / "venv"
        installer = await install(interp, venv, req_file, feed)
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
