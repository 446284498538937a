"""blobs: naming, mode, read/write, table checks, request cleanup, orphan sweep, adoption."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kernelexec.kernel import blobs


def _path(tmp_path: Path, entry: dict[str, object]) -> str:
    return str(tmp_path / str(entry[blobs.NAME]))


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
    entry = blobs.write_blob(data, "req-1/x", directory=str(tmp_path))
    assert set(entry) == {blobs.NAME, blobs.SIZE} and entry[blobs.SIZE] == len(data)
    assert str(entry[blobs.NAME]).startswith(f"kernelexec-{os.getpid()}-req_1_x-")
    assert stat.S_IMODE(os.stat(_path(tmp_path, entry)).st_mode) == 0o600
    back = blobs.read_blob(entry, "req-1/x", str(tmp_path))
    assert type(back) is bytes and back == data


def test_write_accepts_memoryview_and_bytearray(tmp_path: Path) -> None:
    view = memoryview(bytearray(b"abc" * 10)).cast("B")
    entry = blobs.write_blob(view[3:], "r", directory=str(tmp_path))
    assert blobs.read_blob(entry, "r", str(tmp_path)) == bytes(view[3:])


def test_read_rejects_wrong_size_and_foreign_names(tmp_path: Path) -> None:
    d = str(tmp_path)
    entry = blobs.write_blob(b"12345", "r", directory=d)
    with pytest.raises(ValueError, match="holds 5 bytes"):
        blobs.read_blob({**entry, "size": 6}, "r", d)
    (tmp_path / "passwd").write_text("x")
    for name in ("passwd", "../passwd", "/etc/passwd", "kernelexec-1-r-0/../../passwd", 3):
        with pytest.raises(blobs.BlobError, match="does not name a blob file of this request"):
            blobs.read_blob({"name": name, "size": 1}, "r", d)
    with pytest.raises(blobs.BlobError, match="of this request"):  # another request's file
        blobs.read_blob(entry, "other", d)


def test_reader_refuses_a_symlink_named_like_a_blob(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("token=42")
    name = "kernelexec-1-r-0"
    (tmp_path / name).symlink_to(secret)
    with pytest.raises(OSError):  # O_NOFOLLOW: ELOOP
        blobs.read_blob({"name": name, "size": 8}, "r", str(tmp_path))
    assert secret.read_text() == "token=42"


def test_reader_refuses_a_hard_link_named_like_a_blob(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("token=42")
    name = "kernelexec-1-r-0"
    os.link(secret, tmp_path / name)
    with pytest.raises(blobs.BlobError, match="has 2 links"):
        blobs.read_blob({"name": name, "size": 8}, "r", str(tmp_path))


def test_reader_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "kernelexec-1-r-0")
    with pytest.raises(blobs.BlobError, match="not a regular file"):
        blobs.read_blob({"name": "kernelexec-1-r-0", "size": 1}, "r", str(tmp_path))


def test_names_are_unique_and_exclusive(tmp_path: Path) -> None:
    names = {blobs.write_blob(b"x", "same", directory=str(tmp_path))["name"] for _ in range(5)}
    assert len(names) == 5


def test_request_blobs_match_exactly(tmp_path: Path) -> None:
    d = str(tmp_path)
    a = _path(tmp_path, blobs.write_blob(b"a", "1", directory=d))
    b = _path(tmp_path, blobs.write_blob(b"b", "1", directory=d, pid=12345))
    blobs.write_blob(b"c", "11", directory=d)
    blobs.write_blob(b"d", "5_1", directory=d)
    assert blobs.request_blobs("1", directory=d) == sorted([a, b])
    assert blobs.request_blobs("1", directory=d, pid=os.getpid()) == [a]
    assert blobs.remove_request_blobs("1", directory=d, pid=os.getpid()) == 1
    assert blobs.remove_request_blobs("1", directory=d) == 1
    assert len(os.listdir(d)) == 2


def test_remove_table_removes_only_names_of_the_request(tmp_path: Path) -> None:
    d = str(tmp_path)
    mine = blobs.write_blob(b"a", "r1", directory=d)
    other = blobs.write_blob(b"b", "r2", directory=d)
    (tmp_path / "keep").write_text("x")
    table = [mine, other, {"name": "keep"}, {"name": "../etc/passwd"}]
    assert blobs.remove_table(table, "r1", d) == 1
    assert sorted(os.listdir(d)) == sorted(["keep", str(other["name"])])


def test_sweep_removes_files_of_dead_processes_only(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    d = str(tmp_path)
    mine = _path(tmp_path, blobs.write_blob(b"alive", "r", directory=d))
    orphan = _path(tmp_path, blobs.write_blob(b"dead", "r", directory=d, pid=dead_pid))
    (tmp_path / "unrelated").write_text("keep")
    assert blobs.sweep_orphans(d) == 1
    assert os.path.exists(mine) and not os.path.exists(orphan)
    assert (tmp_path / "unrelated").exists()


def test_adopt_blob_renames_the_input(tmp_path: Path) -> None:
    d = str(tmp_path)
    entry = blobs.write_blob(b"z" * 1000, "in", directory=d, pid=1)
    inode = os.stat(_path(tmp_path, entry)).st_ino
    adopted = blobs.adopt_blob(_path(tmp_path, entry), 1000, "out", directory=d)
    assert adopted is not None and adopted["name"] != entry["name"]
    assert not os.path.exists(_path(tmp_path, entry))
    assert os.stat(_path(tmp_path, adopted)).st_ino == inode
    assert blobs.read_blob(adopted, "out", d) == b"z" * 1000  # one link: readable


def test_adopt_blob_of_missing_file_returns_none(tmp_path: Path) -> None:
    assert blobs.adopt_blob(str(tmp_path / "kernelexec-1-x-0"), 3, "o") is None


def test_parse_name() -> None:
    assert blobs.parse_name("kernelexec-12-abc_d-3") == (12, "abc_d", 3)
    assert blobs.parse_name("kernelexec-x-abc-3") is None
    assert blobs.parse_name("other-12-a-3") is None


def test_holders_find_tables_only_where_the_protocol_puts_them() -> None:
    entry = {"name": "kernelexec-1-a-0", "size": 1}
    lookalike = {"payload": {"blobs": [entry], "req_id": "a"}}
    run = {"op": "run", "batch": [{"req_id": "a", "msg": lookalike, "blobs": [entry]}]}
    assert [(h["req_id"], r) for h, r in blobs.holders(run)] == [("a", "a")]
    reply = {"results": [{"req_id": "b", "outputs": [[lookalike]]}]}
    assert list(blobs.holders(reply)) == []


def test_no_module_spells_the_marker_itself() -> None:
    """The marker, kinds and table fields come from spec.json through kernelexec.kernel.blobs (and
    nodered-node/lib/protocol.js): no other source file may spell the marker."""
    root = Path(__file__).resolve().parent.parent
    marker = blobs.MARKER
    node = root / "nodered-node"
    sources = [
        *root.joinpath("kernelexec").rglob("*.py"),
        *node.joinpath("lib").glob("*.js"),
        *node.joinpath("nodes").glob("*.js"),
    ]
    spelled = [str(p.relative_to(root)) for p in sources if marker in p.read_text(encoding="utf-8")]
    assert spelled == []


def test_a_root_reader_takes_only_its_own_files_and_its_kernel_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Root reads the output files of its pools' kernel users (registered at launch), and no
    other user's: a file another local user made under a blob name is refused."""
    if os.geteuid() != 0:
        pytest.skip("needs root (chown)")
    monkeypatch.setattr(blobs, "_KERNEL_UIDS", set())
    entry = blobs.write_blob(b"from another user", "r", directory=str(tmp_path))
    os.chown(_path(tmp_path, entry), 4242, 4242)
    with pytest.raises(blobs.BlobError, match="belongs to uid 4242"):
        blobs.read_blob(entry, "r", str(tmp_path))
    blobs.trust_kernel_user(4242)
    assert blobs.read_blob(entry, "r", str(tmp_path)) == b"from another user"
