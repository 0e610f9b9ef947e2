"""The dashboard beside a deployed study (``fedcare server --dashboard``) and a real node's site console.

Three node processes over gRPC + mutual TLS; the dashboard is read over HTTP while the
server runs, and each site's console reads the audit log and ledger its node wrote.
"""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient
from tests.deploy.deploy_helpers import SITES, Study, free_port, wait_until

from fedcare.dashboard.site_console import create_console_app

pytestmark = [pytest.mark.grpc, pytest.mark.slow]


REFUSER = "va-long-beach"  # a fourth site whose policy approves another task: it joins and refuses


def test_dashboard_beside_the_server_shows_the_deployed_run_and_consoles_show_each_site(study: Study):
    run_id, rounds, port = "dash-deployed", 2, free_port()
    refuser = study.spawn(
        ["node", "--config", str(study.site_config(REFUSER, approved=("0" * 64,)))], f"node-{REFUSER}.log"
    )
    config = study.server_config(
        run_id=run_id, store_url=f"sqlite:///{study.root / 'dash.db'}", rounds=rounds, sites=(*SITES, REFUSER)
    )
    server = study.spawn(
        ["server", "--config", str(config), "--dashboard", "--dashboard-port", str(port)], f"server-{run_id}.log"
    )
    study.servers.append(server)
    base = f"http://127.0.0.1:{port}"
    seen: list[dict] = []

    def run_state() -> dict | None:
        try:
            r = httpx.get(f"{base}/api/runs/{run_id}", timeout=5)
        except httpx.HTTPError:
            return None
        if r.status_code == 200:
            seen.append(r.json())
            return seen[-1] if seen[-1]["status"] == "completed" or server.poll() is not None else None
        return None

    # the dashboard answers while the study runs (and stops with it)
    wait_until(lambda: run_state() or server.poll() is not None, 900, "the deployed run on the dashboard", poll_s=0.05)
    assert server.wait(timeout=300) == 0, study.log(f"server-{run_id}.log")[-3000:]
    assert seen, study.log(f"server-{run_id}.log")[-3000:]
    last = seen[-1]
    assert last["sites"] == sorted((*SITES, REFUSER)) and last["study"] == "heart-2026"
    assert last["rounds_done"] >= 1 and all(last["bytes"]["per_site"][s]["from_site"] > 0 for s in SITES)
    refusals = [e for e in last["events"] if e["kind"] == "refused"]
    assert refusals and {e["site"] for e in refusals} == {REFUSER} and "not approved" in refusals[0]["message"]
    assert last["participation"][REFUSER]["1"] == "refused"
    assert f"dashboard: http://127.0.0.1:{port}/" in study.log(f"server-{run_id}.log")
    # Each site's console: what its node did in this run, from its own audit log and ledger
    for site in SITES:
        with TestClient(create_console_app(study.site_config(site))) as console:
            assert console.get("/api/audit").json()["ok"] is True
            runs = {r["run_id"]: r for r in console.get("/api/runs").json()["runs"]}
            assert runs[run_id]["executed"] >= 2 * rounds and runs[run_id]["hash_approved"] is True
            fits = [
                i
                for i in console.get("/api/instructions").json()["instructions"]
                if i["run_id"] == run_id and i["kind"] == "fit"
            ]
            assert sorted(i["round_no"] for i in fits) == list(range(1, rounds + 1))
            assert all(i["outcome"] == "executed" and i["bytes_in"] > 0 for i in fits)
            sent = [o for o in console.get("/api/outgoing").json()["outgoing"] if o["kind"] == "fit" and o["records"]]
            assert sent and all(len(r["blake3"]) == 64 and r["size"] > 0 for o in sent for r in o["records"])
    # the refusing site's console: the refused instruction, its reason, and that nothing but an error left
    with TestClient(create_console_app(study.site_config(REFUSER, approved=("0" * 64,)))) as console:
        items = [
            i
            for i in console.get("/api/instructions").json()["instructions"]
            if i["run_id"] == run_id and i["kind"] in ("fit", "evaluate")
        ]
        assert sorted((i["kind"], i["round_no"]) for i in items) == [
            (kind, r) for kind in ("evaluate", "fit") for r in range(1, rounds + 1)
        ]
        assert all(i["outcome"] == "refused" and i["hash_approved"] is False for i in items)
        assert "not approved" in items[0]["reason"]
        assert all(o["error"] and not o["records"] for o in console.get("/api/outgoing").json()["outgoing"])
    refuser.terminate()
    refuser.wait(timeout=30)
