"""The site console's API: instructions with their outcome, what left, ε against the budget, audit verify."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from tests.dashboard.site_helpers import APPROVED, BUDGET, SITE, UNAPPROVED, build_site

from fedcare.dashboard.site_console import create_console_app
from fedcare.errors import ConfigError


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    config = build_site(root)
    with TestClient(create_console_app(config)) as c:
        yield c, root


def test_site_shows_policy_approved_hashes_and_an_intact_chain(site):
    client, _ = site
    s = client.get("/api/site").json()
    assert s["site"] == SITE and s["studies"] == ["cardio"] and s["approved_task_hashes"] == [APPROVED]
    assert s["policy"]["max_epsilon"] == BUDGET
    assert s["audit"]["ok"] is True and s["audit"]["entries"] == 16


def test_every_instruction_is_listed_with_what_the_site_did(site):
    client, _ = site
    items = client.get("/api/instructions").json()["instructions"]
    fits = [i for i in items if i["kind"] == "fit"]
    assert [(i["run_id"], i["round_no"], i["outcome"]) for i in fits] == [
        ("run-2", 1, "refused"),
        ("run-1", 2, "executed"),
        ("run-1", 1, "executed"),
    ]
    refused = fits[0]
    assert refused["task_hash"] == UNAPPROVED and refused["hash_approved"] is False
    assert "is not approved by this site" in refused["reason"]
    assert fits[1]["bytes_in"] == 56 and fits[1]["hash_approved"] is True
    assert any(i["kind"] == "run_finished" for i in items)
    # three retries in a row are one row with a count
    assert [(i["kind"], i["count"]) for i in items if i["kind"] == "connection_failed"] == [("connection_failed", 3)]


def test_outgoing_lists_kind_size_and_digest_of_each_reply(site):
    client, _ = site
    out = client.get("/api/outgoing").json()["outgoing"]
    assert [(o["round_no"], o["error"], o["bytes"]) for o in out] == [(1, True, 0), (2, False, 56), (1, False, 56)]
    assert out[1]["records"] == [{"name": "model", "size": 56, "blake3": "6" * 64}]


def test_privacy_spent_against_budget_per_run(site):
    client, _ = site
    p = client.get("/api/privacy").json()
    assert p["budget"] == BUDGET and 0 < p["spent"] < BUDGET
    assert p["per_run"]["run-1"]["rounds"] == 2 and len(p["entries"]) == 2
    assert p["entries"][0]["epsilon_total"] == p["spent"] > p["entries"][1]["epsilon_total"]
    runs = {r["run_id"]: r for r in client.get("/api/runs").json()["runs"]}
    assert runs["run-1"]["executed"] == 2 and runs["run-1"]["finished"] and runs["run-1"]["epsilon"] == p["spent"]
    assert (
        runs["run-2"]["refused"] == 1 and runs["run-2"]["hash_approved"] is False and runs["run-2"]["epsilon"] is None
    )


def test_a_tampered_log_fails_audit_verify_in_the_console(site):
    client, root = site
    log = root / "audit.jsonl"
    original = log.read_text()
    try:
        log.write_text(original.replace('"duration_s":0.25', '"duration_s":0.5', 1))
        a = client.get("/api/audit").json()
        assert a["ok"] is False and "edited" in a["problem"]
    finally:
        log.write_text(original)
    assert client.get("/api/audit").json()["ok"] is True


def test_unknown_endpoint_is_json_404_and_page_renders(site):
    client, _ = site
    r = client.get("/api/nope")
    assert r.status_code == 404 and r.json()["error"] == "no such endpoint /api/nope"
    page = client.get("/")
    assert page.status_code == 200 and "/static/console.js" in page.text


def test_a_bad_site_config_is_a_one_line_error(tmp_path):
    bad = tmp_path / "site.toml"
    bad.write_text("[site]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="site.toml"):
        create_console_app(bad)
