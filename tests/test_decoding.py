"""kernelexec/kernel/decoding.py against jupyter_client's own Session encoding."""

from __future__ import annotations

import pytest
import zmq
from jupyter_client.session import Session

from kernelexec.kernel.decoding import decode


def frames_of(session: Session, *, topic: bytes | None = b"kernel.x.comm_msg") -> list[zmq.Frame]:
    parent = session.msg("kernelexec_request", {"kernelexec": {"op": "run"}})
    msg = session.msg("comm_msg", {"data": {"é": [1, None]}}, parent=parent["header"])
    msg["buffers"] = [b"\x00blob"]
    raw = session.serialize(msg)
    return [zmq.Frame(part) for part in ([topic] if topic else []) + raw + [b"\x00blob"]]


@pytest.mark.parametrize("topic", [b"kernel.x.comm_msg", None])
def test_decodes_what_the_session_encodes(topic: bytes | None) -> None:
    session = Session(key=b"secret")
    msg = decode(session, frames_of(session, topic=topic))
    assert msg["msg_type"] == "comm_msg" and msg["header"]["msg_type"] == "comm_msg"
    assert msg["parent_header"]["msg_type"] == "kernelexec_request"
    assert msg["content"] == {"data": {"é": [1, None]}}
    assert [bytes(b) for b in msg["buffers"]] == [b"\x00blob"]


def test_a_wrong_signature_or_key_is_refused() -> None:
    frames = frames_of(Session(key=b"secret"))
    with pytest.raises(ValueError, match="invalid signature"):
        decode(Session(key=b"other"), frames)
    unsigned = frames_of(Session(key=b""))
    with pytest.raises(ValueError, match="unsigned"):
        decode(Session(key=b"secret"), unsigned)


def test_a_tampered_content_is_refused() -> None:
    session = Session(key=b"secret")
    frames = frames_of(session)
    # frames: topic, delimiter, signature, header, parent header, metadata, content, buffer
    frames[6] = zmq.Frame(b'{"data": "changed"}')
    with pytest.raises(ValueError, match="invalid signature"):
        decode(session, frames)


def test_not_a_jupyter_message() -> None:
    with pytest.raises(ValueError, match="delimiter"):
        decode(Session(key=b"k"), [zmq.Frame(b"hello")])
