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
        if self.path.stat().st_size > 0 or _head_path(self.path).exists():  # an emptied log keeps its head
            report = _settled_chain(self.path, attempts=1)[0]  # we hold the lock: nobody appends meanwhile
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


def _writer_active(path: Path) -> bool:
    """True when a writer holds ``path``'s lock (every :class:`AuditLog` does while it lives).

    Only then can a head ahead of the lines be an append in progress; without a writer it
    is final. Where there is no ``flock``, assume a writer may be active.
    """
    if sys.platform == "win32":
        return True
    import fcntl

    try:
        with open(path, "rb") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    except OSError:
        return False
    return False


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


def verify_audit_log(path: str | Path, *, anchors: str | Path | None = None, site: str | None = None) -> AuditReport:
    """Recompute the chain of ``path``; report the first edited, deleted or reordered line.

    With ``anchors`` (the coordinator's log), also check every head of this log that the
    coordinator recorded in its "received" entries. Those entries name the site by the
    CN of the certificate it connected with, so the site is that identity: ``site`` when
    given, else the actor the log claims, which must then be a site the coordinator
    recorded. A log that claims another actor than ``site``, mixes actors, is empty, or
    ends before an entry the coordinator anchored fails; so does a site with no anchors
    at all (there is nothing to check it against). Never raises: every problem, including
    an unreadable or malformed file, is the report's ``problem``.
    """
    report, hashes, actors = _settled_chain(Path(path))
    if not report.ok or anchors is None:
        return report

    def failed(problem: str) -> AuditReport:
        return AuditReport(False, report.entries, report.head, problem)

    other, _, _ = _settled_chain(Path(anchors))
    if not other.ok:
        return failed(f"anchor log {anchors}: {other.problem}")
    recorded = _anchors_by_site(Path(anchors))
    if len(actors) > 1:
        return failed(f"entries are written by several actors ({', '.join(sorted(actors)[:4])}): not one site's log")
    claimed = next(iter(actors), "")
    if site is not None and claimed and claimed != site:
        return failed(f"the log's entries claim actor {claimed[:80]!r}, not site {site!r}")
    identity = site if site is not None else claimed
    if not identity:
        return failed(
            "the log is empty, so it names no site; "
            "give the site (--site) to check it against the coordinator's anchors"
        )
    if identity not in recorded:
        known = ", ".join(sorted(recorded)[:10]) or "none"
        return failed(
            f"the coordinator recorded no heads of site {identity[:80]!r} (sites it recorded: {known}); "
            "nothing to check this log against"
        )
    checked = 0
    for seq, digest in recorded[identity]:
        if seq >= len(hashes):
            return failed(
                f"the coordinator recorded entry {seq} of site {identity!r}'s log, "
                f"which ends at entry {report.entries} (removed)"
            )
        if hashes[seq] != digest:
            return failed(f"entry {seq} differs from what the coordinator recorded (rewritten)")
        checked += 1
    return AuditReport(True, report.entries, report.head, anchors=checked)


def _anchors_by_site(path: Path) -> dict[str, list[tuple[int, str]]]:
    """Heads the coordinator recorded, by the site identity (certificate CN) it recorded them for.

    Only called on a log whose chain verified, so every line is a JSON object.
    """
    out: dict[str, list[tuple[int, str]]] = {}
    for line in path.read_text(encoding="ascii").splitlines():
        entry = json.loads(line)
        anchor, site = entry.get("site_audit_head"), entry.get("site")
        if entry.get("event") != "received" or not isinstance(site, str) or not isinstance(anchor, str):
            continue
        seq, _, digest = anchor.partition(":")
        if seq.isdigit() and len(seq) < 19 and len(digest) == 64:
            out.setdefault(site, []).append((int(seq), digest))
    return out


def _settled_chain(path: Path, attempts: int = 5) -> tuple[AuditReport, list[str], set[str]]:
    """:func:`_verify_chain`, read again if a live writer appended between reading lines and head.

    The writer appends a line, then moves the head: a head ahead of the lines just read is
    what a concurrent append looks like. A log that was really cut short stays short.
    """
    for attempt in range(attempts):
        result = _verify_chain(path)
        if not result[0].problem.startswith(_HEAD_AHEAD) or attempt == attempts - 1 or not _writer_active(path):
            return result
        time.sleep(0.05)
    raise AssertionError("unreachable")


_HEAD_AHEAD = "the log ends at entry"


def _verify_chain(path: Path) -> tuple[AuditReport, list[str], set[str]]:
    """The chain's report, every entry's hash (index = seq) and the actors that wrote it."""
    actors: set[str] = set()
    hashes = [_GENESIS]
    prev, seq = _GENESIS, 0

    def bad(problem: str) -> tuple[AuditReport, list[str], set[str]]:
        return AuditReport(False, seq, prev, problem), hashes, actors

    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return bad(f"cannot read {path}: {exc}")
    for lineno, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            return bad(f"line {lineno} is not valid JSON (edited?)")
        if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
            return bad(f"line {lineno} has no hash")
        claimed = entry.pop("hash")
        actors.add(str(entry.get("actor", ""))[:200])
        number = entry.get("seq")
        if type(number) is not int or number != seq + 1:
            return bad(f"line {lineno}: sequence {str(number)[:40]} follows {seq} (deleted?)")
        if entry.get("prev") != prev:
            return bad(f"line {lineno}: does not chain to the previous entry (deleted?)")
        try:
            digest = _digest(prev, entry)
        except (ValueError, RecursionError):  # e.g. a NaN or a nesting json.dumps refuses
            return bad(f"line {lineno}: content cannot be hashed (edited)")
        if digest != claimed:
            return bad(f"line {lineno}: content does not match its hash (edited)")
        prev, seq = claimed, seq + 1
        hashes.append(claimed)
    head_file = _head_path(path)
    if head_file.exists():
        try:
            head = json.loads(head_file.read_text(encoding="ascii"))
            head_seq, head_hash = head["seq"], head["hash"]
            if type(head_seq) is not int or not isinstance(head_hash, str) or head_seq < 0:
                raise TypeError
        except (OSError, ValueError, RecursionError, KeyError, TypeError, IndexError):
            return bad(f"{head_file} is not a valid head record")
        if head_seq > seq:
            return bad(f"{_HEAD_AHEAD} {seq} but its head records entry {head_seq} (truncated)")
        if head_seq < seq - 1:
            return bad(f"{seq - head_seq} entries follow the recorded head {head_seq}")
        if hashes[head_seq] != head_hash:
            return bad(f"entry {head_seq} does not match the recorded head hash")
        # head_seq == seq - 1: a crash between writing the last line and the head (the writer repairs it)
    elif seq:
        return bad(f"{head_file} is missing")
    return AuditReport(True, seq, prev), hashes, actors
