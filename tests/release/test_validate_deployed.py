"""`fedcare validate --server`: new sites answer through their nodes (gRPC + mutual TLS), as for `stats --server`.

The nodes are built from their own site files (the heart study's VA Long Beach and
Switzerland), learn the study from the query, read and check their rows with their
connectors, score them with their installed task and send back suppressed sums only.
The result equals the in-process validation of the same rows.
"""

from __future__ import annotations

import json
import threading
import tomllib
from pathlib import Path

import pytest
from tests.deploy.deploy_helpers import free_port, write_toml
from typer.testing import CliRunner

import fedcare.cli.clinic  # noqa: F401  (registers validate)
from fedcare.build.site import site_gate
from fedcare.cli.app import app
from fedcare.release.bundle import build_bundle
from fedcare.simulate import simulate_study
from fedcare.store import SqlStore
from fedcare.store.audit import AuditLog
from fedcare.study.site import load_site
from fedcare.study.spec import parse_study
from fedcare.transport.grpc_node import Backoff, GrpcNodeAgent
from fedcare.transport.tls import TlsFiles, create_ca, issue_certificate

pytestmark = pytest.mark.grpc

ROOT = Path(__file__).resolve().parents[2]
HEART = ROOT / "examples" / "heart-study"
NEW_SITES = ("va-long-beach", "switzerland")


@pytest.fixture
def released(tmp_path):
    raw = tomllib.loads((HEART / "study.toml").read_text())
    raw["federation"]["rounds"] = 1
    study = parse_study(raw, where="heart study (test)")
    store = SqlStore(f"sqlite:///{tmp_path / 'train.db'}")
    try:
        specs = [load_site(HEART / "sites" / f"{s}.toml") for s in ("cleveland", "hungary")]
        simulate_study(study, specs, recorder=store, experiment_id="exp", settings=("federated",))
        build_bundle(store, "exp", tmp_path / "bundle")
    finally:
        store.close()
    return tmp_path / "bundle"


@pytest.fixture
def nodes(tmp_path):
    certs = tmp_path / "certs"
    create_ca(certs, study="heart-validate")
    issue_certificate(certs, certs, name="hub", kind="server", hosts=("127.0.0.1", "localhost"))
    port = free_port()
    agents, threads = [], []
    for site in NEW_SITES:
        issue_certificate(certs, certs, name=site, kind="site")
        gate = site_gate(load_site(HEART / "sites" / f"{site}.toml"))  # builds its part when the study arrives
        agent = GrpcNodeAgent(
            site=site,
            handler=gate.handle,
            address=f"127.0.0.1:{port}",
            tls=TlsFiles(ca=certs / "ca.pem", cert=certs / f"{site}.pem", key=certs / f"{site}.key"),
            studies=("heart-csv",),
            audit=AuditLog(tmp_path / f"audit-{site}.jsonl", actor=site),
            backoff=Backoff(initial_s=0.05, max_s=0.3),
            connect_timeout_s=5.0,
        )
        thread = threading.Thread(target=agent.run_forever, daemon=True)
        thread.start()
        agents.append(agent)
        threads.append(thread)
    try:
        yield port, certs
    finally:
        for agent in agents:
            agent.stop()
        for thread in threads:
            thread.join(timeout=5)


def test_validate_at_deployed_nodes_equals_the_in_process_validation(released, nodes, tmp_path):
    port, certs = nodes
    server = write_toml(
        tmp_path / "server.toml",
        {
            "server": {
                "listen": f"127.0.0.1:{port}",
                "ca": str(certs / "ca.pem"),
                "cert": str(certs / "hub.pem"),
                "key": str(certs / "hub.key"),
                "allowed_sites": list(NEW_SITES),
                "wait_timeout_s": 30.0,
                "audit_log": str(tmp_path / "server-audit.jsonl"),
            },
            "store": {"url": f"sqlite:///{tmp_path / 'hub.db'}"},
        },
    )
    deployed = tmp_path / "deployed.json"
    result = CliRunner().invoke(
        app, ["validate", "--bundle", str(released), "--server", str(server), "--out", str(deployed)]
    )
    assert result.exit_code == 0, result.output
    got = json.loads(deployed.read_text())
    assert sorted(got["per_site"]) == sorted(NEW_SITES)
    # the same rows validated in this process (the outcome as the study defines it: num in 1..4)
    local = tmp_path / "local.json"
    sites = [a for s in NEW_SITES for a in ("--site", f"{s}={HEART / (s + '.csv')}")]
    result = CliRunner().invoke(
        app, ["validate", "--bundle", str(released), *sites, "--outcome", "num>0", "--out", str(local)]
    )
    assert result.exit_code == 0, result.output
    want = json.loads(local.read_text())
    for site in NEW_SITES:
        a, b = got["per_site"][site], want["per_site"][site]
        assert (a["n"], a["events"]) == (b["n"], b["events"])
        assert a["auc"]["value"] == pytest.approx(b["auc"]["value"], abs=1e-12, nan_ok=True)
        assert a["brier"] == pytest.approx(b["brier"], abs=1e-12) and a["ece"] == pytest.approx(b["ece"], abs=1e-12)
        assert a["drift"]["psi"] == pytest.approx(b["drift"]["psi"], abs=1e-12)
    assert got["pooled"]["auc"]["value"] == pytest.approx(want["pooled"]["auc"]["value"], abs=1e-12)
    assert 0.5 < got["pooled"]["auc"]["value"] < 1 and got["pooled"]["n"] == sum(
        want["per_site"][s]["n"] for s in NEW_SITES
    )
    # one recorded query exchange; both sides audited it
    store = SqlStore(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        (row,) = store.exchanges(got["run_id"])
    finally:
        store.close()
    assert (row.kind, row.name, row.answered, row.failures) == ("query", "validate", sorted(NEW_SITES), {})
    for site in NEW_SITES:
        log = [json.loads(x) for x in (tmp_path / f"audit-{site}.jsonl").read_text().splitlines()]
        assert [e["event"] for e in log if e.get("kind") == "query"] == ["received", "executed", "sent"]
