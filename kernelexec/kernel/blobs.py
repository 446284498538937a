"""Blob files and the value markers: the one Python module that knows their wire form.

Values are spelled as spec.json ``value_encoding`` says (all names below come from it):

- ``{MARKER: "buffer", "b64": ...}``: bytes inline;
- ``{MARKER: "blob", "i": N}``: bytes out of band, entry N of the *blob table* of the very
  frame (batch item, result, send event) that holds the value. The table (``blobs``: a list
  of ``{"name", "size"}``) travels beside the message body, never inside it, and only the
  sender's encoder builds it: a message cannot name a file;
- ``{MARKER: "esc", "v": OBJECT}``: a user object that has a MARKER key of its own, carried
  as plain data. Every encoder wraps such objects (:func:`escape`), every decoder unwraps them.

A blob is a file ``kernelexec-<pid>-<req_id>-<n>`` directly in :func:`blob_dir` (mode 0600,
created with O_EXCL), ``pid`` the writer, ``req_id`` the request (:func:`safe_req_id`), ``n``
a counter. A reader (:func:`open_blob`) takes a table entry only when its name is the writer's
pattern for this request, and opens it with O_NOFOLLOW; the file must be a regular file with
one link, owned by the reader (or, for a root reader, by anyone: root reads kernel users'
outputs). So a symlink, a hard link or another user's file named like a blob is refused.

Reading (:func:`read_blob`) is one ``os.read`` into a ``bytes`` of the file's size: a
single copy, measured at ~1.3 GB/s for 64 MiB on /dev/shm. When user code sends back the very
``bytes`` it received from a blob, :func:`adopt_blob` renames the input file to an output name
instead of writing it again (a hard link would give the file two links, which readers refuse).

Standard library only: this module runs inside the kernel.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import KernelexecError
from ..protocol import load_spec

__all__ = [
    "B64",
    "BLOB",
    "BUFFER",
    "ENV_VAR",
    "ESCAPE",
    "ESCAPED",
    "INDEX",
    "MARKER",
    "NAME",
    "PREFIX",
    "SIZE",
    "TABLE",
    "THRESHOLD",
    "BlobError",
    "adopt_blob",
    "blob_dir",
    "blob_name",
    "buffer_ref",
    "copy_for",
    "entry_path",
    "escape",
    "holders",
    "index_ref",
    "is_blob_ref",
    "map_refs",
    "name_matches",
    "open_blob",
    "parse_name",
    "pid_alive",
    "read_blob",
    "remove_request_blobs",
    "remove_table",
    "rename_table",
    "request_blobs",
    "safe_req_id",
    "sweep_orphans",
    "write_blob",
]

_ENCODING = load_spec()["value_encoding"]
MARKER: str = _ENCODING["marker_key"]
BUFFER: str = _ENCODING["kinds"]["buffer"]
BLOB: str = _ENCODING["kinds"]["blob"]
ESCAPE: str = _ENCODING["kinds"]["escape"]
B64: str = _ENCODING["keys"]["b64"]
INDEX: str = _ENCODING["keys"]["index"]
ESCAPED: str = _ENCODING["keys"]["escaped"]
TABLE: str = _ENCODING["blob_table"]["field"]
NAME: str = _ENCODING["blob_table"]["entry"]["name"]
SIZE: str = _ENCODING["blob_table"]["entry"]["size"]
PREFIX: str = _ENCODING["blob_prefix"]
THRESHOLD: int = _ENCODING["blob_threshold_bytes"]

ENV_VAR = "KERNELEXEC_BLOB_DIR"
_SHM = "/dev/shm"
_UNSAFE = re.compile(f"[^{_ENCODING['blob_name_safe']}]")
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-(.+)-(\d+)$")
_counter = itertools.count()
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
Entry = dict[str, Any]


class BlobError(KernelexecError, ValueError):
    """A table entry or a blob file that is not what the writer's pattern promises."""

    code = "CONVERSION_ERROR"


