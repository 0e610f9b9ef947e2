"""Malformed, truncated, oversized and non-finite input at the wire layer, the server and the node.

Property: whatever arrives, the receiver raises a SerdeError/ProtocolError naming the
problem (or accepts a valid message) and never crashes; over real sockets the run goes on.
"""

from __future__ import annotations

import queue
import threading
import time

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import shift_sites
from tests.transport.grpc_helpers import Deployment
from tests.transport.test_grpc_channel import coordinate, wait_joined

from fedcare.errors import ProtocolError, SerdeError
from fedcare.runtime.node import SiteNode
from fedcare.serde import encode_state
from fedcare.transport.proto import fedcare_pb2 as pb
from fedcare.transport.proto import fedcare_pb2_grpc as pb_grpc
from fedcare.transport.tls import client_credentials
from fedcare.transport.wire import MessageAssembler, decode_state_view, encode_message
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId


def _valid_message(values: np.ndarray | None = None) -> Message:
    w = np.linspace(-1, 1, 8, dtype=np.float32) if values is None else values
    return Message(
        kind=MessageKind.FIT,
        run_id=RunId("run-1"),
        round_no=1,
        site=SiteId("site-00"),
        payload=Payload(arrays={"model": {"w": w}}, config={"lr": 0.1}, metrics={"num_examples": 3.0}),
        reply_to="abc",
    )


def _frames(message: Message, chunk_bytes: int = 64) -> list[pb.SiteFrame]:
    """The frames a site sends for ``message``, parsed back by protobuf itself."""
    out = encode_message(message).frames(pb.SiteFrame, chunk_bytes)
    return [pb.SiteFrame.FromString(f) if isinstance(f, bytes) else f for f in out]


def _feed(frames: list[pb.SiteFrame], max_bytes: int = 10_000) -> list[Message]:
    assembler = MessageAssembler(max_message_bytes=max_bytes, where="fuzz")
    out = []
    for frame in frames:
        which = frame.WhichOneof("frame")
        try:
            if which == "header":
                assembler.start(frame.header)
            elif which == "chunk":
                assembler.add(frame.chunk)
            elif which == "end":
                out.append(assembler.finish(frame.end))
        except SerdeError as exc:  # ProtocolError is a SerdeError
            assert str(exc)
            assembler.reset()
    return out


def test_valid_message_round_trips():
    (message,) = _feed(_frames(_valid_message()))
    np.testing.assert_array_equal(message.payload.arrays["model"]["w"], np.linspace(-1, 1, 8, dtype=np.float32))
    assert message.payload.config == {"lr": 0.1} and message.reply_to == "abc"


_header = st.builds(
    pb.MessageHeader,
    message_id=st.sampled_from(["m1", "m2", ""]),
    kind=st.sampled_from(["fit", "evaluate", "bogus", ""]),
    round_no=st.integers(-5, 5),
    records=st.lists(
        st.builds(pb.RecordHeader, name=st.sampled_from(["model", "x", ""]), size_bytes=st.integers(-10, 20_000)),
        max_size=3,
    ),
)
_chunk = st.builds(
    pb.Chunk,
    message_id=st.sampled_from(["m1", "m2"]),
    record_index=st.integers(0, 3),
    data=st.binary(max_size=300),
)
_frame = st.one_of(
    st.builds(lambda h: pb.SiteFrame(header=h), _header),
    st.builds(lambda c: pb.SiteFrame(chunk=c), _chunk),
    st.builds(lambda m: pb.SiteFrame(end=pb.MessageEnd(message_id=m)), st.sampled_from(["m1", "m2"])),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_frame, max_size=12))
