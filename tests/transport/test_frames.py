"""The hand-written chunk frame codec agrees with protobuf, byte for byte and field for field."""

from __future__ import annotations

import blake3
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.errors import ProtocolError
from fedcare.serde import decode_state, encode_state
from fedcare.transport.frames import (
    SERVER_CHUNK_FIELD,
    SITE_CHUNK_FIELD,
    BadFrame,
    RawChunk,
    chunk_frame,
    parse_server_frame,
    parse_site_frame,
)
from fedcare.transport.proto import fedcare_pb2 as pb
from fedcare.transport.wire import MessageAssembler, encode_message
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

_ids = st.one_of(st.just(""), st.text(max_size=40))
_data = st.binary(max_size=600)


@settings(max_examples=200, deadline=None)
@given(message_id=_ids, index=st.integers(0, 2**32 - 1), data=_data, cut=st.integers(0, 600))
def test_chunk_frames_are_the_bytes_protobuf_writes(message_id, index, data, cut):
    pieces = [memoryview(data[:cut]), memoryview(data[cut:])]
    for frame_type, field in ((pb.SiteFrame, SITE_CHUNK_FIELD), (pb.ServerFrame, SERVER_CHUNK_FIELD)):
        ours = chunk_frame(field, message_id.encode(), index, pieces)
        theirs = frame_type(chunk=pb.Chunk(message_id=message_id, record_index=index, data=data))
        assert ours == theirs.SerializeToString()


@settings(max_examples=200, deadline=None)
@given(message_id=_ids, index=st.integers(0, 2**32 - 1), data=_data)
def test_fast_parse_reads_what_protobuf_reads(message_id, index, data):
    raw = pb.SiteFrame(chunk=pb.Chunk(message_id=message_id, record_index=index, data=data)).SerializeToString()
    frame = parse_site_frame(raw)
    assert isinstance(frame, RawChunk)
    assert (frame.message_id, frame.record_index, bytes(frame.data)) == (message_id, index, data)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fast_parse_never_accepts_what_protobuf_reads_differently(data):
    """Mutated, truncated or random bytes: the fast path either agrees with protobuf or defers."""
    if data.draw(st.booleans()):
        blob = bytearray(
            pb.SiteFrame(
                chunk=pb.Chunk(
                    message_id=data.draw(_ids), record_index=data.draw(st.integers(0, 300)), data=data.draw(_data)
                )
            ).SerializeToString()
        )
        for _ in range(data.draw(st.integers(0, 4))):
            if blob:
                blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    else:
        blob = bytearray(data.draw(st.binary(max_size=80)))
    raw = bytes(blob)
    try:
        reference = pb.SiteFrame.FromString(raw)
    except DecodeError:
        reference = None
    ours = parse_site_frame(raw)  # never raises: undecodable bytes come back as a BadFrame
    if isinstance(ours, BadFrame):
        assert reference is None
        return
    if isinstance(ours, RawChunk):
        assert reference is not None and reference.WhichOneof("frame") == "chunk"
        chunk = reference.chunk
        assert (ours.message_id, ours.record_index, bytes(ours.data)) == (
            chunk.message_id,
            chunk.record_index,
            chunk.data,
        )
    else:
        assert ours == reference


def test_other_frames_go_through_protobuf():
    end = pb.ServerFrame(end=pb.MessageEnd(message_id="m")).SerializeToString()
    assert parse_server_frame(end).WhichOneof("frame") == "end"
    # a site-frame chunk (field 5) is not a server-frame chunk (field 4): protobuf decides
    site_chunk = pb.SiteFrame(chunk=pb.Chunk(message_id="m", data=b"x")).SerializeToString()
    assert not isinstance(parse_server_frame(site_chunk), RawChunk)


@pytest.mark.parametrize("chunk_bytes", [64, 100, 4096])
def test_message_frames_cut_records_at_chunk_size_and_carry_the_digest(chunk_bytes):
    w = np.linspace(-1, 1, 250, dtype=np.float32)
    message = Message(MessageKind.FIT, RunId("r"), 1, SiteId("s"), Payload(arrays={"model": {"w": w}, "aux": {}}))
    encoded = encode_message(message)
    frames = list(encoded.frames(pb.ServerFrame, chunk_bytes))
    assert frames[0].WhichOneof("frame") == "header" and frames[-1].WhichOneof("frame") == "end"
    chunks = [parse_server_frame(f) for f in frames[1:-1]]
    assert all(isinstance(c, RawChunk) and len(c.data) <= chunk_bytes for c in chunks)
    assert encoded.sent.is_set()
    blob = b"".join(bytes(c.data) for c in chunks if c.record_index == 0)
    assert blob == encode_state({"w": w})
    np.testing.assert_array_equal(decode_state(blob)["w"], w)
    assert frames[0].header.records[0].blake3 == blake3.blake3(blob).hexdigest()


def _received(frames, *, tamper=None):
    """Feed a message's frames to an assembler (optionally changing one chunk); return it and its header."""
    assembler = MessageAssembler(where="reply from s")
    header = frames[0].header
    assembler.start(header)
    for i, frame in enumerate(frames[1:-1]):
        chunk = parse_server_frame(frame)
        if tamper is not None and i == tamper:
            chunk = RawChunk(chunk.message_id, chunk.record_index, bytes(len(chunk.data)))
        assembler.add(chunk)
    return assembler.finish(frames[-1].end), header


