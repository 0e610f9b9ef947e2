"""One coordinator per port, a clear word to a site the coordinator rejects, and no site left waiting."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from tests.deploy.deploy_helpers import Study, free_port, make_certs
from tests.transport.grpc_helpers import Deployment, open_channel

from fedcare.deploy.config import load_server_config
from fedcare.deploy.server import run_server
from fedcare.errors import ConfigError, NotEnoughSitesError, TransportError
from fedcare.study.builtin import resolve_study
from fedcare.transport.grpc_node import Backoff, GrpcNodeAgent
from fedcare.transport.tls import TlsFiles


def test_a_second_server_on_a_taken_port_is_refused_with_one_line(pki, shift_task):
    first = open_channel(pki, shift_task)
    try:
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{first.port}: the port is already in use"):
            open_channel(pki, shift_task, port=first.port)
        # and no other server can slip in beside it with SO_REUSEPORT (gRPC's default)
        other = grpc.server(ThreadPoolExecutor(1))
        with pytest.raises(RuntimeError):
            other.add_insecure_port(f"127.0.0.1:{first.port}")
    finally:
        first.close()


def test_a_site_whose_certificate_another_ca_signed_is_told_so_and_stops(pki, deployment: Deployment):
    # the site trusts the study CA, but its own certificate comes from another CA
    tls = TlsFiles(
        ca=pki.root / "ca" / "ca.pem", cert=pki.root / "other" / "site-00.pem", key=pki.root / "other" / "site-00.key"
    )
    agent = GrpcNodeAgent(
        site="site-00",
        handler=lambda m: m.reply(error="unused"),
        address=deployment.address,
        tls=tls,
        studies=("study",),
        backoff=Backoff(initial_s=0.05, max_s=0.1),
        connect_timeout_s=5.0,
    )
    with pytest.raises(TransportError) as err:
        agent.run_forever(max_attempts=5)
    text = str(err.value)
    assert "rejected this site's certificate" in text and "not by the study CA" in text
    assert "fedcare doctor" in text and "unreachable" not in text
    assert agent.backoff.attempt == 0  # fatal at the first attempt: no retrying what cannot succeed


def test_a_failed_run_sends_its_sites_the_finished_frame_with_the_reason(tmp_path):
    # Prepare: a study whose only site refuses every instruction, so the run fails in round 1
    make_certs(tmp_path)
    study = Study(root=tmp_path, port=free_port())
    cfg = load_server_config(
        study.server_config(
            run_id="run-fails",
            store_url=f"sqlite:///{tmp_path / 'fedcare.db'}",
            rounds=2,
            sites=("cleveland",),
            min_sites=1,
            federation={"round_timeout_s": 20.0},
        )
    )
    certs = study.certs
    agent = GrpcNodeAgent(
        site="cleveland",
        handler=lambda m: m.reply(error="refused: not approved here"),
        address=f"127.0.0.1:{study.port}",
        tls=TlsFiles(ca=certs / "ca.pem", cert=certs / "cleveland.pem", key=certs / "cleveland.key"),
        studies=("heart-2026",),
        backoff=Backoff(initial_s=0.05, max_s=0.2),
        connect_timeout_s=5.0,
    )
    done = threading.Event()

    def node() -> None:
        agent.run_forever(max_attempts=200, exit_after_run=True)  # `fedcare node --once`
        done.set()

    thread = threading.Thread(target=node, daemon=True)
    thread.start()
    # Execute
    try:
        with pytest.raises(NotEnoughSitesError):
            run_server(cfg, resolve_study(cfg.study_path))
        # Assert: the node was told the run is over (with the reason) and exited on its own
        assert done.wait(10), "the site kept waiting for a coordinator that is gone"
    finally:
        agent.stop()
        thread.join(5)
    events = {e["event"]: e for e in map(json.loads, (tmp_path / "server-audit.jsonl").read_text().splitlines())}
    sent = events["finished_sent"]
    assert sent["sites"] == 1 and sent["reason"].startswith("failed: ") and "refused" in sent["reason"]
