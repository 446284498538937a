"""The JSON packer of kernelexec's Jupyter sessions and pipes: jupyter_client's, with lone
surrogates as U+FFFD and NaN/Infinity as null (what JavaScript's JSON and UTF-8 do).

Used by the kernel's session (kernelexec/kernel/app.py), the bridge's (handles/local.py) and
the pipes' slow path (lane.py, resultpipe.py). jupyter_client is imported on the slow path
only: every kernel has it; standard library otherwise (orjson when the environment has it).
"""

from __future__ import annotations

import codecs
import json
from typing import Any

__all__ = ["ORJSON_OPTIONS", "wire_pack"]

_FFFD = "kernelexec.fffd"

try:  # optional: a kernel in a managed environment may not have it
    import orjson as _orjson

    ORJSON_OPTIONS = _orjson.OPT_NAIVE_UTC | _orjson.OPT_UTC_Z
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None  # type: ignore[assignment]
    ORJSON_OPTIONS = 0


def _replace_lone_surrogates(error: UnicodeError) -> tuple[bytes, int]:
    if isinstance(error, UnicodeEncodeError):  # the UTF-8 encoder takes bytes (or ASCII str)
        return "\ufffd".encode() * (error.end - error.start), error.end
    raise error


codecs.register_error(_FFFD, _replace_lone_surrogates)


def wire_pack(obj: Any) -> bytes:
    """jupyter_client's json_packer, except that a lone surrogate (a str that UTF-8 cannot
    encode: JSON ``"\\ud800"`` from JavaScript, or made by user code) becomes U+FFFD, as
    JavaScript's own UTF-8 encoding does, instead of failing the whole message."""
    from jupyter_client import jsonutil
    from jupyter_client.session import json_packer

    # jupyter_client 6.1 (kernels of Enterprise Gateway 3.3) has only date_default
    json_default = getattr(jsonutil, "json_default", None) or jsonutil.date_default

    if _orjson is not None:
        try:  # the fast path: orjson writes NaN/Infinity as null itself
            return bytes(_orjson.dumps(obj, default=json_default, option=ORJSON_OPTIONS))
        except (TypeError, ValueError):
            pass  # a lone surrogate, a non-str key...: the json module's path below
    try:
        text = json.dumps(obj, default=json_default, ensure_ascii=False, allow_nan=False)
    except ValueError:  # NaN or Infinity: null, as JSON.stringify and spec.json say
        text = json.dumps(_finite(obj), default=json_default, ensure_ascii=False)
    except TypeError:
        return bytes(json_packer(obj))
    return text.encode("utf-8", _FFFD)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value - value == 0.0 else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value
