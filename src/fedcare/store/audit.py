"""Append-only, hash-chained audit log (JSON lines) kept by the server and by each site.

Each line is one event: ``{"seq", "time", "actor", "event", ..., "prev", "hash"}`` where
``hash = sha256(prev + canonical JSON of the entry without "hash")`` and ``prev`` is the
previous line's hash (64 zeros for the first). A sidecar ``<log>.head`` file holds the
last sequence number and hash, so deleting the final lines is detected too.
:func:`verify_audit_log` recomputes the chain and names the first broken line.

What is logged is metadata only: instruction kinds, rounds, sizes and BLAKE3 digests of
what left or arrived, refusals and their reasons. Never data, never keys.

Anchors: someone who can rewrite the whole file AND its head can forge a consistent
chain. So each reply a site sends carries its log's head (``seq:hash`` just after the
"sent" entry), and the coordinator records it in its own log; ``verify_audit_log(site
log, anchors=coordinator log)`` then fails if any entry the coordinator saw was later
rewritten or removed. A crash between writing a line and its head leaves the head one entry
behind; that state verifies, and the next writer repairs the head.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedcare.errors import StoreError

__all__ = ["AuditLog", "AuditReport", "verify_audit_log"]

_GENESIS = "0" * 64


def _digest(prev: str, entry: dict[str, Any]) -> str:
    body = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256((prev + body).encode()).hexdigest()


def _head_path(path: Path) -> Path:
    return path.with_name(path.name + ".head")


class AuditLog:
    """Append events to a hash-chained JSONL file (thread-safe, fsynced).

    Parameters
    ----------
    path : Path
        The log file; created with its folder. An existing log is continued after its
        chain is verified (a broken log is refused rather than extended).
    actor : str
        Who writes (``"server"`` or the site's name).

    One writer per log: the file is locked (``flock``) while this object lives, so a
    second process pointed at the same log (two nodes on one machine sharing a default
    path) is refused at start instead of interleaving entries into a broken chain.
    """

    def __init__(self, path: str | Path, *, actor: str) -> None:
        self.path = Path(path)
        self.actor = actor
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _exclusive(self.path)
        if self.path.stat().st_size > 0:
            report = verify_audit_log(self.path)
            if not report.ok:
                raise StoreError(f"audit log {self.path} fails verification: {report.problem}")
            self._seq, self._prev = report.entries, report.head
            self._write_head()  # repairs a head left one entry behind by a crash (SIGKILL)
        else:
            self._seq, self._prev = 0, _GENESIS

    def append(self, event: str, **fields: Any) -> str:
        """Write one event; return its hash."""
        with self._lock:
            entry: dict[str, Any] = {
                "seq": self._seq + 1,
                "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "actor": self.actor,
                "event": event,
                **fields,
                "prev": self._prev,
            }
            digest = _digest(self._prev, entry)
            entry["hash"] = digest
            line = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"
            with open(self.path, "a", encoding="ascii") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self._seq, self._prev = entry["seq"], digest
            self._write_head()
            return digest

    def close(self) -> None:
        """Release the log for another writer (also done when the object is collected)."""
        self._writer.close()

    @property
    def head(self) -> str:
        """``"seq:hash"`` of the last entry (what another party records as an anchor)."""
        with self._lock:
            return f"{self._seq}:{self._prev}"

    def _write_head(self) -> None:
        head = _head_path(self.path)
        tmp = head.with_name(head.name + ".tmp")
        tmp.write_text(json.dumps({"seq": self._seq, "hash": self._prev}), encoding="ascii")
        os.replace(tmp, head)


def _exclusive(path: Path) -> Any:
    """Open ``path`` for appending and hold an exclusive lock on it (POSIX; a no-op elsewhere)."""
    fh = open(path, "a", encoding="ascii")  # noqa: SIM115 - held for the log's lifetime
    if sys.platform != "win32":
        import fcntl

        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            why = "the server and each site need a log of their own"
            raise StoreError(f"audit log {path} is already open for writing elsewhere: {why}") from None
    return fh


@dataclass(frozen=True)
class AuditReport:
    """Outcome of :func:`verify_audit_log`."""

    ok: bool
    entries: int
    head: str
    problem: str = ""
    anchors: int = 0  # anchors from another party's log that were checked


def verify_audit_log(path: str | Path, *, anchors: str | Path | None = None) -> AuditReport:
    """Recompute the chain of ``path``; report the first edited, deleted or reordered line.

    With ``anchors`` (the coordinator's log), also check every head of this log that the
    coordinator recorded (``site_audit_head`` of its "received" entries for this log's
    actor): a log rewritten into a new, self-consistent chain fails here.
    """
    report, hashes, actor = _settled_chain(Path(path))
    if not report.ok or anchors is None:
        return report
    other, _, _ = _settled_chain(Path(anchors))
    if not other.ok:
        return AuditReport(False, report.entries, report.head, f"anchor log {anchors}: {other.problem}")
    checked = 0
    for seq, digest in _anchors_for(Path(anchors), actor):
        if seq >= len(hashes):
            return AuditReport(
                False,
                report.entries,
                report.head,
                f"the coordinator recorded entry {seq} of this log, which ends at entry {report.entries} (removed)",
            )
        if hashes[seq] != digest:
            return AuditReport(
                False,
                report.entries,
                report.head,
                f"entry {seq} differs from what the coordinator recorded (rewritten)",
            )
        checked += 1
    return AuditReport(True, report.entries, report.head, anchors=checked)


def _anchors_for(path: Path, actor: str) -> list[tuple[int, str]]:
    out = []
    for line in path.read_text(encoding="ascii").splitlines():
        entry = json.loads(line)
        anchor = entry.get("site_audit_head")
        if entry.get("event") != "received" or entry.get("site") != actor or not isinstance(anchor, str):
            continue
        seq, _, digest = anchor.partition(":")
        if seq.isdigit() and len(digest) == 64:
            out.append((int(seq), digest))
    return out


def _settled_chain(path: Path, attempts: int = 5) -> tuple[AuditReport, list[str], str]:
    """:func:`_verify_chain`, read again if a live writer appended between reading lines and head.

    The writer appends a line, then moves the head: a head ahead of the lines just read is
    what a concurrent append looks like. A log that was really cut short stays short.
    """
    for attempt in range(attempts):
        result = _verify_chain(path)
        if not result[0].problem.startswith(_HEAD_AHEAD) or attempt == attempts - 1:
            return result
        time.sleep(0.05)
    raise AssertionError("unreachable")


_HEAD_AHEAD = "the log ends at entry"


def _verify_chain(path: Path) -> tuple[AuditReport, list[str], str]:
    """The chain's report, every entry's hash (index = seq) and the log's actor."""
    actor = ""
    hashes = [_GENESIS]
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return AuditReport(False, 0, _GENESIS, f"cannot read {path}: {exc}"), hashes, actor
    prev, seq = _GENESIS, 0
    for lineno, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except ValueError:
            return AuditReport(False, seq, prev, f"line {lineno} is not valid JSON (edited?)"), hashes, actor
        if not isinstance(entry, dict) or "hash" not in entry:
            return AuditReport(False, seq, prev, f"line {lineno} has no hash"), hashes, actor
        claimed = entry.pop("hash")
        actor = actor or str(entry.get("actor", ""))
        if entry.get("seq") != seq + 1:
            return (
                AuditReport(False, seq, prev, f"line {lineno}: sequence {entry.get('seq')} follows {seq} (deleted?)"),
                hashes,
                actor,
            )
        if entry.get("prev") != prev:
            return (
                AuditReport(False, seq, prev, f"line {lineno}: does not chain to the previous entry (deleted?)"),
                hashes,
                actor,
            )
        if _digest(prev, entry) != claimed:
            return (
                AuditReport(False, seq, prev, f"line {lineno}: content does not match its hash (edited)"),
                hashes,
                actor,
            )
        prev, seq = claimed, seq + 1
        hashes.append(claimed)
    head_file = _head_path(path)
    if head_file.exists():
        try:
            head = json.loads(head_file.read_text(encoding="ascii"))
            head_seq, head_hash = int(head["seq"]), str(head["hash"])
        except (ValueError, KeyError, TypeError):
            return AuditReport(False, seq, prev, f"{head_file} is not a valid head record"), hashes, actor
        if head_seq > seq:
            problem = f"{_HEAD_AHEAD} {seq} but its head records entry {head_seq} (truncated)"
            return AuditReport(False, seq, prev, problem), hashes, actor
        if head_seq < seq - 1:
            return (
                AuditReport(False, seq, prev, f"{seq - head_seq} entries follow the recorded head {head_seq}"),
                hashes,
                actor,
            )
        if hashes[head_seq] != head_hash:
            return (
                AuditReport(False, seq, prev, f"entry {head_seq} does not match the recorded head hash"),
                hashes,
                actor,
            )
        # head_seq == seq - 1: a crash between writing the last line and the head (the writer repairs it)
    elif seq:
        return AuditReport(False, seq, prev, f"{head_file} is missing"), hashes, actor
    return AuditReport(True, seq, prev), hashes, actor