def blob_dir() -> str:
    """$KERNELEXEC_BLOB_DIR, else /dev/shm when writable, else the temp directory."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return configured
    if os.path.isdir(_SHM) and os.access(_SHM, os.W_OK | os.X_OK):
        return _SHM
    return tempfile.gettempdir()


# ------------------------------------------------------------------------ markers


def buffer_ref(b64: str) -> dict[str, Any]:
    return {MARKER: BUFFER, B64: b64}


def index_ref(index: int) -> dict[str, Any]:
    return {MARKER: BLOB, INDEX: index}


def escape(obj: dict[str, Any]) -> dict[str, Any]:
    """A user object with a MARKER key, wrapped so that decoders take it as plain data."""
    return {MARKER: ESCAPE, ESCAPED: obj}


def is_blob_ref(value: Any) -> bool:
    return isinstance(value, dict) and value.get(MARKER) == BLOB


# ------------------------------------------------------------------------ names


def safe_req_id(req_id: str | None) -> str:
    """The req_id as it appears in file names (spec ``blob_name_safe``; '-' separates fields)."""
    return _UNSAFE.sub("_", req_id) if req_id else "_"


def blob_name(req_id: str | None, pid: int | None = None) -> str:
    """A new, unused blob file name for ``req_id`` (the file is not created)."""
    return f"{PREFIX}{pid or os.getpid()}-{safe_req_id(req_id)}-{next(_counter)}"


def parse_name(name: str) -> tuple[int, str, int] | None:
    """(pid, safe req_id, n) of a blob file name, None when it is not one."""
    match = _NAME.match(name)
    return (int(match[1]), match[2], int(match[3])) if match else None


def name_matches(name: Any, req_id: str | None) -> bool:
    """Whether ``name`` is a writer's blob name for ``req_id`` (a bare name, no directory)."""
    if not isinstance(name, str):
        return False
    parsed = parse_name(name)
    return parsed is not None and parsed[1] == safe_req_id(req_id)


def _entry_name(entry: Any, req_id: str | None) -> str:
    name = entry.get(NAME) if isinstance(entry, dict) else None
    if not name_matches(name, req_id):
        wanted = f"{PREFIX}<pid>-{safe_req_id(req_id)}-<n>"
        message = f"blob table entry {entry!r} does not name a blob file of this request ({wanted})"
        raise BlobError(message)
    return str(name)


def entry_path(entry: Any, req_id: str | None, directory: str | None = None) -> str:
    """The path of a table entry, after checking its name against the request."""
    return os.path.join(directory or blob_dir(), _entry_name(entry, req_id))


# ------------------------------------------------------------------------ writing


def write_blob(
    data: bytes | bytearray | memoryview,
    req_id: str | None,
    *,
    directory: str | None = None,
    pid: int | None = None,
) -> Entry:
    """Write ``data`` to a new blob file; return its table entry. Removes it on failure."""
    view = memoryview(data).cast("B")
    name = blob_name(req_id, pid)
    path = os.path.join(directory or blob_dir(), name)
    fd = os.open(path, _CREATE_FLAGS, 0o600)
    try:
        written = 0
        while written < len(view):
            written += os.write(fd, view[written:])
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)
    return {NAME: name, SIZE: len(view)}


def adopt_blob(
    source: str, size: int, req_id: str | None, *, directory: str | None = None,
    pid: int | None = None,
) -> Entry | None:
    """Rename an input blob (read earlier by this process) to a new output name of ``req_id``
    (zero copy). None when impossible (file gone, not ours): the caller writes the bytes."""
    folder = directory or os.path.dirname(source)
    name = blob_name(req_id, pid)
    target = os.path.join(folder, name)
    if os.path.dirname(source) != folder or os.path.lexists(target):
        return None
    try:
        os.rename(source, target)
    except OSError:
        return None
    return {NAME: name, SIZE: size}


