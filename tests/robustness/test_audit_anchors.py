"""Audit anchors are checked against the identity the coordinator recorded, not the log's own claim."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import fedcare.cli.deploy  # noqa: F401  (registers the commands)
from fedcare.cli.app import app
from fedcare.store.audit import AuditLog, verify_audit_log


def _anchored(tmp_path):
    """site-a's log and the coordinator's, which recorded site-a's head (by certificate CN) after each reply."""
    site = AuditLog(tmp_path / "site" / "audit.jsonl", actor="site-a")
    server = AuditLog(tmp_path / "server" / "audit.jsonl", actor="server")
    for round_no in (1, 2, 3):
        site.append("received", kind="fit", round_no=round_no)
        site.append("sent", kind="fit", round_no=round_no)
        server.append("received", site="site-a", round_no=round_no, site_audit_head=site.head)
    site.close()
    server.close()
    return site.path, server.path


def _rewrite(path, actor, keep):
    """Rebuild ``path`` as a new, self-consistent chain of the first ``keep`` entries under ``actor``."""
    entries = [json.loads(line) for line in path.read_text().splitlines()][:keep]
    path.unlink()
    path.with_name(path.name + ".head").unlink()
    forged = AuditLog(path, actor=actor)
    for e in entries:
        forged.append(
            e["event"], **{k: v for k, v in e.items() if k not in {"seq", "time", "actor", "event", "prev", "hash"}}
        )
    forged.close()


def test_an_emptied_site_log_fails(tmp_path):
    site, server = _anchored(tmp_path)
    assert verify_audit_log(site, anchors=server).ok
    site.write_text("")
    site.with_name("audit.jsonl.head").unlink()
    assert verify_audit_log(site).ok  # on its own, an empty log is a valid (empty) chain
    report = verify_audit_log(site, anchors=server)
    assert not report.ok and "empty" in report.problem
    named = verify_audit_log(site, anchors=server, site="site-a")
    assert not named.ok and "removed" in named.problem
    cli = CliRunner().invoke(app, ["audit", "verify", str(site), "--anchors", str(server), "--site", "site-a"])
    assert cli.exit_code == 1 and "removed" in cli.output


def test_a_log_re_chained_under_a_slightly_different_actor_fails(tmp_path):
    site, server = _anchored(tmp_path)
    _rewrite(site, "site-a ", keep=2)  # round 1 only, and an actor name the coordinator never recorded
    assert verify_audit_log(site).ok
    report = verify_audit_log(site, anchors=server)
    assert not report.ok and "recorded no heads of site 'site-a '" in report.problem and "site-a" in report.problem
    named = verify_audit_log(site, anchors=server, site="site-a")
    assert not named.ok and "claim actor 'site-a '" in named.problem


def test_a_log_shorter_than_the_anchors_fails(tmp_path):
    site, server = _anchored(tmp_path)
    lines = site.read_text().splitlines()[:3]  # the coordinator anchored entries 2, 4 and 6
    site.write_text("\n".join(lines) + "\n")
    site.with_name("audit.jsonl.head").write_text(json.dumps({"seq": 3, "hash": json.loads(lines[-1])["hash"]}))
    assert verify_audit_log(site).ok  # a consistent, shorter chain
    report = verify_audit_log(site, anchors=server)
    assert not report.ok and "recorded entry 4" in report.problem and "removed" in report.problem


def test_the_intact_log_passes_with_every_anchor_checked(tmp_path):
    site, server = _anchored(tmp_path)
    report = verify_audit_log(site, anchors=server, site="site-a")
    assert report.ok and report.anchors == 3
    cli = CliRunner().invoke(app, ["audit", "verify", str(site), "--anchors", str(server)])
    assert cli.exit_code == 0 and "3 heads recorded by the coordinator match" in cli.output


def test_an_emptied_log_with_its_head_left_is_not_restarted_as_new(tmp_path):
    from fedcare.errors import StoreError

    site, _ = _anchored(tmp_path)
    site.write_text("")  # the head still records entry 6
    with pytest.raises(StoreError, match="truncated"):
        AuditLog(site, actor="site-a")
