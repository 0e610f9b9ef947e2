"""GrpcChannel + GrpcNodeAgent over real sockets on 127.0.0.1 with mutual TLS (sites in threads)."""

from __future__ import annotations

import os
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from tests.conftest import ShiftTask, shift_sites
from tests.transport.grpc_helpers import Deployment, open_channel

from fedcare.errors import PolicyError, TransportError
from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.node import SiteNode
from fedcare.runtime.policy import SitePolicy
from fedcare.runtime.recorder import RunSpec
from fedcare.runtime.simulation import run_simulation
from fedcare.strategies.fedavg import FedAvg
from fedcare.task import task_hash
from fedcare.transport.proto import fedcare_pb2 as pb
from fedcare.transport.proto import fedcare_pb2_grpc as pb_grpc
from fedcare.transport.tls import client_credentials
from fedcare.types import Payload, RunId

pytestmark = pytest.mark.grpc


def coordinate(d: Deployment, rounds: int = 3, *, min_sites: int = 1, timeout_s: float = 10.0):
    task = d.task
    coordinator = Coordinator(
        channel=d.channel,
        strategy=FedAvg(),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=rounds,
        min_sites=min_sites,
        round_timeout_s=timeout_s,
        evaluate=False,
    )
    spec = RunSpec(
        run_id=RunId("run-1"),
        name="t",
        dataset="",
        strategy="fedavg",
        task=task.name,
        task_hash=task_hash(task),
        seed=0,
        rounds=rounds,
    )
    return coordinator.run(task.init_model(np.random.default_rng(0)), spec=spec)


def wait_joined(d: Deployment, n: int) -> None:
    assert len(d.channel.wait_for_sites(n, timeout_s=20)) == n, d.errors


def test_rounds_over_grpc_equal_in_process_simulation(deployment: Deployment):
    # Prepare
    sites = shift_sites(3)
    deployment.nodes(sites)
    wait_joined(deployment, 3)
    # Execute
    result = coordinate(deployment, rounds=3)
    sim = run_simulation(
        sites=sites, task=deployment.task, strategy=FedAvg(), rounds=3, seed=0, run_id=RunId("sim"), min_sites=1
    )
    # Assert: identical to simulation, and the closed form x0 + R*1e-3*(2N+1)/3
    np.testing.assert_array_equal(result.state.model["w"], sim.state.model["w"])
    x0 = np.linspace(-1, 1, 8, dtype=np.float32)
    np.testing.assert_allclose(result.state.model["w"], x0 + 3 * 1e-3 * 7 / 3, rtol=1e-6)
    assert all(not r.failures for r in result.rounds)


def test_large_model_crosses_in_chunks(pki, tmp_path):
    # Prepare: a 12 MB model with 1 MiB chunks; the gRPC message limit is chunk + 1 MiB
    task = ShiftTask(size=3_000_000)
    d = Deployment(pki=pki, channel=open_channel(pki, task, chunk_bytes=1024 * 1024), task=task)
    try:
        d.nodes(shift_sites(2))
        wait_joined(d, 2)
        # Execute
        result = coordinate(d, rounds=1)
        # Assert
        x0 = np.linspace(-1, 1, 3_000_000, dtype=np.float32)
        np.testing.assert_allclose(result.state.model["w"], x0 + 1e-3 * 5 / 3, rtol=1e-5, atol=1e-6)
    finally:
        d.stop()


def _raw_connect(address: str, credentials: grpc.ChannelCredentials, frames: list[pb.SiteFrame]):
    channel = grpc.secure_channel(address, credentials)
    try:
        return list(pb_grpc.FederationStub(channel).Connect(iter(frames), timeout=5))
    finally:
        channel.close()


def test_client_without_certificate_is_refused_at_handshake(deployment: Deployment, pki):
    creds = grpc.ssl_channel_credentials(root_certificates=pki.files("hub").ca.read_bytes())
    hello = pb.SiteFrame(hello=pb.Hello(protocol_version="1.1", site="site-00"))
    with pytest.raises(grpc.RpcError) as info:
        _raw_connect(deployment.address, creds, [hello])
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert deployment.channel.sites() == []


def test_certificate_from_another_ca_is_refused(deployment: Deployment):
    agent = deployment.agent("site-00", lambda m: m.reply(), ca="other", max_attempts=1)
    deadline = time.monotonic() + 20
    while "site-00" not in deployment.errors and time.monotonic() < deadline:
        time.sleep(0.05)
    error = deployment.errors.get("site-00")
    assert isinstance(error, TransportError), error
    assert "TLS handshake" in str(error) or "unreachable" in str(error)
    assert deployment.channel.sites() == []
    agent.stop()


def test_site_not_allow_listed_is_refused_with_a_clear_message(deployment: Deployment):
    deployment.agent("intruder", lambda m: m.reply(), max_attempts=3)
    deadline = time.monotonic() + 20
    while "intruder" not in deployment.errors and time.monotonic() < deadline:
        time.sleep(0.05)
    error = deployment.errors.get("intruder")
    assert isinstance(error, TransportError)
    assert "not allow-listed" in str(error) and "'intruder'" in str(error)
    assert deployment.channel.sites() == []