def copy_for(
    entry: Any, req_id: str | None, uid: int, gid: int, *, directory: str | None = None
) -> Entry:
    """A copy of an input blob that this process creates for ``req_id`` and hands to
    ``uid``/``gid`` (fchown on its own fd): what a root bridge gives a ``user`` kernel. The
    source is read as any blob (:func:`open_blob`); nothing is chowned or followed by path."""
    fd = open_blob(entry, req_id, directory)
    name = blob_name(req_id)
    path = os.path.join(directory or blob_dir(), name)
    try:
        out = os.open(path, _CREATE_FLAGS, 0o600)
        try:
            size = os.fstat(fd).st_size
            sent = 0
            while sent < size:
                step = os.sendfile(out, fd, None, size - sent)
                if step == 0:
                    break
                sent += step
            os.fchown(out, uid, gid)
        except BaseException:
            os.close(out)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        os.close(out)
    finally:
        os.close(fd)
    return {NAME: name, SIZE: sent}


# ------------------------------------------------------------------------ reading


#: Users whose blob files this process reads besides its own: the kernel users (env.user) of
#: the pools it started as root (kernelexec/envs/launch.py registers them).
_KERNEL_UIDS: set[int] = set()


def trust_kernel_user(uid: int) -> None:
    """Let this (root) process read blob files written by ``uid``, a sandboxed kernel's user."""
    _KERNEL_UIDS.add(uid)


def _owner_ok(uid: int) -> bool:
    me = os.geteuid()
    return uid == me or (me == 0 and uid in _KERNEL_UIDS)


def open_blob(entry: Any, req_id: str | None, directory: str | None = None) -> int:
    """An fd on the file of a table entry, checked: the request's name pattern, no symlink
    (O_NOFOLLOW), a regular file with one link, owned by this user (root: or by a kernel user
    of its pools, :func:`trust_kernel_user`). Raises BlobError/OSError naming the file."""
    path = entry_path(entry, req_id, directory)
    fd = os.open(path, _OPEN_FLAGS)
    try:
        info = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(info.st_mode):
            problem = "is not a regular file"
        elif info.st_nlink != 1:
            problem = f"has {info.st_nlink} links (a blob file has one)"
        elif not _owner_ok(info.st_uid):
            problem = (
                f"belongs to uid {info.st_uid}, not to this user ({os.geteuid()}) nor to a "
                "kernel user of its pools"
            )
        if problem:
            message = f"blob {path} {problem}; it was not made by kernelexec for this request"
            raise BlobError(message)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_blob(entry: Any, req_id: str | None, directory: str | None = None) -> bytes:
    """The bytes of a table entry's file (checked as :func:`open_blob` says)."""
    fd = open_blob(entry, req_id, directory)
    try:
        size = os.fstat(fd).st_size
        data = os.read(fd, size)
        if len(data) < size:
            data = _read_rest(fd, data, size)
    finally:
        os.close(fd)
    expected = entry.get(SIZE)
    if isinstance(expected, int) and expected != len(data):
        message = f"blob {entry.get(NAME)} holds {len(data)} bytes but its table says {expected}"
        raise BlobError(message)
    return data


def _read_rest(fd: int, head: bytes, size: int) -> bytes:
    parts = [head]
    have = len(head)
    while have < size:
        chunk = os.read(fd, size - have)
        if not chunk:
            break
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


def rename_table(
    table: list[Entry], req_id: str | None, new_req_id: str | None,
    directory: str | None = None, pid: int | None = None,
) -> list[Entry]:
    """This writer's files of ``req_id`` renamed for ``new_req_id`` (a send whose request
    ended while it was encoded goes out without a req_id: its files must be named so)."""
    renamed = []
    for entry in table:
        name = blob_name(new_req_id, pid)
        try:
            source = entry_path(entry, req_id, directory)
            os.rename(source, os.path.join(directory or blob_dir(), name))
        except (BlobError, OSError):
            renamed.append(entry)  # the reader refuses it and says so
            continue
        renamed.append({NAME: name, SIZE: entry.get(SIZE)})
    return renamed


