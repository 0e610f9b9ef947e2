"""The hash-chained audit log: append, verify, and detect edits, deletions and truncation."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

import fedcare.cli.deploy  # noqa: F401  (registers the commands)
from fedcare.cli.app import app
from fedcare.errors import StoreError
from fedcare.store.audit import AuditLog, verify_audit_log


def _log(tmp_path, n=5):
    log = AuditLog(tmp_path / "audit.jsonl", actor="site-a")
    for i in range(n):
        log.append("sent", kind="fit", round_no=i + 1, size=100 * i, sha256="ab" * 32)
    return log.path


def test_intact_log_verifies_and_continues(tmp_path):
    path = _log(tmp_path)
    report = verify_audit_log(path)
    assert report.ok and report.entries == 5
    AuditLog(path, actor="site-a").append("stop")
    assert verify_audit_log(path).entries == 6


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda lines: lines[:2] + [lines[2].replace('"size":200', '"size":201')] + lines[3:], "line 3: content"),
        (lambda lines: lines[:1] + lines[2:], "line 2: sequence 3 follows 1"),
        (lambda lines: lines[:-1], "truncated"),
        (lambda lines: [lines[1], lines[0], *lines[2:]], "line 1: sequence 2 follows 0"),
        (lambda lines: lines[:3] + ["not json"] + lines[4:], "line 4 is not valid JSON"),
    ],
    ids=["edited", "deleted", "truncated", "reordered", "garbled"],
)
def test_tampered_log_fails_verification(tmp_path, tamper, problem):
    path = _log(tmp_path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(tamper(lines)) + "\n")
    report = verify_audit_log(path)
    assert not report.ok
    assert problem in report.problem
    with pytest.raises(StoreError, match="fails verification"):
        AuditLog(path, actor="site-a")


def test_a_recomputed_chain_without_its_head_is_detected(tmp_path):
    path = _log(tmp_path)
    path.with_name("audit.jsonl.head").unlink()
    assert "missing" in verify_audit_log(path).problem


def test_crash_between_line_and_head_is_tolerated_and_repaired(tmp_path):
    path = _log(tmp_path, n=3)
    head = path.with_name("audit.jsonl.head")
    saved = head.read_text()
    AuditLog(path, actor="site-a").append("received")
    head.write_text(saved)  # as if SIGKILL struck after the line, before the head
    assert verify_audit_log(path).ok
    AuditLog(path, actor="site-a")
    assert json.loads(head.read_text())["seq"] == 4


def test_cli_audit_verify(tmp_path):
    path = _log(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify", str(path)])
    assert ok.exit_code == 0 and "chain intact" in ok.output
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"fit"', '"evaluate"')
    path.write_text("\n".join(lines) + "\n")
    bad = runner.invoke(app, ["audit", "verify", str(path)])
    assert bad.exit_code == 1
    assert "FAILS verification" in bad.output and "line 2" in bad.output


def _anchored_logs(tmp_path):
    """A site log and the coordinator's log recording the site's head after each reply."""
    site = AuditLog(tmp_path / "site" / "audit.jsonl", actor="site-a")
    server = AuditLog(tmp_path / "server" / "audit.jsonl", actor="server")
    for round_no in (1, 2, 3):
        site.append("received", kind="fit", round_no=round_no)
        site.append("sent", kind="fit", round_no=round_no, records=[{"name": "model", "size": 8}])
        server.append("received", site="site-a", round_no=round_no, site_audit_head=site.head)
    site.append("stop")
    return site.path, server.path


def test_anchors_catch_a_log_rewritten_into_a_new_consistent_chain(tmp_path):
    site, server = _anchored_logs(tmp_path)
    report = verify_audit_log(site, anchors=server)
    assert report.ok and report.anchors == 3
    # the site's operator drops round 2's entries and rebuilds every hash and the head
    entries = [json.loads(line) for line in site.read_text().splitlines()]
    kept = [e for e in entries if e.get("round_no") != 2]
    site.unlink()
    site.with_name("audit.jsonl.head").unlink()
    forged = AuditLog(site, actor="site-a")
    for e in kept:
        forged.append(
            e["event"], **{k: v for k, v in e.items() if k not in {"seq", "time", "actor", "event", "prev", "hash"}}
        )
    assert verify_audit_log(site).ok  # on its own, the forged chain is consistent
    report = verify_audit_log(site, anchors=server)
    assert not report.ok and "differs from what the coordinator recorded" in report.problem


def test_anchors_catch_a_log_cut_short_and_re_chained(tmp_path):
    site, server = _anchored_logs(tmp_path)
    lines = site.read_text().splitlines()[:3]  # keep round 1 only
    site.write_text("\n".join(lines) + "\n")
    site.with_name("audit.jsonl.head").write_text(json.dumps({"seq": 3, "hash": json.loads(lines[-1])["hash"]}))
    assert verify_audit_log(site).ok
    report = verify_audit_log(site, anchors=server)
    assert not report.ok and "removed" in report.problem
    cli = CliRunner().invoke(app, ["audit", "verify", str(site), "--anchors", str(server)])
    assert cli.exit_code == 1 and "removed" in cli.output


def test_a_log_read_mid_append_is_read_again_not_failed(tmp_path):
    """A verifier that reads the lines, then the head of a log whose writer appended in between."""
    import fcntl
    import threading

    path = _log(tmp_path, n=4)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # the head already names entry 4, its line is not there yet
    with open(path, "a") as writer:  # a live writer holds the log's lock, as every AuditLog does
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
        threading.Timer(0.06, lambda: path.write_text("".join(lines))).start()  # ... and then it is
        assert verify_audit_log(path).ok
    path.write_text("".join(lines[:-1]))  # cut short for good, no writer: detected at once
    started = time.monotonic()
    assert "truncated" in verify_audit_log(path).problem
    assert time.monotonic() - started < 0.05


def test_one_writer_per_log(tmp_path):
    # two nodes started with the same (default) log path would interleave entries into a broken chain
    first = AuditLog(tmp_path / "audit.jsonl", actor="site-a")
    first.append("start")
    with pytest.raises(StoreError, match=r"audit\.jsonl is already open for writing elsewhere"):
        AuditLog(tmp_path / "audit.jsonl", actor="site-b")
    first.append("stop")
    first.close()
    AuditLog(tmp_path / "audit.jsonl", actor="site-a").append("start")  # released: the next process continues it
    assert verify_audit_log(tmp_path / "audit.jsonl").entries == 3
