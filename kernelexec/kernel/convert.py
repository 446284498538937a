"""Python values <-> JSON-safe values, per spec.json ``value_encoding``.

Outgoing (:class:`Encoder`, :func:`to_json`):

==========================================  ==================================================
Python                                      JSON
==========================================  ==================================================
str, int, bool, None                        as is
float                                       as is; NaN, +-Infinity -> null (as JSON.stringify)
dict (and subclasses)                       object; keys -> str (True -> "true", None -> "null")
list, tuple, set, frozenset                 array (sets in iteration order)
bytes, bytearray, memoryview                a buffer marker below 64 KiB, else a blob file:
                                            an index into the encoder's blob table
dict with a marker key of its own           escaped (wrapped), so it crosses as plain data
datetime, date, time                        ISO 8601 string (``isoformat()``)
timedelta                                   seconds (float)
Decimal                                     float; NaN/Infinity -> null; str when beyond the
                                            float range (e.g. 1E+400), so no value is lost
                                            silently to infinity
UUID, pathlib paths                         str
Enum                                        its value, converted
numpy ndarray / scalar                      nested lists / Python number (``tolist``/``item``)
pandas DataFrame                            list of records (``to_dict("records")``)
pandas Series, Index                        list of values (the index is dropped: use
                                            ``series.to_dict()`` to keep it)
pandas Timestamp / NaT / NA                 ISO string / null / null
anything else                               ConversionError: ``msg.payload.model: cannot send
                                            object of type Booster``
==========================================  ==================================================

The markers' wire form belongs to :mod:`kernelexec.kernel.blobs`. Incoming (:func:`from_json`):
buffer and blob markers become ``bytes``, escaped objects plain dicts, in place; a blob
marker is only an index into the blob table given with the value (none: an error). The
blobs read are remembered so that sending the same ``bytes`` object back renames the input
file instead of writing it again.

numpy and pandas are never imported here: they are recognised by ``type(x).__module__``.
Standard library only: this module runs inside the kernel.
"""

from __future__ import annotations

import base64
import datetime as _dt
import decimal
import enum
import math
import pathlib
import uuid
from collections.abc import Callable
from typing import Any

from ..errors import ConversionError
from . import blobs

__all__ = ["BLOB_THRESHOLD", "MARKER", "Encoder", "InputBlobs", "from_json", "to_json"]

MARKER = blobs.MARKER
BLOB_THRESHOLD = blobs.THRESHOLD
_INF = math.inf
#: id(bytes) -> (the bytes object, blob path, size) for blobs read by from_json.
InputBlobs = dict[int, tuple[bytes, str, int]]


