"""The result pipe on its own: frames cut anywhere, stale frames, a half frame of a dead
writer (kernelexec/kernel/resultpipe.py; the end-to-end cases are in test_pool_batching.py)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import pytest

from kernelexec.kernel.resultpipe import ResultPipe, ResultWriter


@pytest.fixture
def pipe() -> Iterator[ResultPipe]:
    pipe = ResultPipe()
    yield pipe
    pipe.close()


def test_frames_cut_anywhere_are_put_together(pipe: ResultPipe) -> None:
    writer = ResultWriter(pipe.write_fd)
    pipe.begin(["a", "b"])
    writer.batch("a")
    writer.result({"req_id": "a", "outputs": [[{"payload": "x" * 100_000}]]})
    writer.result({"req_id": "b", "x": float("nan"), "s": "\ud800"})
    pipe.drain()
    assert pipe.batch_started
    assert pipe.results["a"]["outputs"][0][0]["payload"] == "x" * 100_000
    assert pipe.results["b"] == {"req_id": "b", "x": None, "s": "\ufffd"}
    data = struct.pack(">I", 17) + b'{"req_id": "b"}  '
    pipe.begin(["b"])
    for byte in data:  # one byte at a time
        os.write(pipe.write_fd, bytes([byte]))
        pipe.drain()
    assert pipe.results == {"b": {"req_id": "b"}}


def test_frames_of_other_batches_are_dropped(pipe: ResultPipe) -> None:
    writer = ResultWriter(pipe.write_fd)
    pipe.begin(["new"])
    writer.batch("old")
    writer.result({"req_id": "old"})
    writer.result({"req_id": 5})
    writer.result({"no": "req_id"})
    pipe.drain()
    assert pipe.results == {} and not pipe.batch_started


def test_a_half_frame_of_a_dead_writer_goes_at_reset(pipe: ResultPipe) -> None:
    os.write(pipe.write_fd, struct.pack(">I", 1000) + b'{"req_id": "lost"')
    pipe.drain()
    pipe.reset()
    ResultWriter(pipe.write_fd).result({"req_id": "next"})
    pipe.begin(["next"])
    pipe.drain()
    assert pipe.results == {"next": {"req_id": "next"}}


def test_only_a_pipe_is_adopted(tmp_path: object) -> None:
    assert ResultWriter.adopt(None) is None
    assert ResultWriter.adopt("5") is None
    assert ResultWriter.adopt(True) is None
    assert ResultWriter.adopt(1) is None  # stdout, whatever it is
    assert ResultWriter.adopt(999_999) is None  # not open
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        assert ResultWriter.adopt(fd) is None  # not a pipe
    finally:
        os.close(fd)
