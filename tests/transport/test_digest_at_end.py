"""Protocol 1.3 over real sockets: large records hashed while they stream, digests in the end frame.

What a coordinator at 1.3 sends to sites of 1.3 and of 1.2; a wrong digest declared at the
end, and a stream cut before a reply's last chunk, refused; real nodes speaking 1.3 and 1.2
with audit trails on both sides that name the same digests, the site's anchor included.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import blake3
import numpy as np
import pytest
from tests.conftest import ShiftTask, shift_sites
from tests.transport.grpc_helpers import Deployment, Pki, open_channel
from tests.transport.test_flow_control import HandSite
from tests.transport.test_grpc_channel import coordinate, wait_joined

from fedcare.runtime.node import SiteNode
from fedcare.serde import encode_state
from fedcare.store.audit import AuditLog, verify_audit_log
from fedcare.transport import grpc_node, grpc_server

pytestmark = pytest.mark.grpc

FLOATS = 1_200_000  # a 4.8 MB model: large enough to be hashed while it streams


@pytest.fixture
def big(pki: Pki, tmp_path: Path) -> Iterator[Deployment]:
    """A deployment of a 4.8 MB model whose coordinator keeps an audit trail."""
    task = ShiftTask(size=FLOATS)
    audit = AuditLog(tmp_path / "server.jsonl", actor="server")
    d = Deployment(pki=pki, channel=open_channel(pki, task, audit=audit), task=task)
    try:
        yield d
    finally:
        d.stop()


def _entries(path: Path, event: str) -> list[dict]:
    return [e for e in map(json.loads, path.read_text().splitlines()) if e["event"] == event]


@pytest.mark.parametrize("version", ["1.3", "1.2"])
def test_the_coordinator_declares_digests_at_the_end_only_to_sites_of_1_3(big: Deployment, version):
    site = HandSite(big, "site-02", version, ["ok"], reply_floats=FLOATS)
    try:
        wait_joined(big, 1)
        result = coordinate(big, rounds=1, min_sites=1, timeout_s=60)
        assert sorted(result.rounds[0].site_fit) == ["site-02"], result.rounds[0].failures
        (instruction,) = [h for h in site.headers if h.records]
        model = np.linspace(-1, 1, FLOATS, dtype=np.float32)
        digest = blake3.blake3(encode_state({"w": model})).hexdigest()
        if version == "1.3":  # hashed while streaming: nothing in the header, every digest at the end
            assert instruction.records[0].blake3 == "" and list(site.ends[0].blake3) == [digest]
        else:  # a 1.2 site reads digests from headers only
            assert instruction.records[0].blake3 == digest and not site.ends[0].blake3
        # the coordinator logged what it sent once it had sent it, and what it received (the 1.3 site's
        # digest arrived at the end, the 1.2 site's in the header)
        (sent,) = _entries(big.channel.audit.path, "sent")  # type: ignore[union-attr]
        assert sent["records"][0]["blake3"] == digest
        reply = np.linspace(-1, 1, FLOATS, dtype=np.float32)
        (received,) = _entries(big.channel.audit.path, "received")  # type: ignore[union-attr]
        assert received["records"][0]["blake3"] == blake3.blake3(encode_state({"w": reply})).hexdigest()
    finally:
        site.close()


@pytest.mark.parametrize(
    ("how", "error"), [("bad_digest", "does not match its declared BLAKE3"), ("truncate", "disconnected")]
)
def test_a_reply_whose_digest_at_the_end_differs_or_whose_stream_is_cut_is_refused(big: Deployment, how, error):
    big.nodes(shift_sites(1))
    site = HandSite(big, "site-02", "1.3", [how, "ok"], reply_floats=FLOATS)
    try:
        wait_joined(big, 2)
        result = coordinate(big, rounds=2 if how == "bad_digest" else 1, min_sites=1, timeout_s=60)
        assert sorted(result.rounds[0].site_fit) == ["site-00"]
        assert error in result.rounds[0].failures["site-02"]
        received = _entries(big.channel.audit.path, "received")  # type: ignore[union-attr]
        assert [e["site"] for e in received if e["round_no"] == 1] == ["site-00"]  # nothing counted of site-02
        if how == "bad_digest":  # the stream stayed in order: the next reply goes through
            assert sorted(result.rounds[1].site_fit) == ["site-00", "site-02"]
    finally:
        site.close()


@pytest.mark.parametrize(("site", "coordinator"), [("1.3", "1.3"), ("1.2", "1.3"), ("1.3", "1.2")])
def test_nodes_and_coordinators_of_1_3_and_1_2_keep_both_audit_trails_in_agreement(
    big: Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, site, coordinator
):
    # the real node and coordinator, announcing (and so speaking) an older version
    monkeypatch.setattr(grpc_node, "PROTOCOL_VERSION", site)
    monkeypatch.setattr(grpc_server, "PROTOCOL_VERSION", coordinator)
    site_log = tmp_path / "site-00.jsonl"
    ((name, data),) = shift_sites(1).items()
    node = SiteNode(site_id=name, task=big.task, data=data)
    big.agent(name, node.handle, audit=AuditLog(site_log, actor=name))
    wait_joined(big, 1)
    result = coordinate(big, rounds=2, min_sites=1, timeout_s=60)
    x0 = np.linspace(-1, 1, FLOATS, dtype=np.float32)
    np.testing.assert_allclose(result.state.model["w"], x0 + 2e-3, rtol=1e-5, atol=1e-6)
    server_log = big.channel.audit.path  # type: ignore[union-attr]
    digests = lambda path, event: [e["records"][0]["blake3"] for e in _entries(path, event) if e["records"]]  # noqa: E731
    assert digests(server_log, "sent") == digests(site_log, "received") and len(digests(site_log, "received")) == 2
    assert digests(site_log, "sent") == digests(server_log, "received") and len(digests(site_log, "sent")) == 2
    report = verify_audit_log(site_log, anchors=server_log, site=name)
    assert report.ok and report.anchors == 2, report
    assert {e["protocol"] for e in _entries(site_log, "joined")} == {coordinator}