def test_random_frame_sequences_never_crash_the_assembler(frames):
    for message in _feed(frames):
        assert isinstance(message, Message)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_truncated_and_mutated_protobuf_bytes(data):
    frames = _frames(_valid_message())
    raw = [f.SerializeToString() for f in frames]
    i = data.draw(st.integers(0, len(raw) - 1))
    blob = bytearray(raw[i])
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, max(0, len(blob) - 1)))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    try:
        frames[i] = pb.SiteFrame.FromString(bytes(blob))
    except DecodeError:
        return  # gRPC reports this as a deserialisation error on the stream (tested end to end below)
    for message in _feed(frames):
        for arr in message.payload.arrays.get("model", {}).values():
            assert np.isfinite(arr).all()


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_mutated_safetensors_never_yields_invalid_arrays(data):
    blob = bytearray(encode_state({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(2)}))
    for _ in range(data.draw(st.integers(1, 6))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    try:
        state = decode_state_view(blob, where="fuzz")
    except SerdeError as exc:
        assert "fuzz" in str(exc)
        return
    for arr in state.values():
        assert arr.dtype.kind != "O"
        if arr.dtype.kind == "f":
            assert np.isfinite(arr).all()


def test_non_finite_tensor_is_rejected_with_a_clear_error():
    frames = _frames(_valid_message(np.array([1.0, np.nan], dtype=np.float32)))
    assembler = MessageAssembler(where="reply from site-00")
    assembler.start(frames[0].header)
    for f in frames[1:-1]:
        assembler.add(f.chunk)
    with pytest.raises(ProtocolError, match="contains NaN or Inf"):
        assembler.finish(frames[-1].end)


def test_oversized_declaration_is_refused_before_allocation():
    header = pb.MessageHeader(message_id="m", kind="fit", records=[pb.RecordHeader(name="model", size_bytes=10**15)])
    with pytest.raises(ProtocolError, match="exceed the limit"):
        MessageAssembler(max_message_bytes=1 << 30, where="reply").start(header)


def test_overrun_and_truncation_are_named():
    frames = _frames(_valid_message())
    a = MessageAssembler(where="reply")
    a.start(frames[0].header)
    with pytest.raises(ProtocolError, match="truncated"):
        a.finish(frames[-1].end)
    a.start(frames[0].header)
    with pytest.raises(ProtocolError, match="overruns"):
        a.add(pb.Chunk(message_id=frames[0].header.message_id, record_index=0, data=b"x" * 10_000))


# -- over real sockets: a rogue (but certified, allow-listed) site and a rogue server frame ---------


class RogueSite:
    """Speaks the protocol by hand and answers every instruction with a broken reply."""

    def __init__(self, d: Deployment, site: str, behaviours: list[str]) -> None:
        self.site, self.behaviours = site, list(behaviours)
        self.out: queue.SimpleQueue[pb.SiteFrame | None] = queue.SimpleQueue()
        self.channel = grpc.secure_channel(d.address, client_credentials(d.pki.files(site)))
        self.out.put(pb.SiteFrame(hello=pb.Hello(protocol_version="1.1", site=site)))
        self.out.put(pb.SiteFrame(join=pb.Join(study="study")))
        self.call = pb_grpc.FederationStub(self.channel).Connect(iter(self.out.get, None))
        threading.Thread(target=self._answer, daemon=True).start()

    def _answer(self) -> None:
        try:
            for frame in self.call:
                if frame.WhichOneof("frame") == "header" and self.behaviours:
                    self._reply(frame.header, self.behaviours.pop(0))
        except grpc.RpcError:
            pass

    def _reply(self, instr: pb.MessageHeader, how: str) -> None:
        w = np.linspace(-1, 1, 8, dtype=np.float32)
        if how == "nan":
            w = w.copy()
            w[3] = np.nan
        elif how == "shape":
            w = np.zeros(5, dtype=np.float32)
        reply = Message(
            kind=MessageKind(instr.kind),
            run_id=RunId(instr.run_id),
            round_no=instr.round_no,
            site=SiteId(self.site),
            payload=Payload(arrays={"model": {"w": w}}, metrics={"num_examples": 3.0}),
            reply_to=instr.message_id,
        )
        frames = _frames(reply, chunk_bytes=16)
        if how == "truncated":
            frames = [frames[0], frames[1], frames[-1]]
        elif how == "oversized":
            frames[0].header.records[0].size_bytes = 1 << 40
        elif how == "kind":
            frames[0].header.kind = "exec"
        for f in frames:
            self.out.put(f)

    def close(self) -> None:
        self.out.put(None)
        self.channel.close()


def test_rogue_site_replies_are_rejected_and_the_run_goes_on(deployment: Deployment):
    # Prepare: two honest sites and one that sends broken replies, one kind per round
    behaviours = ["nan", "shape", "truncated", "oversized", "kind"]
    sites = shift_sites(2)
    deployment.nodes(sites)
    rogue = RogueSite(deployment, "site-02", behaviours)
    try:
        wait_joined(deployment, 3)
        # Execute
        result = coordinate(deployment, rounds=len(behaviours), min_sites=2)
        # Assert: every round completed with the honest sites; each rogue reply got a clear reason
        reasons = [r.failures.get("site-02", "") for r in result.rounds]
        assert "NaN or Inf" in reasons[0]
        assert "shape (5,)" in reasons[1]
        assert "malformed reply" in reasons[2] and "truncated" in reasons[2]
        assert "malformed reply" in reasons[3] and "exceed the limit" in reasons[3]
        assert "unknown message kind" in reasons[4]
        assert all(sorted(r.site_fit) == ["site-00", "site-01"] for r in result.rounds)
        x0 = np.linspace(-1, 1, 8, dtype=np.float32)
        np.testing.assert_allclose(result.state.model["w"], x0 + 5 * 1e-3 * 5 / 3, rtol=1e-5)
    finally:
        rogue.close()


def test_garbage_bytes_on_the_stream_do_not_hurt_the_server(deployment: Deployment):
    deployment.nodes(shift_sites(2))
    wait_joined(deployment, 2)
    # a certified client sends bytes that are not a SiteFrame at all
    channel = grpc.secure_channel(deployment.address, client_credentials(deployment.pki.files("site-03")))
    raw = channel.stream_stream("/fedcare.v1.Federation/Connect", request_serializer=None, response_deserializer=None)
    replies = list(raw(iter([b"\xff\xfe not protobuf \x00" * 10]), timeout=5))
    channel.close()
    # answered with a refusal that says why (the bytes are no hello), not a torn-down stream
    (reply,) = [pb.ServerFrame.FromString(r) for r in replies]
    assert reply.WhichOneof("frame") == "refusal" and "first frame must be a hello" in reply.refusal.reason
    result = coordinate(deployment, rounds=1, min_sites=2)
    assert not result.rounds[0].failures


def test_node_answers_a_malformed_instruction_with_an_error_and_keeps_serving(deployment: Deployment):
    sites = shift_sites(1)
    site, data = next(iter(sites.items()))
    deployment.agent(site, SiteNode(site_id=site, task=deployment.task, data=data).handle)
    wait_joined(deployment, 1)
    session = deployment.channel._sessions[site]
    bad = [
        pb.ServerFrame(
            header=pb.MessageHeader(
                message_id="x1", kind="fit", records=[pb.RecordHeader(name="model", size_bytes=1 << 41)]
            )
        ),
        pb.ServerFrame(
            header=pb.MessageHeader(message_id="x2", kind="fit", records=[pb.RecordHeader(name="model", size_bytes=8)])
        ),
        pb.ServerFrame(chunk=pb.Chunk(message_id="x2", record_index=0, data=b"\x00" * 8)),
        pb.ServerFrame(end=pb.MessageEnd(message_id="x2")),
    ]
    for frame in bad:
        session.outq.put(frame)
    time.sleep(0.5)
    result = coordinate(deployment, rounds=1)
    assert not result.rounds[0].failures
    assert "site-00" not in deployment.errors