class _Unsendable(Exception):  # noqa: N818 (a private signal, caught in this module)
    """Internal: raised at the failing value, gathers the path while unwinding."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.parts: list[str] = []

    def path(self, root: str) -> str:
        return root + "".join(reversed(self.parts))


def _part(key: Any) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    text = str(key)
    return f".{text}" if text.isidentifier() else f"[{text!r}]"


def _key(key: Any) -> str:
    if key is True:
        return "true"
    if key is False:
        return "false"
    if key is None:
        return "null"
    if isinstance(key, float):
        return repr(key)
    return str(key)


def _finite(value: float) -> float | None:
    return value if -_INF < value < _INF else None


def _decimal(value: decimal.Decimal) -> float | str | None:
    if not value.is_finite():
        return None
    number = float(value)
    return number if -_INF < number < _INF else str(value)


def _cannot(value: Any) -> _Unsendable:
    kind = type(value)
    name = kind.__name__ if kind.__module__ == "builtins" else kind.__qualname__
    return _Unsendable(f"cannot send object of type {name}")


class Encoder:
    """Converts outgoing values for one request; blob files are named after ``req_id``.

    ``inputs`` (from :func:`from_json`) lets bytes that came from a blob be adopted, not
    rewritten. ``use_blobs=False`` keeps every bytes value inline (context values, tests).
    ``table``: the blob table of what was encoded, to send beside it (``blobs`` field).
    """

    __slots__ = ("directory", "inputs", "pid", "req_id", "table", "threshold", "use_blobs")

    def __init__(
        self,
        req_id: str | None = None,
        *,
        directory: str | None = None,
        pid: int | None = None,
        inputs: InputBlobs | None = None,
        threshold: int = BLOB_THRESHOLD,
        use_blobs: bool = True,
    ) -> None:
        self.req_id = req_id
        self.directory = directory
        self.pid = pid
        self.inputs = inputs
        self.threshold = threshold
        self.use_blobs = use_blobs
        self.table: list[dict[str, Any]] = []

    def encode(self, value: Any, root: str = "msg") -> Any:
        """The JSON-safe form of ``value``; ConversionError names the failing path."""
        try:
            return self._value(value)
        except _Unsendable as exc:
            message = f"{exc.path(root)}: {exc.reason}"
            raise ConversionError(message, type_name="TypeError") from None
        except RecursionError:
            message = f"{root}: too deeply nested, or it contains itself (a reference cycle)"
            raise ConversionError(message, type_name="RecursionError") from None

    def _value(self, value: Any) -> Any:
        kind = type(value)
        if kind is str or kind is int or kind is bool or value is None:
            return value
        if kind is float:
            return value if -_INF < value < _INF else None
        if kind is dict:
            return self._dict(value)
        if kind is list:
            return self._list(value)
        handler = _EXACT.get(kind)
        if handler is not None:
            return handler(self, value)
        return self._other(value)

    def _dict(self, value: dict[Any, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        convert = self._value
        key: Any = None
        try:
            for key, item in value.items():
                out[key if type(key) is str else _key(key)] = convert(item)
        except _Unsendable as exc:
            exc.parts.append(_part(_key(key)))
            raise
        return blobs.escape(out) if MARKER in out else out

    def _list(self, value: Any) -> list[Any]:
        convert = self._value
        index = 0
        try:
            out = []
            for index, item in enumerate(value):  # noqa: B007 - index read on error
                out.append(convert(item))
        except _Unsendable as exc:
            exc.parts.append(f"[{index}]")
            raise
        return out

    def _bytes(self, value: bytes | bytearray | memoryview) -> dict[str, Any]:
        size = value.nbytes if isinstance(value, memoryview) else len(value)
        if size < self.threshold or not self.use_blobs:
            return blobs.buffer_ref(base64.b64encode(value).decode("ascii"))
        entry = self._adopt(value)
        if entry is None:
            entry = blobs.write_blob(value, self.req_id, directory=self.directory, pid=self.pid)
        self.table.append(entry)
        return blobs.index_ref(len(self.table) - 1)

    def _adopt(self, value: Any) -> dict[str, Any] | None:
        inputs = self.inputs
        known = inputs.get(id(value)) if inputs else None
        if inputs is None or known is None or known[0] is not value:
            return None
        del inputs[id(value)]  # renamed away: the next send of it writes a copy
        return blobs.adopt_blob(
            known[1], known[2], self.req_id, directory=self.directory, pid=self.pid
        )

    def _other(self, value: Any) -> Any:
        """numpy/pandas (by module name), then subclasses of the types in the table."""
        module = type(value).__module__.partition(".")[0]
        if module == "numpy":
            return self._numpy(value)
        if module == "pandas":
            return self._pandas(value)
        for base, handler in _BASES:
            if isinstance(value, base):
                return handler(self, value)
        raise _cannot(value)

    def _numpy(self, value: Any) -> Any:
        if hasattr(value, "tolist") and hasattr(value, "ndim"):  # ndarray, numpy scalars
            return self._value(value.tolist())
        raise _cannot(value)

    def _pandas(self, value: Any) -> Any:
        name = type(value).__name__
        if name == "DataFrame":
            return self._list(value.to_dict(orient="records"))
        if name == "Series" or name.endswith("Index"):
            return self._list(value.tolist())
        if name in ("NaTType", "NAType"):
            return None
        if name == "Timestamp":
            return value.isoformat()
        if name == "Timedelta":
            return _finite(value.total_seconds())
        raise _cannot(value)


def _isoformat(_enc: Encoder, value: Any) -> Any:
    return value.isoformat()


def _seconds(_enc: Encoder, value: _dt.timedelta) -> Any:
    return value.total_seconds()


def _stringify(_enc: Encoder, value: Any) -> Any:
    return str(value)


def _sequence(enc: Encoder, value: Any) -> Any:
    return enc._list(value)


def _mapping(enc: Encoder, value: Any) -> Any:
    return enc._dict(value)


def _bytes_like(enc: Encoder, value: Any) -> Any:
    return enc._bytes(value)


def _float(_enc: Encoder, value: Any) -> Any:
    return _finite(float(value))


def _int(_enc: Encoder, value: Any) -> Any:
    return int(value)


def _str(_enc: Encoder, value: Any) -> Any:
    return str.__str__(value)


def _enum(enc: Encoder, value: enum.Enum) -> Any:
    return enc._value(value.value)


def _dec(_enc: Encoder, value: decimal.Decimal) -> Any:
    return _decimal(value)


Handler = Callable[[Encoder, Any], Any]
_EXACT: dict[type, Handler] = {
    tuple: _sequence,
    set: _sequence,
    frozenset: _sequence,
    bytes: _bytes_like,
    bytearray: _bytes_like,
    memoryview: _bytes_like,
    _dt.datetime: _isoformat,
    _dt.date: _isoformat,
    _dt.time: _isoformat,
    _dt.timedelta: _seconds,
    decimal.Decimal: _dec,
    uuid.UUID: _stringify,
}
#: isinstance order matters: bool before int, Enum before its mixed-in type.
_BASES: tuple[tuple[type | tuple[type, ...], Handler], ...] = (
    (enum.Enum, _enum),
    (bool, _int),
    (int, _int),
    (float, _float),
    (str, _str),
    (dict, _mapping),
    ((list, tuple, set, frozenset), _sequence),
    ((bytes, bytearray, memoryview), _bytes_like),
    ((_dt.datetime, _dt.date, _dt.time), _isoformat),
    (_dt.timedelta, _seconds),
    (decimal.Decimal, _dec),
    (pathlib.PurePath, _stringify),
)


def to_json(value: Any, root: str = "msg", **options: Any) -> Any:
    """Convert one value (``options`` as :class:`Encoder`)."""
    return Encoder(**options).encode(value, root)


# ---------------------------------------------------------------- incoming


class _Decoder:
    """Markers of one value back to bytes; blob markers index ``table`` (checked reads)."""

    __slots__ = ("directory", "inputs", "req_id", "table")

    def __init__(
        self, table: Any, req_id: str | None, directory: str | None, inputs: InputBlobs | None
    ) -> None:
        self.table = table if isinstance(table, list) else []
        self.req_id = req_id
        self.directory = directory
        self.inputs = inputs

    def marker(self, value: dict[str, Any]) -> Any:
        kind = value[MARKER]
        if kind == blobs.BUFFER:
            try:
                return base64.b64decode(value[blobs.B64], validate=True)
            except (KeyError, TypeError, ValueError) as exc:
                reason = f"invalid buffer marker ({exc})"
                raise _Unsendable(reason) from None
        if kind == blobs.BLOB:
            return self.blob(value.get(blobs.INDEX))
        if kind == blobs.ESCAPE and type(value.get(blobs.ESCAPED)) is dict:
            return self.walk_dict(value[blobs.ESCAPED])
        return value

    def blob(self, index: Any) -> bytes:
        if type(index) is not int or not 0 <= index < len(self.table):
            reason = (
                f"blob reference {index!r} is not an index into this frame's blob table "
                f"({len(self.table)} entries)"
            )
            raise _Unsendable(reason)
        entry = self.table[index]
        try:
            data = blobs.read_blob(entry, self.req_id, self.directory)
        except (OSError, ValueError) as exc:
            reason = f"cannot read blob: {exc}"
            raise _Unsendable(reason) from None
        if self.inputs is not None:
            path = blobs.entry_path(entry, self.req_id, self.directory)
            self.inputs[id(data)] = (data, path, len(data))
        return data

    def walk(self, value: Any) -> Any:
        kind = type(value)
        if kind is dict:
            if MARKER in value:
                decoded = self.marker(value)
                if decoded is not value:
                    return decoded
            return self.walk_dict(value)
        if kind is list:
            index = 0
            try:
                for index, item in enumerate(value):
                    if type(item) is dict or type(item) is list:
                        value[index] = self.walk(item)
            except _Unsendable as exc:
                exc.parts.append(f"[{index}]")
                raise
        return value

    def walk_dict(self, value: dict[str, Any]) -> dict[str, Any]:
        key: Any = None
        try:
            for key, item in value.items():
                if type(item) is dict or type(item) is list:
                    value[key] = self.walk(item)
        except _Unsendable as exc:
            exc.parts.append(_part(key))
            raise
        return value


def from_json(
    value: Any,
    root: str = "msg",
    inputs: InputBlobs | None = None,
    *,
    table: Any = None,
    req_id: str | None = None,
    directory: str | None = None,
) -> Any:
    """Turn markers into ``bytes`` (escaped objects into plain dicts), in place.

    Blob markers are indexes into ``table``, the blob table that came with ``value`` (the
    files of ``req_id`` in ``directory``); blobs read are recorded in ``inputs`` (if given).
    ConversionError names the path.
    """
    try:
        return _Decoder(table, req_id, directory, inputs).walk(value)
    except _Unsendable as exc:
        message = f"{exc.path(root)}: {exc.reason}"
        raise ConversionError(message, type_name="ValueError") from None