def test_the_receiver_checks_each_record_against_its_declared_digest():
    w = np.linspace(-1, 1, 250, dtype=np.float32)
    message = Message(MessageKind.FIT, RunId("r"), 1, SiteId("s"), Payload(arrays={"model": {"w": w}}))
    frames = list(encode_message(message).frames(pb.ServerFrame, 256))
    declared = frames[0].header.records[0].blake3
    got, header = _received(frames)
    np.testing.assert_array_equal(got.payload.arrays["model"]["w"], w)
    assert header.records[0].blake3 == declared
    # the bytes of one chunk differ from what the sender hashed (and logged): refused, naming the record
    with pytest.raises(ProtocolError, match=r"reply from s: record 'model' does not match its declared BLAKE3"):
        _received(list(encode_message(message).frames(pb.ServerFrame, 256)), tamper=2)


def test_a_peer_that_declares_no_digest_gets_the_receivers_own_in_the_audit():
    # protocol 1.1 sites send no digest: the coordinator logs the one it computed itself
    w = np.arange(100, dtype=np.float32)
    message = Message(MessageKind.FIT, RunId("r"), 1, SiteId("s"), Payload(arrays={"model": {"w": w}}))
    frames = list(encode_message(message).frames(pb.ServerFrame, 128))
    declared = frames[0].header.records[0].blake3
    frames[0].header.records[0].blake3 = ""
    _, header = _received(frames)
    assert header.records[0].blake3 == declared == blake3.blake3(encode_state({"w": w})).hexdigest()


def _large(floats: int = 1_200_000) -> Message:
    """A message whose record (4.8 MB) is large enough to be hashed while it streams (protocol 1.3)."""
    w = np.linspace(-1, 1, floats, dtype=np.float32)
    return Message(MessageKind.FIT, RunId("r"), 1, SiteId("s"), Payload(arrays={"model": {"w": w}}))


def test_a_record_hashed_while_it_streams_declares_its_digest_in_the_end_frame():
    message = _large()
    events: list[str] = []
    encoded = encode_message(message, digest_now=False)
    encoded.on_end = lambda sent: events.append(sent.header.records[0].blake3) or "3:" + "a" * 64
    frames = []
    for frame in encoded.frames(pb.ServerFrame, 1 << 20):
        assert not events or frame.WhichOneof("frame") == "end"  # the audit hook runs after the last chunk
        frames.append(frame)
    blob = encode_state({"w": message.payload.arrays["model"]["w"]})
    digest = blake3.blake3(blob).hexdigest()
    assert frames[0].header.records[0].blake3 == ""  # nothing was hashed before the first byte
    assert list(frames[-1].end.blake3) == [digest] and events == [digest]
    assert frames[-1].end.audit_head == "3:" + "a" * 64
    got, header = _received(frames)
    np.testing.assert_array_equal(got.payload.arrays["model"]["w"], message.payload.arrays["model"]["w"])
    assert header.records[0].blake3 == digest and header.audit_head == "3:" + "a" * 64


def test_a_digest_declared_at_the_end_is_checked_like_one_in_the_header():
    message = _large()
    frames = list(encode_message(message, digest_now=False).frames(pb.ServerFrame, 1 << 20))
    with pytest.raises(ProtocolError, match=r"record 'model' does not match its declared BLAKE3"):
        _received(frames, tamper=1)  # bytes changed on the way
    frames[-1].end.blake3[0] = "0" * 64
    with pytest.raises(ProtocolError, match=r"record 'model' does not match its declared BLAKE3"):
        _received(frames)  # the sender declares another digest than that of what it sent
    frames[-1].end.blake3.append("0" * 64)
    with pytest.raises(ProtocolError, match=r"declares 2 digest\(s\) for 1 record\(s\)"):
        _received(frames)


def test_a_message_that_ends_early_is_refused_when_its_digest_comes_at_the_end():
    frames = list(encode_message(_large(), digest_now=False).frames(pb.ServerFrame, 1 << 20))
    assert len(frames) > 4
    with pytest.raises(ProtocolError, match=r"record 'model' is truncated \(\d+ of \d+ bytes\)"):
        _received([*frames[:-2], frames[-1]])  # the last chunk never arrived


def test_a_peer_that_must_declare_digests_and_declares_none_is_refused():
    for floats in (100, 1_200_000):  # hashed on the reader's thread, and on a thread of its own
        frames = list(encode_message(_large(floats)).frames(pb.ServerFrame, 1 << 20))
        frames[0].header.records[0].blake3 = ""
        assembler = MessageAssembler(where="reply from s", require_digest=True)
        assembler.start(frames[0].header)
        for frame in frames[1:-1]:
            assembler.add(parse_server_frame(frame))
        with pytest.raises(ProtocolError, match=r"reply from s: record 'model' came without a BLAKE3 digest"):
            assembler.finish(frames[-1].end)
        assert not assembler.busy  # state intact: the next message can start
