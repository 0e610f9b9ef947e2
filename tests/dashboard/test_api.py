"""The dashboard's JSON API and pages over a finished run: content, 404s, the token, read-only."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from tests.dashboard.helpers import REFUSING, ROUNDS, RUN, SITES, STUDY, TOKEN

from fedcare.dashboard.app import create_app
from fedcare.dashboard.web import check_bind
from fedcare.errors import ConfigError, StoreError

ENDPOINTS = ["/", f"/runs/{RUN}", "/api/runs", f"/api/runs/{RUN}", f"/api/runs/{RUN}/metrics", "/api/audit"]


@pytest.fixture(scope="module")
def client(store):
    url, audit = store
    with TestClient(create_app(url, audit_log=audit, poll_s=0.05)) as c:
        yield c


@pytest.fixture(scope="module")
def locked(store):
    url, audit = store
    with TestClient(create_app(url, token=TOKEN, audit_log=audit, poll_s=0.05)) as c:
        yield c


def test_runs_list_has_status_study_task_sites_and_rounds(client):
    runs = client.get("/api/runs").json()["runs"]
    assert [r["id"] for r in runs] == [RUN]
    run = runs[0]
    assert run["status"] == "completed" and run["study"] == STUDY and run["strategy"] == "fedavg"
    assert run["task"] == "shift" and len(run["task_hash"]) == 64
    assert run["sites"] == list(SITES) and run["rounds_done"] == run["rounds"] == ROUNDS
    assert run["started"] <= run["ended"] and run["duration_s"] >= 0


def test_run_detail_has_participation_refusals_bytes_privacy_and_audit(client):
    run = client.get(f"/api/runs/{RUN}").json()
    # every round: two updates, one refusal with the hash the site saw
    assert [(r["n_sampled"], r["n_succeeded"]) for r in run["rounds_list"]] == [(3, 2)] * ROUNDS
    for site in SITES:
        expected = "refused" if site == REFUSING else "ok"
        assert run["participation"][site] == {str(r): expected for r in range(1, ROUNDS + 1)}
    refusals = [e for e in run["events"] if e["kind"] == "refused"]
    assert len(refusals) == ROUNDS and {e["site"] for e in refusals} == {REFUSING}
    assert run["task_hash"] in refusals[0]["message"]
    # ShiftTask's model is 8 float32: 32 bytes per fit and per evaluate instruction
    assert run["bytes"]["per_site"]["site-00"] == {"to_site": ROUNDS * 64, "from_site": ROUNDS * 32}
    assert run["bytes"]["per_site"][REFUSING] == {"to_site": ROUNDS * 64, "from_site": 0}  # refuses both
    assert run["rounds_list"][0]["bytes_to_sites"] == 3 * 64
    # ε per site from the ledger, growing with each charged round; the refusing site spent nothing
    assert set(run["privacy"]) == {"site-00", "site-01"}
    assert run["privacy"]["site-00"]["rounds"] == ROUNDS
    assert run["privacy"]["site-00"]["epsilon_run"] > run["privacy"]["site-01"]["epsilon_run"] > 0  # less noise
    audit = client.get("/api/audit").json()
    assert audit["ok"] is True and audit["entries"] == 2
    assert run["config"]["fit_config"] == {"lr": 0.1}


def test_a_finished_run_is_served_from_cache_identically(client):
    first = client.get(f"/api/runs/{RUN}/metrics")
    again = client.get(f"/api/runs/{RUN}/metrics")
    assert first.content == again.content and again.headers["content-type"] == "application/json"
    assert "num_examples" not in first.json()["per_site"]["eval"]


def test_metrics_have_a_curve_per_site_and_the_aggregate(client):
    m = client.get(f"/api/runs/{RUN}/metrics").json()
    loss = m["per_site"]["eval"]["loss"]
    assert sorted(loss) == ["site-00", "site-01"]
    assert all([p[0] for p in pts] == list(range(1, ROUNDS + 1)) for pts in loss.values())
    assert [p[0] for p in m["aggregate"]["eval"]["loss"]] == list(range(1, ROUNDS + 1))
    assert set(m["per_site"]["traffic"]) == {"bytes_to_site", "bytes_from_site"}


def test_stream_of_a_finished_run_sends_its_state_then_ends(client):
    with client.stream("GET", f"/api/runs/{RUN}/stream") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    events = [block for block in body.split("\n\n") if block.startswith("event:")]
    assert events[0].startswith("event: update")
    assert json.loads(events[0].split("data: ", 1)[1]) == {"status": "completed", "rounds_done": ROUNDS, "events": 4}
    assert events[-1].startswith("event: end")


@pytest.mark.parametrize("path", ["/api/runs/nope", "/api/runs/nope/metrics", "/api/runs/nope/stream", "/api/nothing"])
def test_unknown_run_or_endpoint_is_a_json_404(client, path):
    r = client.get(path)
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert "nope" in r.json()["error"] or "nothing" in r.json()["error"]


def test_pages_render_and_an_unknown_run_page_is_404(client):
    for path in ("/", f"/runs/{RUN}"):
        r = client.get(path)
        assert r.status_code == 200 and "/static/dashboard.js" in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert "<script>" not in r.text and "http" not in r.text.split("<body", 1)[1]  # no inline code, no CDN
    assert client.get("/runs/nope").status_code == 404
    assert client.get("/static/charts.js").status_code == 200


@pytest.mark.parametrize("path", ENDPOINTS + [f"/api/runs/{RUN}/stream", "/api/runs/nope"])
def test_every_endpoint_needs_the_token(locked, path):
    locked.cookies.clear()
    missing = locked.get(path)
    assert missing.status_code == 401
    wrong = locked.get(path, headers={"Authorization": "Bearer not-the-token-at-all"})
    assert wrong.status_code == 403
    if path.startswith("/api/"):
        assert "token" in missing.json()["error"] and wrong.json()["error"] == "wrong token"
    if not path.endswith("/stream"):
        right = locked.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == (404 if "nope" in path else 200)


def test_a_page_opened_with_the_token_sets_a_cookie_and_drops_it_from_the_address(locked):
    locked.cookies.clear()
    r = locked.get(f"/?token={TOKEN}", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    assert "httponly" in r.headers["set-cookie"].lower()
    assert locked.get("/api/runs").status_code == 200  # the cookie now authorises the API calls
    locked.cookies.clear()
    assert locked.get("/static/dashboard.css").status_code == 200  # assets hold no data


def test_binding_beyond_loopback_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    with pytest.raises(ConfigError, match="refusing to serve on 0.0.0.0 without a token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        check_bind("0.0.0.0", "short")
    check_bind("0.0.0.0", TOKEN)


def test_the_store_is_opened_read_only(client, store):
    engine = client.app.state.reader.engine
    with pytest.raises(OperationalError, match="readonly"), engine.begin() as conn:
        conn.execute(text("DELETE FROM runs"))


def test_a_missing_store_is_a_one_line_error(tmp_path):
    with pytest.raises(StoreError, match="no store at"):
        create_app(f"sqlite:///{tmp_path / 'none.db'}")


def test_cli_refuses_a_public_address_without_token_and_a_missing_store(tmp_path):
    from typer.testing import CliRunner

    import fedcare.cli.dashboard  # noqa: F401  (registers the command)
    from fedcare.cli.app import app

    r = CliRunner().invoke(app, ["dashboard", "--host", "0.0.0.0", "--db", f"sqlite:///{tmp_path / 'x.db'}"])
    assert r.exit_code == 2 and "without a token" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["dashboard", "--db", f"sqlite:///{tmp_path / 'x.db'}"])
    assert r.exit_code == 7 and "no store at" in r.output
