"""Over gRPC, bytes that are not a frame at all are a recorded failure of that site, not a dead stream."""

from __future__ import annotations

import queue
import threading

import grpc
import numpy as np
from tests.conftest import shift_sites
from tests.transport.grpc_helpers import Deployment
from tests.transport.test_grpc_channel import coordinate, wait_joined

from fedcare.transport.frames import BadFrame, parse_server_frame, parse_site_frame, serialize_frame
from fedcare.transport.proto import fedcare_pb2 as pb
from fedcare.transport.tls import client_credentials

GARBAGE = b"\xff\xfe not protobuf \x00" * 10


class GarbageSite:
    """A certified, allow-listed site that completes the handshake, then answers with bytes that are no frame."""

    def __init__(self, d: Deployment, site: str, how: list[str]) -> None:
        self.how = list(how)
        self.out: queue.SimpleQueue[bytes | pb.SiteFrame | None] = queue.SimpleQueue()
        self.channel = grpc.secure_channel(d.address, client_credentials(d.pki.files(site)))
        connect = self.channel.stream_stream(
            "/fedcare.v1.Federation/Connect",
            request_serializer=serialize_frame,  # passes raw bytes through unchanged
            response_deserializer=parse_server_frame,
        )
        self.out.put(pb.SiteFrame(hello=pb.Hello(protocol_version="1.1", site=site)))
        self.out.put(pb.SiteFrame(join=pb.Join(study="study")))
        self.call = connect(iter(self.out.get, None))
        threading.Thread(target=self._answer, daemon=True).start()

    def _answer(self) -> None:
        try:
            for frame in self.call:
                if isinstance(frame, pb.ServerFrame) and frame.WhichOneof("frame") == "header" and self.how:
                    instr = frame.header
                    if self.how.pop(0) == "after-header":  # a valid reply header, then garbage for its records
                        header = pb.MessageHeader(
                            message_id="r1" + instr.message_id[:20],
                            kind=instr.kind,
                            run_id=instr.run_id,
                            round_no=instr.round_no,
                            reply_to=instr.message_id,
                            records=[pb.RecordHeader(name="model", size_bytes=64)],
                        )
                        self.out.put(pb.SiteFrame(header=header))
                    self.out.put(GARBAGE)  # "instead-of-header": the reply starts with garbage
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self.out.put(None)
        self.channel.close()


def test_undecodable_bytes_become_a_bad_frame_not_an_exception():
    for parse in (parse_site_frame, parse_server_frame):
        frame = parse(GARBAGE)
        assert isinstance(frame, BadFrame) and "undecodable" in frame.reason


def test_a_reply_of_garbage_bytes_is_a_recorded_failure_and_the_site_stays_connected(deployment: Deployment):
    # Prepare: two honest sites and one whose replies are not frames (once after a header, once instead of it)
    deployment.nodes(shift_sites(2))
    rogue = GarbageSite(deployment, "site-02", ["after-header", "instead-of-header"])
    try:
        wait_joined(deployment, 3)
        # Execute
        result = coordinate(deployment, rounds=2, min_sites=2)
        # Assert: each round completed with the honest sites; the rogue's failure names the bad frame
        for r in result.rounds:
            reason = r.failures.get("site-02", "")
            assert "malformed reply" in reason and "undecodable SiteFrame" in reason, reason
            assert "disconnected" not in reason
            assert sorted(r.site_fit) == ["site-00", "site-01"]
        assert "site-02" in deployment.channel.sites()  # still connected: a bad reply is not a dead stream
        x0 = np.linspace(-1, 1, 8, dtype=np.float32)
        np.testing.assert_allclose(result.state.model["w"], x0 + 2 * 1e-3 * 5 / 3, rtol=1e-5)
    finally:
        rogue.close()
