"""Cohort statistics from deployed sites over gRPC + mutual TLS, through the one exchange.

The sites are SiteNodes behind real node agents (threads, 127.0.0.1, certificates from a
study CA); the coordinator is ``fedcare stats --server`` (or ``serve_cohort_stats``).
Suppression and DP noise happen at the site, a DP release is charged to the site's own
ledger and refused past its budget, and the query is in the store and in both audit logs.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from datahelpers import HEART_SCHEMA, write_heart_csvs
from tests.deploy.deploy_helpers import free_port, write_toml
from typer.testing import CliRunner

from fedcare.cli import data as _data  # noqa: F401  (registers the commands)
from fedcare.cli.app import app
from fedcare.data.cohort import StatsQuery
from fedcare.data.config import load_site_config
from fedcare.data.connect import load_site
from fedcare.data.stats import site_aggregates
from fedcare.deploy.stats import serve_cohort_stats
from fedcare.privacy.cost import Mechanism
from fedcare.runtime.node import SiteNode
from fedcare.runtime.policy import SitePolicy
from fedcare.store.audit import AuditLog, verify_audit_log
from fedcare.store.ledger import sql_ledger
from fedcare.store.sql import SqlStore
from fedcare.task import ArrayDataset, SiteData
from fedcare.transport.grpc_node import Backoff, GrpcNodeAgent
from fedcare.transport.tls import TlsFiles, create_ca, issue_certificate
from fedcare.types import SiteId

pytestmark = pytest.mark.grpc

SITES = ("cleveland", "hungary", "switzerland")
STATS = '[stats]\nmin_count = 10\nbins = 4\n[stats.privacy]\nmechanism = "laplace"\nepsilon = 1.0\n'


class Federation:
    """Three heart sites as SiteNodes behind node agents dialling ``port``; each with ledger and audit log."""

    def __init__(self, root: Path, task, budgets: dict[str, float | None]) -> None:
        self.root, self.port = root, free_port()
        self.certs = root / "certs"
        create_ca(self.certs, study="heart-stats")
        issue_certificate(self.certs, self.certs, name="hub", kind="server", hosts=("127.0.0.1", "localhost"))
        write_heart_csvs(root)
        self.agents: list[GrpcNodeAgent] = []
        self.threads: list[threading.Thread] = []
        self.audits: dict[str, AuditLog] = {}
        self.stores: dict[str, SqlStore] = {}
        self.ledgers = {}
        self.expected = {}
        dummy = ArrayDataset(np.zeros((2, 1), np.float32), np.zeros(2))
        for i, site in enumerate(SITES):
            issue_certificate(self.certs, self.certs, name=site, kind="site")
            toml = root / f"{site}.toml"
            toml.write_text(
                f'[site]\nid = "{site}"\n[source]\nkind = "csv"\npath = "{site}.csv"\n{HEART_SCHEMA}{STATS}'
            )
            loaded = load_site(load_site_config(toml))
            cfg = loaded.config
            # what the site itself releases first, with the noise it will draw: the reference
            self.expected[site] = site_aggregates(loaded.frame, cfg.schema, cfg.stats, rng=np.random.default_rng(i))
            self.layout = cfg.stats.layout(cfg.schema)
            query = StatsQuery(
                site_id=SiteId(site),
                frame=loaded.frame,
                schema=cfg.schema,
                spec=cfg.stats,
                rng=np.random.default_rng(i),
            )
            self.stores[site] = SqlStore(f"sqlite:///{root / f'{site}-ledger.db'}")
            policy = SitePolicy(studies=frozenset({"heart-stats"}), max_epsilon=budgets.get(site))
            self.ledgers[site] = sql_ledger(self.stores[site], site=site, study="all-studies", delta=policy.delta)
            node = SiteNode(
                site_id=SiteId(site),
                task=task,
                data=SiteData(dummy, dummy),
                policy=policy,
                ledger=self.ledgers[site],
                queries=[query],
            )
            self.audits[site] = AuditLog(root / f"audit-{site}.jsonl", actor=site)
            agent = GrpcNodeAgent(
                site=site,
                handler=node.handle,
                address=f"127.0.0.1:{self.port}",
                tls=TlsFiles(ca=self.certs / "ca.pem", cert=self.certs / f"{site}.pem", key=self.certs / f"{site}.key"),
                studies=("heart-stats",),
                audit=self.audits[site],
                backoff=Backoff(initial_s=0.05, max_s=0.3),
                connect_timeout_s=5.0,
            )
            thread = threading.Thread(target=agent.run_forever, daemon=True)
            thread.start()
            self.agents.append(agent)
            self.threads.append(thread)

    def tls(self) -> TlsFiles:
        return TlsFiles(ca=self.certs / "ca.pem", cert=self.certs / "hub.pem", key=self.certs / "hub.key")

    def stop(self) -> None:
        for agent in self.agents:
            agent.stop()
        for thread in self.threads:
            thread.join(timeout=5)
        for store in self.stores.values():
            store.close()


@pytest.fixture
def federation(tmp_path, shift_task, request):
    fed = Federation(tmp_path, shift_task, getattr(request, "param", {}))
    try:
        yield fed
    finally:
        fed.stop()


def test_fedcare_stats_against_deployed_nodes_suppresses_charges_records_and_audits(federation, tmp_path):
    fed = federation
    server_toml = write_toml(
        tmp_path / "server.toml",
        {
            "server": {
                "listen": f"127.0.0.1:{fed.port}",
                "ca": str(fed.certs / "ca.pem"),
                "cert": str(fed.certs / "hub.pem"),
                "key": str(fed.certs / "hub.key"),
                "allowed_sites": list(SITES),
                "wait_timeout_s": 30.0,
                "audit_log": str(tmp_path / "server-audit.jsonl"),
            },
            "store": {"url": f"sqlite:///{tmp_path / 'hub.db'}"},
        },
    )
    study = write_toml(
        tmp_path / "study.toml",
        {
            "study": {"name": "heart-stats"},
            "task": {"name": "logreg"},
            "data": {"dataset": "heart-disease"},  # the sites' own [schema] says what the statistics cover
            "federation": {"rounds": 1, "min_sites": 3, "round_timeout_s": 30.0},
        },
    )
    out = tmp_path / "stats.json"
    result = CliRunner().invoke(
        app,
        ["stats", "--server", str(server_toml), "--study", str(study), "--config", str(tmp_path / "cleveland.toml")]
        + ["--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "3 site(s)" in result.output and "laplace epsilon=1" in result.output
    doc = json.loads(out.read_text())
    assert doc["failures"] == {}
    # suppression happened at the site: what arrived is exactly what each site computed and held back
    for site, expected in fed.expected.items():
        got = doc["sites"][site]
        assert got["n"] == expected.n
        for name, col in expected.columns.items():
            want = zip(fed.layout[name], col.cells, col.suppressed, strict=True)
            assert got["columns"][name]["cells"] == {lab: None if f else float(v) for lab, v, f in want}
    held = [c for s in doc["sites"].values() for col in s["columns"].values() for c in col["cells"].values()]
    assert None in held  # the switzerland site holds back small cells (suppressed at the site, sent as 0)
    # the DP release is charged to each site's own ledger (Laplace: basic composition, epsilon 1)
    for site in SITES:
        entries = fed.ledgers[site].entries()
        assert len(entries) == 1 and entries[0].cost.mechanism is Mechanism.STATS_LAPLACE
        assert entries[0].run_id == doc["run_id"] and entries[0].details["query"] == "cohort-stats"
        assert math.isclose(entries[0].epsilon_total, 1.0) and math.isclose(doc["epsilon"][site], 1.0)
    # the exchange is in the coordinator's store
    store = SqlStore(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        (row,) = store.exchanges(doc["run_id"])
    finally:
        store.close()
    assert (row.kind, row.name, row.answered, row.failures) == ("query", "cohort-stats", list(SITES), {})
    assert row.details["spec_hash"] and row.round_no == 0
    # and in both audit trails: the server sent and received it, each site received, executed and sent
    server_log = [json.loads(x) for x in (tmp_path / "server-audit.jsonl").read_text().splitlines()]
    for site in SITES:
        assert {"sent", "received"} <= {
            e["event"] for e in server_log if e.get("site") == site and e.get("kind") == "query"
        }
        site_log = [json.loads(x) for x in (tmp_path / f"audit-{site}.jsonl").read_text().splitlines()]
        events = [e["event"] for e in site_log if e.get("kind") == "query"]
        assert events == ["received", "executed", "sent"]
        assert next(e for e in site_log if e.get("kind") == "query")["query"] == "cohort-stats"
        report = verify_audit_log(tmp_path / f"audit-{site}.jsonl", anchors=tmp_path / "server-audit.jsonl")
        assert report.ok and report.anchors >= 1, report.problem
    assert [e for e in server_log if e["event"] == "query_done"][0]["released"] == list(SITES)


@pytest.mark.parametrize("federation", [{"hungary": 1.5}], indirect=True)
def test_a_dp_release_past_the_site_budget_is_refused_and_nothing_is_charged(federation, tmp_path):
    fed = federation
    asked = load_site_config(tmp_path / "cleveland.toml")  # the schema and release rules to ask for

    def ask(min_sites: int):
        return serve_cohort_stats(
            listen=f"127.0.0.1:{fed.port}",
            tls=fed.tls(),
            allowed_sites=SITES,
            study="heart-stats",
            schema=asked.schema,
            spec=asked.stats,
            store_url=f"sqlite:///{tmp_path / 'hub.db'}",
            audit_log=tmp_path / "server-audit.jsonl",
            wait_for_sites=3,
            wait_timeout_s=60.0,
            timeout_s=60.0,
            min_sites=min_sites,
        )

    one = ask(3)
    assert one.result.failures == {} and math.isclose(one.result.epsilon["hungary"], 1.0)
    two = ask(2)  # hungary's budget (1.5) cannot take a second release of epsilon 1
    assert sorted(two.result.stats.sites) == ["cleveland", "switzerland"]
    why = two.result.failures["hungary"]
    assert why.startswith("refused: this cohort-stats release would bring site hungary to epsilon=2.000"), why
    assert len(fed.ledgers["hungary"].entries()) == 1  # fail-closed: nothing charged, nothing released
    assert len(fed.ledgers["cleveland"].entries()) == 2
    store = SqlStore(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        (row,) = store.exchanges(two.run_id)
    finally:
        store.close()
    assert row.failures == {"hungary": why} and row.answered == ["cleveland", "switzerland"]
    site_log = [json.loads(x) for x in (tmp_path / "audit-hungary.jsonl").read_text().splitlines()]
    assert [e["event"] for e in site_log if e.get("kind") == "query"][-3:] == ["received", "refused", "sent"]