def remove_table(table: Any, req_id: str | None, directory: str | None = None) -> int:
    """Remove the files of a blob table (only names of ``req_id``'s pattern); how many."""
    removed = 0
    for entry in table if isinstance(table, list) else ():
        with contextlib.suppress(BlobError, OSError):
            os.unlink(entry_path(entry, req_id, directory))
            removed += 1
    return removed


def map_refs(value: Any, fix: Callable[[Any], Any]) -> Any:
    """A copy of an encoded value with each blob marker replaced by ``fix(index)``; escaped
    objects stay escaped (their values are searched, their own keys are data)."""
    if isinstance(value, list):
        return [map_refs(item, fix) for item in value]
    if not isinstance(value, dict):
        return value
    kind = value.get(MARKER)
    if kind == BLOB:
        return fix(value.get(INDEX))
    if kind == ESCAPE and isinstance(value.get(ESCAPED), dict):
        inner = {key: map_refs(item, fix) for key, item in value[ESCAPED].items()}
        return escape(inner)
    return {key: map_refs(item, fix) for key, item in value.items()}


def holders(envelope: Any) -> Iterator[tuple[dict[str, Any], str | None]]:
    """The (dict, req_id) pairs of a kernel envelope that carry a blob table: the envelope
    itself (a send event), its ``batch`` items (a run request), its ``results`` (a reply).
    Message bodies are never searched: a table is only where the protocol puts it."""
    if not isinstance(envelope, dict):
        return
    for item in (envelope, *_items(envelope, "batch"), *_items(envelope, "results")):
        if isinstance(item, dict) and isinstance(item.get(TABLE), list) and item[TABLE]:
            req_id = item.get("req_id")
            yield item, req_id if isinstance(req_id, str) else None


def _items(envelope: dict[str, Any], key: str) -> list[Any]:
    value = envelope.get(key)
    return value if isinstance(value, list) else []


# ------------------------------------------------------------------------ clean-up


def _entries(directory: str | None) -> list[tuple[str, tuple[int, str, int]]]:
    folder = directory or blob_dir()
    found = []
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                parsed = parse_name(entry.name) if entry.name.startswith(PREFIX) else None
                if parsed:
                    found.append((entry.path, parsed))
    except FileNotFoundError:
        return []
    return found


def request_blobs(
    req_id: str | None, *, directory: str | None = None, pid: int | None = None
) -> list[str]:
    """Paths of the blob files of ``req_id`` (written by ``pid``, or by anyone)."""
    wanted = safe_req_id(req_id)
    return sorted(
        path for path, (owner, req, _n) in _entries(directory)
        if req == wanted and (pid is None or owner == pid)
    )


def remove_request_blobs(
    req_id: str | None,
    *,
    directory: str | None = None,
    pid: int | None = None,
    keep: frozenset[str] | set[str] = frozenset(),
) -> int:
    """Remove the blob files of ``req_id`` (of ``pid`` only, if given) but those named in
    ``keep`` (file names, already handed to their reader, who removes them); how many."""
    removed = 0
    for path in request_blobs(req_id, directory=directory, pid=pid):
        if os.path.basename(path) in keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with (
        contextlib.suppress(OSError, IndexError),
        open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f,
    ):
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def sweep_orphans(directory: str | None = None) -> int:
    """Remove blob files whose writing process is dead; returns how many."""
    removed = 0
    alive: dict[int, bool] = {}
    for path, (pid, _req, _n) in _entries(directory):
        if pid not in alive:
            alive[pid] = pid_alive(pid)
        if not alive[pid]:
            with contextlib.suppress(FileNotFoundError, PermissionError):
                os.unlink(path)
                removed += 1
    return removed
