"""Flow control between sites and the coordinator (protocol 1.2's Proceed) over real sockets.

A hand-written site speaks the protocol frame by frame, so each test can check what the
server sends and when: a 1.2 site gets a go-ahead before it sends a reply's chunks (or
a refusal saying why), a 1.1 site that never waits still takes part, and a site that
holds the turn and goes silent is disconnected without holding up the others.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tests.conftest import shift_sites
from tests.transport.grpc_helpers import Deployment, Pki, open_channel
from tests.transport.test_grpc_channel import coordinate, wait_joined

from fedcare.runtime.node import SiteNode
from fedcare.task import Task
from fedcare.transport.frames import connect_stub
from fedcare.transport.grpc_node import Backoff, GrpcNodeAgent
from fedcare.transport.proto import fedcare_pb2 as pb
from fedcare.transport.tls import client_credentials
from fedcare.transport.wire import encode_message
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

pytestmark = pytest.mark.grpc


class HandSite:
    """A certified site that answers each instruction as told.

    Behaviours: "ok", "stall" (the turn, then silence), "oversized" (a header declaring
    1 TiB), "bad_digest" (the last digest it declares is wrong), "truncate" (the stream
    closes before the last chunk). Replies have ``reply_floats`` float32 values; sites
    of 1.3 hash large ones while they stream and declare the digest at the end.
    """

    def __init__(self, d: Deployment, site: str, version: str, behaviours: list[str], *, reply_floats: int = 8) -> None:
        self.site, self.version, self.behaviours = site, version, list(behaviours)
        self.reply_floats = reply_floats
        self.received: list[str] = []  # kinds of the frames the server sent, in order
        self.headers: list[pb.MessageHeader] = []
        self.ends: list[pb.MessageEnd] = []
        self.proceeds: list[pb.Proceed] = []
        self._go: queue.SimpleQueue[pb.Proceed] = queue.SimpleQueue()
        self.out: queue.SimpleQueue[pb.SiteFrame | bytes | None] = queue.SimpleQueue()
        self.channel = grpc.secure_channel(
            d.address, client_credentials(d.pki.files(site)), options=[("grpc.max_receive_message_length", 1 << 26)]
        )
        self.out.put(pb.SiteFrame(hello=pb.Hello(protocol_version=version, site=site)))
        self.out.put(pb.SiteFrame(join=pb.Join(study="study")))
        self.call = connect_stub(self.channel)(iter(self.out.get, None))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for frame in self.call:
                kind = "chunk" if not isinstance(frame, pb.ServerFrame) else frame.WhichOneof("frame")
                self.received.append(kind)
                if kind == "proceed":
                    self.proceeds.append(frame.proceed)
                    self._go.put(frame.proceed)
                elif kind == "header":
                    self.headers.append(frame.header)
                elif kind == "end":
                    self.ends.append(frame.end)
                    header = self.headers[-1]
                    if header.records and self.behaviours:
                        how = self.behaviours.pop(0)
                        threading.Thread(target=self._reply, args=(header, how), daemon=True).start()
        except grpc.RpcError:
            pass

    def _reply(self, instr: pb.MessageHeader, how: str) -> None:
        reply = Message(
            kind=MessageKind(instr.kind),
            run_id=RunId(instr.run_id),
            round_no=instr.round_no,
            site=SiteId(self.site),
            payload=Payload(arrays={"model": {"w": np.linspace(-1, 1, self.reply_floats, dtype=np.float32)}}),
            reply_to=instr.message_id,
        )
        reply.payload.metrics["num_examples"] = 1.0
        encoded = encode_message(reply, digest_now=self.version < "1.3")
        frames: Iterator[pb.SiteFrame | bytes] = encoded.frames(pb.SiteFrame, 16 if self.reply_floats < 64 else 1 << 20)
        header = next(frames)
        if how == "oversized":
            header.header.records[0].size_bytes = 1 << 40
        self.out.put(header)
        if self.version >= "1.2":
            go = self._go.get(timeout=10)
            assert go.message_id == reply.message_id
            if go.refusal or how == "stall":
                return  # refused: send nothing more; stalled: hold the turn and go silent
        rest = list(frames)
        if how == "bad_digest":  # needs a large reply at 1.3: its digest is declared at the end
            rest[-1].end.blake3[-1] = "0" * 64
        if how == "truncate":
            rest = rest[:-2]  # neither the last chunk nor the end
        for frame in rest:
            self.out.put(frame)
        if how == "truncate":
            self.out.put(None)  # the site's side of the stream ends here

    def close(self) -> None:
        self.out.put(None)
        self.channel.close()


@pytest.fixture
def impatient(pki: Pki, shift_task: Task) -> Iterator[Deployment]:
    """A deployment whose server disconnects a silent turn-holder after 1 s."""
    d = Deployment(pki=pki, channel=open_channel(pki, shift_task, stall_timeout_s=1.0), task=shift_task)
    try:
        yield d
    finally:
        d.stop()


@pytest.mark.parametrize("version", ["1.2", "1.1"])
def test_sites_of_1_2_send_chunks_after_the_go_ahead_and_1_1_sites_without(deployment: Deployment, version):
    deployment.nodes(shift_sites(1))
    site = HandSite(deployment, "site-02", version, ["ok", "ok"])
    try:
        wait_joined(deployment, 2)
        result = coordinate(deployment, rounds=2, min_sites=2)
        assert all(sorted(r.site_fit) == ["site-00", "site-02"] for r in result.rounds)
        if version == "1.2":  # HandSite sends its chunks only once a Proceed arrived
            assert len(site.proceeds) == 2 and not any(p.refusal for p in site.proceeds)
        else:
            assert "proceed" not in site.received  # a 1.1 site would not understand it
    finally:
        site.close()


def test_a_refused_header_gets_the_reason_and_no_chunks_are_sent(deployment: Deployment):
    deployment.nodes(shift_sites(1))
    site = HandSite(deployment, "site-02", "1.2", ["oversized", "ok"])
    try:
        wait_joined(deployment, 2)
        result = coordinate(deployment, rounds=2, min_sites=1)
        assert "exceed the limit" in site.proceeds[0].refusal
        assert "exceed the limit" in result.rounds[0].failures["site-02"]
        # the refusal left the stream in order: the next round's reply goes through
        assert sorted(result.rounds[1].site_fit) == ["site-00", "site-02"]
    finally:
        site.close()


def test_a_site_that_stalls_with_the_turn_is_disconnected_and_the_round_goes_on(impatient: Deployment):
    impatient.nodes(shift_sites(2))
    site = HandSite(impatient, "site-02", "1.2", ["stall"])
    try:
        wait_joined(impatient, 3)
        t0 = time.monotonic()
        result = coordinate(impatient, rounds=2, min_sites=2, timeout_s=30)
        # the stalled site lost its connection after ~1 s, long before the 30 s deadline
        assert time.monotonic() - t0 < 20
        assert "disconnected" in result.rounds[0].failures["site-02"]
        assert all(sorted(r.site_fit) == ["site-00", "site-01"] for r in result.rounds)
    finally:
        site.close()


def test_reply_budget_admits_one_reply_of_any_size_and_small_ones_together():
    from fedcare.transport.grpc_server import _ReplyBudget

    budget = _ReplyBudget(limit=10)
    assert budget.acquire(100, timeout_s=0)  # alone: always admitted, whatever its size
    assert not budget.acquire(1, timeout_s=0.05)  # nothing else while it is held
    budget.release(100)
    assert budget.acquire(4, timeout_s=0) and budget.acquire(6, timeout_s=0)  # small ones share
    assert not budget.acquire(1, timeout_s=0.05)
    threading.Timer(0.1, budget.release, args=(6,)).start()
    assert budget.acquire(5, timeout_s=5)  # admitted once room is given back


def test_sites_are_told_when_the_run_is_over(deployment: Deployment):
    deployment.nodes(shift_sites(1))
    wait_joined(deployment, 1)
    site = HandSite(deployment, "site-02", "1.2", [])
    old = HandSite(deployment, "site-03", "1.1", [])  # would not understand the frame
    try:
        wait_joined(deployment, 3)
        coordinate(deployment, rounds=1, min_sites=1)
        deployment.channel.finish("completed 1 rounds")
        deadline = time.monotonic() + 10
        while "finished" not in site.received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "finished" in site.received and "finished" not in old.received
    finally:
        site.close()
        old.close()


def test_a_node_run_once_exits_when_the_run_is_over(pki: Pki, shift_task: Task):
    d = Deployment(pki=pki, channel=open_channel(pki, shift_task), task=shift_task)
    try:
        site, data = next(iter(shift_sites(1).items()))
        agent = GrpcNodeAgent(
            site=site,
            handler=SiteNode(site_id=site, task=shift_task, data=data).handle,
            address=d.address,
            tls=pki.files(site),
            studies=["study"],
            backoff=Backoff(initial_s=0.05, max_s=0.3),
        )
        done = threading.Event()
        thread = threading.Thread(target=lambda: (agent.run_forever(exit_after_run=True), done.set()), daemon=True)
        thread.start()
        wait_joined(d, 1)
        coordinate(d, rounds=1)
        d.channel.finish("completed 1 rounds")
        assert done.wait(10), "the node kept reconnecting after the run was over"
    finally:
        d.stop()
