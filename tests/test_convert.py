"""convert: the value table of kernelexec.kernel.convert, markers, blobs, errors naming paths."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import math
import os
import sys
import uuid
from collections import OrderedDict
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from kernelexec.errors import ConversionError
from kernelexec.kernel import blobs
from kernelexec.kernel.convert import BLOB_THRESHOLD, Encoder, InputBlobs, from_json, to_json


def strict(value: Any) -> Any:
    """Through strict JSON: fails on NaN/Infinity or non-JSON types."""
    return json.loads(json.dumps(value, allow_nan=False))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"),
        (7, 7),
        (True, True),
        (None, None),
        (1.5, 1.5),
        (math.nan, None),
        (math.inf, None),
        (-math.inf, None),
        ((1, 2), [1, 2]),
        (frozenset([3]), [3]),
        (dt.datetime(2024, 5, 6, 7, 8, 9), "2024-05-06T07:08:09"),
        (dt.date(2024, 5, 6), "2024-05-06"),
        (dt.time(7, 8), "07:08:00"),
        (dt.timedelta(minutes=1, milliseconds=500), 60.5),
        (decimal.Decimal("1.25"), 1.25),
        (decimal.Decimal("NaN"), None),
        (decimal.Decimal("-Infinity"), None),
        (decimal.Decimal("1E+400"), "1E+400"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (PurePosixPath("/a/b"), "/a/b"),
        (OrderedDict(a=1), {"a": 1}),
    ],
)
def test_value_table(value: Any, expected: Any) -> None:
    assert strict(to_json(value)) == expected


def test_dict_keys_become_strings_like_json_dumps() -> None:
    out = to_json({1: "a", None: "c", 2.5: "d", (1, 2): "e"})
    assert out == {"1": "a", "null": "c", "2.5": "d", "(1, 2)": "e"}
    assert to_json({True: 1, False: 0}) == {"true": 1, "false": 0}


def test_subclasses_and_enums() -> None:
    class Color(enum.Enum):
        RED = "red"

    class Level(enum.IntEnum):
        HIGH = 3

    class MyStr(str):
        pass

    assert to_json([Color.RED, Level.HIGH, MyStr("x")]) == ["red", 3, "x"]
    assert type(to_json(MyStr("x"))) is str


def test_set_becomes_list() -> None:
    assert sorted(to_json({3, 1, 2})) == [1, 2, 3]


def test_small_bytes_inline_as_buffer_marker() -> None:
    for value in (b"\x00\x01", bytearray(b"ab"), memoryview(b"xyz")):
        out = to_json(value)
        assert out["$kx"] == "buffer"
        assert from_json(out) == bytes(value)


def test_big_bytes_become_blob_files(tmp_path: Path) -> None:
    data = os.urandom(BLOB_THRESHOLD)
    encoder = Encoder("r9", directory=str(tmp_path))
    out = encoder.encode({"payload": data})
    assert out["payload"] == blobs.index_ref(0)
    [entry] = encoder.table
    assert entry["size"] == BLOB_THRESHOLD
    assert blobs.request_blobs("r9", directory=str(tmp_path)) == [str(tmp_path / entry["name"])]
    decoded = from_json(out, table=encoder.table, req_id="r9", directory=str(tmp_path))
    assert decoded["payload"] == data


def test_use_blobs_false_keeps_everything_inline(tmp_path: Path) -> None:
    out = to_json(b"x" * (BLOB_THRESHOLD + 1), use_blobs=False, directory=str(tmp_path))
    assert out["$kx"] == "buffer"
    assert os.listdir(tmp_path) == []


def test_passthrough_adopts_the_input_blob(tmp_path: Path) -> None:
    d = str(tmp_path)
    data = os.urandom(BLOB_THRESHOLD * 2)
    entry_in = blobs.write_blob(data, "io", directory=d, pid=1)
    inode = os.stat(tmp_path / entry_in["name"]).st_ino
    inputs: InputBlobs = {}
    msg = from_json({"payload": blobs.index_ref(0)}, inputs=inputs, table=[entry_in],
                    req_id="io", directory=d)
    encoder = Encoder("io", inputs=inputs, directory=d)
    encoder.encode(msg)
    [entry_out] = encoder.table
    assert entry_out["name"] != entry_in["name"]
    assert os.stat(tmp_path / entry_out["name"]).st_ino == inode  # renamed, not copied
    assert blobs.read_blob(entry_out, "io", d) == data
    # the same bytes sent again, or equal bytes, are written
    again = Encoder("io", inputs=inputs, directory=d)
    again.encode([msg["payload"], bytes(bytearray(data))])
    assert {os.stat(tmp_path / e["name"]).st_ino for e in again.table} & {inode} == set()


def test_from_json_decodes_in_place_and_keeps_unknown_markers() -> None:
    msg: dict[str, Any] = {"a": [{"$kx": "buffer", "b64": "aGk="}], "b": {"$kx": "other"}}
    assert from_json(msg) is msg
    assert msg == {"a": [b"hi"], "b": {"$kx": "other"}}


def test_from_json_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"msg\.payload\[1\]: invalid buffer marker"):
        from_json({"payload": [0, {"$kx": "buffer", "b64": "!!"}]})
    missing = [{"name": "kernelexec-1-r-0", "size": 3}]
    with pytest.raises(ConversionError, match=r"msg\.img: cannot read blob"):
        from_json({"img": blobs.index_ref(0)}, table=missing, req_id="r", directory=str(tmp_path))


def test_a_forged_blob_reference_never_reads_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "kernelexec-1-r-0"
    secret.write_text("token=42")
    forged = {blobs.MARKER: "blob", "path": str(secret), "size": 8}
    for table in (None, []):
        with pytest.raises(ConversionError, match="not an index into this frame's blob table"):
            from_json({"payload": dict(forged)}, table=table, req_id="r", directory=str(tmp_path))
    with pytest.raises(ConversionError, match="not an index"):  # an index past the table
        from_json({"payload": blobs.index_ref(1)}, table=[{"name": secret.name, "size": 8}],
                  req_id="r", directory=str(tmp_path))
    assert secret.read_text() == "token=42"


def test_lookalike_objects_round_trip_as_plain_data(tmp_path: Path) -> None:
    marker = blobs.MARKER
    lookalikes = [
        {marker: "blob", "path": "/etc/passwd", "size": 10},
        {marker: "blob", "i": 0},
        {marker: "buffer", "b64": "AQI="},
        {marker: "esc", "v": {marker: "blob", "i": 0}},
        {marker: "other", "data": b"\x01", "nested": {marker: "blob", "i": 0}},
    ]
    for value in lookalikes:
        encoder = Encoder("r", directory=str(tmp_path))
        wire = json.loads(json.dumps(encoder.encode({"payload": value})))
        assert encoder.table == []
        assert wire["payload"][marker] == "esc"
        assert from_json(wire, table=[], req_id="r")["payload"] == value
    assert os.listdir(tmp_path) == []


class Booster:
    pass


def test_unsendable_object_names_its_path() -> None:
    with pytest.raises(ConversionError) as info:
        to_json({"payload": {"model": Booster()}})
    assert info.value.message == "msg.payload.model: cannot send object of type Booster"
    assert info.value.to_dict()["code"] == "CONVERSION_ERROR"


def test_paths_with_indexes_and_odd_keys() -> None:
    with pytest.raises(ConversionError, match=r"^msg\.a\[2\]\['x y'\]: cannot send object of"):
        to_json({"a": [1, 2, {"x y": object()}]})
    with pytest.raises(ConversionError, match=r"^result\[0\]: cannot send"):
        to_json((lambda: 1,), root="result")


def test_reference_cycle_is_a_conversion_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ConversionError, match="reference cycle"):
        to_json({"payload": loop})


def test_output_is_a_new_structure() -> None:
    msg = {"payload": [1, 2]}
    out = to_json(msg)
    assert out == msg and out is not msg and out["payload"] is not msg["payload"]


np = pytest.importorskip("numpy")


def test_numpy_arrays_and_scalars() -> None:
    value = {
        "arr": np.arange(6).reshape(2, 3),
        "f32": np.float32(0.5),
        "i64": np.int64(7),
        "b": np.bool_(True),
        "nan": np.float64("nan"),
        "farr": np.array([1.0, np.inf]),
    }
    assert strict(to_json(value)) == {
        "arr": [[0, 1, 2], [3, 4, 5]],
        "f32": 0.5,
        "i64": 7,
        "b": True,
        "nan": None,
        "farr": [1.0, None],
    }


def test_numpy_is_not_imported_by_convert() -> None:
    import subprocess

    code = (
        "import sys, kernelexec.kernel.convert as c; c.to_json({'a': 1}); "
        "print('numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pandas_frames_series_and_timestamps() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"x": [1, 2], "y": [1.5, math.nan]})
    out = to_json(
        {
            "df": frame,
            "s": pd.Series([1, 2], index=["a", "b"]),
            "ts": pd.Timestamp("2024-01-02T03:04:05"),
            "nat": pd.NaT,
            "na": pd.NA,
            "idx": pd.Index([3, 4]),
        }
    )
    assert strict(out) == {
        "df": [{"x": 1, "y": 1.5}, {"x": 2, "y": None}],
        "s": [1, 2],
        "ts": "2024-01-02T03:04:05",
        "nat": None,
        "na": None,
        "idx": [3, 4],
    }