@pytest.mark.parametrize(
    ("version", "accepted", "text"),
    [
        ("1.3", True, ""),
        ("1.2", True, ""),
        ("1.1", True, ""),  # the oldest still taking part (no digests, no Proceed)
        ("1.0", False, "older than 1.1"),
        ("2.0", False, "incompatible"),
        ("0.9", False, "incompatible"),
        ("x", False, "malformed"),
    ],
)
def test_protocol_version_in_handshake(deployment: Deployment, pki, version, accepted, text):
    creds = client_credentials(pki.files("site-00"))
    frames = [pb.SiteFrame(hello=pb.Hello(protocol_version=version, site="site-00"))]
    replies = _raw_connect(deployment.address, creds, frames)
    assert replies, "the server sent nothing"
    if accepted:
        assert replies[0].WhichOneof("frame") == "welcome"
        assert replies[0].welcome.study == "study"
    else:
        assert replies[0].WhichOneof("frame") == "refusal"
        assert text in replies[0].refusal.reason


def test_site_declines_a_study_it_did_not_opt_in_to(deployment: Deployment):
    deployment.agent("site-00", lambda m: m.reply(), studies=("another-study",))
    deadline = time.monotonic() + 20
    while "site-00" not in deployment.errors and time.monotonic() < deadline:
        time.sleep(0.05)
    error = deployment.errors.get("site-00")
    assert isinstance(error, PolicyError)
    assert "'study' is not in this site's opt-in list" in str(error)
    assert deployment.channel.sites() == []


def test_site_refuses_unapproved_task_and_says_which_hash(deployment: Deployment):
    sites = shift_sites(3)
    strict = SitePolicy(approved_task_hashes=frozenset({"0" * 64}))
    for site, data in sites.items():
        node = SiteNode(site_id=site, task=deployment.task, data=data, policy=strict if site == "site-02" else None)
        deployment.agent(site, node.handle)
    wait_joined(deployment, 3)
    result = coordinate(deployment, rounds=1, min_sites=2)
    failure = result.rounds[0].failures["site-02"]
    assert failure == f"refused: task hash {task_hash(deployment.task)} is not approved by this site"
    assert sorted(result.rounds[0].site_fit) == ["site-00", "site-01"]


def test_hung_site_is_dropped_after_the_deadline(deployment: Deployment):
    sites = shift_sites(3)
    release = threading.Event()
    for site, data in sites.items():
        node = SiteNode(site_id=site, task=deployment.task, data=data)
        if site == "site-01":

            def slow(message, node=node):
                release.wait(10)
                return node.handle(message)

            deployment.agent(site, slow)
        else:
            deployment.agent(site, node.handle)
    wait_joined(deployment, 3)
    started = time.monotonic()
    result = coordinate(deployment, rounds=1, min_sites=2, timeout_s=1.0)
    release.set()
    assert time.monotonic() - started < 5
    assert result.rounds[0].failures == {"site-01": "no fit reply within 1 s"}
    assert sorted(result.rounds[0].site_fit) == ["site-00", "site-02"]


def test_a_reply_the_node_cannot_send_becomes_an_error_reply_not_a_wait(deployment: Deployment):
    # Prepare: one site answers with an array no safetensors dtype can carry (a task bug)
    sites = shift_sites(2)
    for site, data in sites.items():
        node = SiteNode(site_id=site, task=deployment.task, data=data)
        if site == "site-01":

            def broken(message):
                return message.reply(Payload(arrays={"model": {"w": np.zeros(2, np.complex64)}}))

            deployment.agent(site, broken)
        else:
            deployment.agent(site, node.handle)
    wait_joined(deployment, 2)
    # Execute
    started = time.monotonic()
    result = coordinate(deployment, rounds=1, timeout_s=30.0)
    # Assert: the round did not wait for its 30 s deadline; the coordinator heard why
    assert time.monotonic() - started < 10
    (why,) = result.rounds[0].failures.values()
    assert why.startswith("site error: SerdeError") and "complex64" in why, why
    assert sorted(result.rounds[0].site_fit) == ["site-00"]


class ConnectProxy:
    """A tiny HTTPS (CONNECT) proxy on 127.0.0.1 that records each tunnel's target."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.targets: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(4096)
            if not data:
                client.close()
                return
            head += data
        line = head.split(b"\r\n", 1)[0].decode()
        method, target, _ = line.split(" ", 2)
        if method != "CONNECT":
            client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            client.close()
            return
        self.targets.append(target)
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        rest = head.split(b"\r\n\r\n", 1)[1]
        if rest:
            upstream.sendall(rest)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("how", ["config", "env"])
def test_node_works_through_an_https_proxy(deployment: Deployment, monkeypatch, how):
    proxy = ConnectProxy()
    try:
        url = f"http://127.0.0.1:{proxy.port}"
        for var in ("no_proxy", "NO_PROXY", "grpc_proxy", "http_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            monkeypatch.delenv(var, raising=False)
        if how == "env":
            monkeypatch.setenv("https_proxy", url)
        sites = shift_sites(1)
        for site, data in sites.items():
            node = SiteNode(site_id=site, task=deployment.task, data=data)
            deployment.agent(site, node.handle, proxy=url if how == "config" else None)
        wait_joined(deployment, 1)
        result = coordinate(deployment, rounds=1)
        assert not result.rounds[0].failures
        assert proxy.targets == [deployment.address]
    finally:
        os.environ.pop("https_proxy", None) if how == "env" else None
        proxy.close()


def test_node_reconnects_after_the_server_restarts(pki, shift_task):
    # Prepare
    first = open_channel(pki, shift_task)
    port = first.port
    d = Deployment(pki=pki, channel=first, task=shift_task)
    d.nodes(shift_sites(2))
    wait_joined(d, 2)
    # Execute: the server goes away, then comes back on the same port
    first.close()
    time.sleep(0.3)
    second = open_channel(pki, shift_task, port=port)
    d.channel = second
    try:
        wait_joined(d, 2)
        result = coordinate(d, rounds=1)
        # Assert
        assert not result.rounds[0].failures
    finally:
        d.stop()
