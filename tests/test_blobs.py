"""blobs: naming, mode, read/write, request cleanup, orphan sweep, links."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kernelexec import blobs


def test_blob_dir_prefers_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(blobs.ENV_VAR, str(tmp_path))
    assert blobs.blob_dir() == str(tmp_path)


def test_blob_dir_default_is_shm_or_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(blobs.ENV_VAR, raising=False)
    expected = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    if expected:
        assert blobs.blob_dir() == expected
    else:
        assert os.path.isdir(blobs.blob_dir())


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    ref = blobs.write_blob(data, "req-1/x", directory=str(tmp_path))
    assert ref["$kx"] == "blob" and ref["size"] == len(data)
    name = os.path.basename(ref["path"])
    assert name.startswith(f"kernelexec-{os.getpid()}-req_1_x-")
    assert stat.S_IMODE(os.stat(ref["path"]).st_mode) == 0o600
    back = blobs.read_blob(ref)
    assert type(back) is bytes and back == data


def test_write_accepts_memoryview_and_bytearray(tmp_path: Path) -> None:
    view = memoryview(bytearray(b"abc" * 10)).cast("B")
    ref = blobs.write_blob(view[3:], "r", directory=str(tmp_path))
    assert blobs.read_blob(ref) == bytes(view[3:])


def test_read_rejects_wrong_size_and_foreign_files(tmp_path: Path) -> None:
    ref = blobs.write_blob(b"12345", "r", directory=str(tmp_path))
    with pytest.raises(ValueError, match="holds 5 bytes"):
        blobs.read_blob({**ref, "size": 6})
    other = tmp_path / "passwd"
    other.write_text("x")
    with pytest.raises(ValueError, match="not a kernelexec blob"):
        blobs.read_blob({"$kx": "blob", "path": str(other), "size": 1})


def test_names_are_unique_and_exclusive(tmp_path: Path) -> None:
    paths = {blobs.write_blob(b"x", "same", directory=str(tmp_path))["path"] for _ in range(5)}
    assert len(paths) == 5


def test_request_blobs_match_exactly(tmp_path: Path) -> None:
    d = str(tmp_path)
    a = blobs.write_blob(b"a", "1", directory=d)["path"]
    b = blobs.write_blob(b"b", "1", directory=d, pid=12345)["path"]
    blobs.write_blob(b"c", "11", directory=d)
    blobs.write_blob(b"d", "5_1", directory=d)
    assert blobs.request_blobs("1", directory=d) == sorted([a, b])
    assert blobs.request_blobs("1", directory=d, pid=os.getpid()) == [a]
    assert blobs.remove_request_blobs("1", directory=d, pid=os.getpid()) == 1
    assert blobs.remove_request_blobs("1", directory=d) == 1
    assert len(os.listdir(d)) == 2


def test_sweep_removes_files_of_dead_processes_only(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    d = str(tmp_path)
    mine = blobs.write_blob(b"alive", "r", directory=d)["path"]
    orphan = blobs.write_blob(b"dead", "r", directory=d, pid=dead_pid)["path"]
    (tmp_path / "unrelated").write_text("keep")
    assert blobs.sweep_orphans(d) == 1
    assert os.path.exists(mine) and not os.path.exists(orphan)
    assert (tmp_path / "unrelated").exists()


def test_link_blob_shares_the_inode(tmp_path: Path) -> None:
    ref = blobs.write_blob(b"z" * 1000, "in", directory=str(tmp_path), pid=1)
    linked = blobs.link_blob(ref["path"], 1000, "out", directory=str(tmp_path))
    assert linked is not None and linked["path"] != ref["path"]
    assert os.stat(linked["path"]).st_ino == os.stat(ref["path"]).st_ino
    os.unlink(ref["path"])
    assert blobs.read_blob(linked) == b"z" * 1000


def test_link_blob_of_missing_file_returns_none(tmp_path: Path) -> None:
    assert blobs.link_blob(str(tmp_path / "kernelexec-1-x-0"), 3, "o") is None


def test_parse_name() -> None:
    assert blobs.parse_name("kernelexec-12-abc_d-3") == (12, "abc_d", 3)
    assert blobs.parse_name("kernelexec-x-abc-3") is None
    assert blobs.parse_name("other-12-a-3") is None
