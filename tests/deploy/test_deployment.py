"""One server and three sites as real processes on 127.0.0.1 (gRPC + mutual TLS), heart disease.

The module's node processes stay up across tests and reconnect to each new server
(exponential backoff), so the tests run in file order: the large site SIGKILLed in the
first dropout run is restarted and must rejoin before the second run can start (its
server waits for all four sites).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
from tests.deploy.deploy_helpers import FIT_CONFIG, SITES, Study, wait_until

from fedcare.datasets import load_builtin
from fedcare.runtime.simulation import run_simulation
from fedcare.store import SqlStore
from fedcare.store.audit import verify_audit_log
from fedcare.strategies.fedavg import FedAvg
from fedcare.tasks import make_task
from fedcare.types import RunId, SiteId

pytestmark = [pytest.mark.grpc, pytest.mark.slow]


def _store_url(backend: str, study: Study, request: pytest.FixtureRequest) -> str:
    if backend == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{study.root / 'server.db'}"


def _entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _audit_has(path: Path, **match: object) -> bool:
    if not path.exists():
        return False
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if all(entry.get(k) == v for k, v in match.items()):
            return True
    return False


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_site_killed_mid_round_is_dropped_and_a_restarted_site_rejoins(
    study: Study, backend: str, request: pytest.FixtureRequest
):
    # Prepare: a fourth site, and local training long enough (many epochs) to kill a site during it
    url = _store_url(backend, study, request)
    run_id = f"dropout-{backend}"
    victim = "va-long-beach"
    config = study.server_config(
        run_id=run_id, store_url=url, rounds=3, sites=(*SITES, victim), fit_config={**FIT_CONFIG, "local_epochs": 150}
    )
    audit = study.root / f"audit-{victim}.jsonl"
    nodes = study.nodes  # type: ignore[attr-defined]
    if victim not in nodes:
        nodes[victim] = study.node(victim)
    # else: the site was SIGKILLed by the previous run and restarted; this server waits for all four,
    # so the run only starts once the restarted site has rejoined
    node = nodes[victim]
    # Execute: SIGKILL the large site while it trains in round 2
    server = study.server(config, run_id)
    wait_until(
        lambda: _audit_has(audit, event="received", kind="fit", run_id=run_id, round_no=2),
        150,
        f"{victim} to receive round 2",
        poll_s=0.01,
    )
    node.send_signal(signal.SIGKILL)
    node.wait()
    assert server.wait(timeout=150) == 0, study.log(f"server-{run_id}.log")[-3000:]
    if backend == "sqlite":
        nodes[victim] = study.node(victim)  # restarted: the postgres run waits for it to rejoin
    # Assert: round 2 completed with the three others; the victim's failure is on record
    assert not _audit_has(audit, event="sent", kind="fit", run_id=run_id, round_no=2)
    store = SqlStore(url)
    rounds = store.rounds(run_id)
    assert [r.round_no for r in rounds] == [1, 2, 3]
    assert (rounds[0].n_sampled, rounds[0].n_succeeded) == (4, 4)
    assert (rounds[1].n_sampled, rounds[1].n_succeeded) == (4, 3)
    events = [e for e in store.site_events(run_id) if e.round_no == 2]
    assert [e.site for e in events] == [victim]
    assert "disconnected" in events[0].message
    assert rounds[2].n_sampled == 3
    assert store.get_run(run_id).status == "completed"
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_server_sigkill_resumes_and_matches_simulation(study: Study, backend: str, request: pytest.FixtureRequest):
    # Prepare
    url = _store_url(backend, study, request)
    run_id = f"resume-{backend}"
    rounds = 8
    config = study.server_config(run_id=run_id, store_url=url, rounds=rounds)
    data = load_builtin("heart-disease")
    task = make_task("logreg", n_features=data.n_features)
    sim = run_simulation(
        sites={SiteId(s): data.sites[SiteId(s)] for s in SITES},
        task=task,
        strategy=FedAvg(fit_config=FIT_CONFIG),
        rounds=rounds,
        seed=7,
        run_id=RunId("sim"),
        min_sites=2,
    )
    store = SqlStore(url, checkpoint_dir=study.root / "unused")
    # Execute: SIGKILL the server once round 2 is stored, then start it again
    first = study.server(config, f"{run_id}-1")
    wait_until(lambda: len(store.rounds(run_id)) >= 2, 150, f"round 2 of {run_id}", poll_s=0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_at_kill = len(store.rounds(run_id))
    assert done_at_kill < rounds, "the run finished before the kill; nothing was resumed"
    assert store.get_run(run_id).status == "running"
    second = study.server(config, f"{run_id}-2")
    assert second.wait(timeout=150) == 0, study.log(f"server-{run_id}-2.log")[-3000:]
    # Assert: rounds and metrics continuous, each round once; same model as the simulation
    stored = store.rounds(run_id)
    assert [r.round_no for r in stored] == list(range(1, rounds + 1))
    assert all(r.n_succeeded == 3 for r in stored)
    assert store.get_run(run_id).status == "completed"
    assert "resuming run" in study.log(f"server-{run_id}-2.log")
    evals = {(m.round_no, m.site) for m in store.site_metrics(run_id, "eval") if m.name == "auc"}
    assert evals == {(r, s) for r in range(1, rounds + 1) for s in SITES}
    for row, ref in zip(stored, sim.rounds, strict=True):
        assert row.eval_metrics["auc"] == pytest.approx(ref.eval_metrics["auc"], abs=1e-6)
        assert row.eval_metrics["loss"] == pytest.approx(ref.eval_metrics["loss"], rel=1e-5)
    done, state = store.latest_checkpoint(RunId(run_id))
    assert done == rounds
    for name, ref in sim.state.model.items():
        np.testing.assert_allclose(state.model[name], ref, rtol=1e-5, atol=1e-6)
    # the server wrote the run's report from the store when it ended: the final round's numbers
    summary = json.loads((study.root / "reports" / run_id / "summary.json").read_text())
    (setting,) = summary["settings"].values()
    last = {m.site: m.value for m in store.site_metrics(run_id, "eval") if m.round_no == rounds and m.name == "auc"}
    assert {s: m["auc"] for s, m in setting["per_site"].items()} == last
    assert list(summary["sites"]) == list(SITES) and (study.root / "reports" / run_id / "report.html").exists()
    store.close()
    # the audit trails of both sides verify
    for path in [study.root / "server-audit.jsonl", *(study.root / f"audit-{s}.jsonl" for s in SITES)]:
        report = verify_audit_log(path)
        assert report.ok, (path, report.problem)
    # and each site's log holds every head the coordinator recorded from its replies
    for site in SITES:
        report = verify_audit_log(study.root / f"audit-{site}.jsonl", anchors=study.root / "server-audit.jsonl")
        assert report.ok and report.anchors >= rounds, (site, report)
    # and they agree record for record (name, size, BLAKE3 of the bytes) on every model that crossed
    server = _entries(study.root / "server-audit.jsonl")
    for site in SITES:
        log = _entries(study.root / f"audit-{site}.jsonl")
        sent_here = {e["message_id"]: e["records"] for e in server if e["event"] == "sent" and e.get("site") == site}
        got_there = {e["message_id"]: e["records"] for e in log if e["event"] == "received" and e.get("records")}
        assert got_there and all(sent_here[m] == r for m, r in got_there.items()), site
        sent_there = {e["reply_to"]: e["records"] for e in log if e["event"] == "sent" and e["records"]}
        got_here = {e["reply_to"]: e["records"] for e in server if e["event"] == "received" and e.get("site") == site}
        matched = [m for m in sent_there if m in got_here]  # a reply to a SIGKILLed server was never received
        assert len(matched) >= rounds and all(got_here[m] == sent_there[m] for m in matched), site
