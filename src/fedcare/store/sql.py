"""SqlStore: the run store on SQLAlchemy (SQLite file by default, PostgreSQL by URL).

It implements the runtime's :class:`~fedcare.protocols.Recorder` (the one write
path) plus read queries for reports. Checkpoints are safetensors files written
atomically (temp file + rename) whose sha256 is recorded in the database and checked
on load, so a corrupted or swapped file is detected before it is used.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from fedcare.errors import StoreError
from fedcare.protocols import ExchangeReport, RoundReport, RunSpec
from fedcare.serde import decode_state, encode_state
from fedcare.store.durable import write_durably
from fedcare.store.models import (
    Base,
    CheckpointRow,
    ExchangeRow,
    PrivacyLedgerRow,
    RoundRow,
    RunResultRow,
    RunRow,
    SiteEventRow,
    SiteMetricRow,
)
from fedcare.strategies.base import ServerState
from fedcare.types import Metrics, ModelState, RunId, SiteId

__all__ = ["SqlStore", "flatten_state", "unflatten_state"]


def _now() -> datetime:
    return datetime.now(UTC)


def flatten_state(state: ServerState) -> ModelState:
    """``ServerState`` -> one flat mapping (``model/<k>``, ``extras/<name>/<k>``)."""
    flat: ModelState = {f"model/{k}": v for k, v in state.model.items()}
    for name, arrays in state.extras.items():
        flat.update({f"extras/{name}/{k}": v for k, v in arrays.items()})
    return flat


def unflatten_state(flat: ModelState) -> ServerState:
    """Inverse of :func:`flatten_state`."""
    model: ModelState = {}
    extras: dict[str, ModelState] = {}
    for key, value in flat.items():
        head, _, rest = key.partition("/")
        if head == "model":
            model[rest] = value
        elif head == "extras":
            name, _, sub = rest.partition("/")
            extras.setdefault(name, {})[sub] = value
        else:
            raise StoreError(f"checkpoint entry {key!r} is neither model/ nor extras/")
    return ServerState(model=model, extras=extras)


def _sqlite_path(url: str) -> Path | None:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///"))
    return None


def _create_tables(engine: Engine, attempts: int = 20) -> None:
    """Create missing tables; tolerate another process creating them at the same moment.

    ``create_all`` checks, then creates: two processes opening a new database together
    (nodes started side by side sharing a ledger file) can both see a table missing and
    one then fails with "already exists"; and SQLite's switch of a new file to WAL can
    answer "database is locked" at once, without waiting, while another process holds
    it. Trying again settles both.
    """
    for attempt in range(attempts):
        try:
            Base.metadata.create_all(engine)
            return
        except OperationalError as exc:
            racing = "already exists" in str(exc) or "database is locked" in str(exc)
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (1 + attempt % 5))  # let the other process finish its tables


class SqlStore:
    """Runs, rounds, metrics, site events and checkpoints in a SQL database.

    Parameters
    ----------
    url : str
        Any SQLAlchemy URL: ``sqlite:///path/fedcare.db`` (default kind) or
        ``postgresql+psycopg://user@host/db``.
    checkpoint_dir : str or Path or None (default: None)
        Where checkpoint files go. ``None``: a ``checkpoints`` folder beside a SQLite
        file; for other URLs, checkpoints are not written.
    """

    def __init__(self, url: str, *, checkpoint_dir: str | Path | None = None) -> None:
        db_path = _sqlite_path(url)
        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            if checkpoint_dir is None:
                checkpoint_dir = db_path.parent / "checkpoints"
        self.url = url
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        try:
            self.engine: Engine = create_engine(url, future=True)
            if url.startswith("sqlite"):
                event.listen(self.engine, "connect", _sqlite_pragmas)
            _create_tables(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open store {_redact(url)}: {exc.__class__.__name__}: {exc}") from None
        except Exception as exc:  # driver import errors, bad URLs
            raise StoreError(f"cannot open store {_redact(url)}: {exc}") from None
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.engine.dispose()

    # -- Recorder ---------------------------------------------------------------------

    def start_run(self, spec: RunSpec) -> None:
        """Insert the run row (status ``running``)."""
        with self._session.begin() as s:
            s.add(
                RunRow(
                    id=spec.run_id,
                    experiment=spec.experiment,
                    name=spec.name,
                    dataset=spec.dataset,
                    strategy=spec.strategy,
                    task=spec.task,
                    task_hash=spec.task_hash,
                    seed=spec.seed,
                    rounds=spec.rounds,
                    config=dict(spec.config),
                    status="running",
                    created_at=_now(),
                )
            )

    def record_round(self, run_id: RunId, report: RoundReport, state: ServerState) -> None:
        """Write the round, its per-site metrics and events, and checkpoint ``state``."""
        checkpoint = self._write_checkpoint(run_id, report.round_no, state)
        with self._session.begin() as s:
            s.add(
                RoundRow(
                    run_id=run_id,
                    round_no=report.round_no,
                    n_sampled=len(report.sampled),
                    n_succeeded=len(report.site_fit),
                    duration_s=report.duration_s,
                    fit_metrics=dict(report.fit_metrics),
                    eval_metrics=dict(report.eval_metrics),
                    finished_at=_now(),
                )
            )
            self._add_metrics(s, run_id, report.round_no, "fit", report.site_fit)
            self._add_metrics(s, run_id, report.round_no, "eval", report.site_eval)
            sent, received = report.bytes_to_site, report.bytes_from_site
            traffic = {
                site: {"bytes_to_site": float(sent.get(site, 0)), "bytes_from_site": float(received.get(site, 0))}
                for site in sorted(set(sent) | set(received))
            }
            self._add_metrics(s, run_id, report.round_no, "traffic", traffic)
            for site, error in report.failures.items():
                kind = "refusal" if error.startswith("refused") else "failure"
                s.add(
                    SiteEventRow(
                        run_id=run_id, round_no=report.round_no, site=site, kind=kind, message=error, created_at=_now()
                    )
                )
            if checkpoint is not None:
                s.add(checkpoint)

    def record_site_metrics(self, run_id: RunId, round_no: int, phase: str, metrics: Mapping[SiteId, Metrics]) -> None:
        """Record per-site metrics outside a round (e.g. final test metrics)."""
        with self._session.begin() as s:
            self._add_metrics(s, run_id, round_no, phase, metrics)

    def record_result(self, run_id: RunId, key: str, value: Mapping[str, Any]) -> None:
        """Record (or replace) the run's result ``key``: JSON, NaN/Inf written as null."""
        with self._session.begin() as s:
            old = s.scalars(select(RunResultRow).where(RunResultRow.run_id == run_id, RunResultRow.key == key)).first()
            if old is not None:
                s.delete(old)
                s.flush()
            s.add(RunResultRow(run_id=run_id, key=key, value=_json_safe(value), created_at=_now()))

    def finish_run(self, run_id: RunId, *, status: str, message: str = "") -> None:
        """Mark the run ``completed`` or ``failed`` with a message."""
        with self._session.begin() as s:
            row = s.get(RunRow, run_id)
            if row is None:
                raise StoreError(f"unknown run {run_id!r}")
            row.status, row.message, row.finished_at = status, message, _now()

    def record_exchange(self, report: ExchangeReport) -> None:
        """Write one exchange (fit, evaluate, SecAgg stage, statistics or moments query)."""
        with self._session.begin() as s:
            s.add(
                ExchangeRow(
                    run_id=report.run_id,
                    round_no=report.round_no,
                    kind=report.kind.value,
                    name=report.name,
                    sent=list(report.sent),
                    answered=list(report.answered),
                    failures=dict(report.failures),
                    details=dict(report.details),
                    duration_s=report.duration_s,
                    created_at=_now(),
                )
            )

    @staticmethod
    def _add_metrics(s: Session, run_id: str, round_no: int, phase: str, metrics: Mapping[SiteId, Metrics]) -> None:
        for site, values in metrics.items():
            for name, value in values.items():
                s.add(
                    SiteMetricRow(
                        run_id=run_id, round_no=round_no, site=site, phase=phase, name=name, value=float(value)
                    )
                )

    # -- checkpoints ------------------------------------------------------------------

    def _write_checkpoint(self, run_id: str, round_no: int, state: ServerState) -> CheckpointRow | None:
        if self.checkpoint_dir is None:
            return None
        blob = encode_state(flatten_state(state), metadata={"run_id": run_id, "round_no": str(round_no)})
        folder = self.checkpoint_dir / run_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"round-{round_no:05d}.safetensors"
        write_durably(path, blob)
        return CheckpointRow(
            run_id=run_id,
            round_no=round_no,
            path=str(path),
            sha256=hashlib.sha256(blob).hexdigest(),
            size_bytes=len(blob),
            created_at=_now(),
        )

    def latest_checkpoint(self, run_id: RunId) -> tuple[int, ServerState] | None:
        """Return ``(round_no, state)`` of the last completed round, verified by sha256."""
        with self._session() as s:
            row = s.scalars(
                select(CheckpointRow)
                .where(CheckpointRow.run_id == run_id)
                .order_by(CheckpointRow.round_no.desc())
                .limit(1)
            ).first()
        if row is None:
            return None
        try:
            blob = Path(row.path).read_bytes()
        except OSError as exc:
            raise StoreError(f"checkpoint of run {run_id} round {row.round_no}: {exc}") from None
        if hashlib.sha256(blob).hexdigest() != row.sha256:
            raise StoreError(f"checkpoint {row.path}: sha256 mismatch, the file was modified")
        return row.round_no, unflatten_state(decode_state(blob, where=f"checkpoint {row.path}"))

    # -- reads --------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRow:
        """Return one run row."""
        with self._session() as s:
            row = s.get(RunRow, run_id)
        if row is None:
            raise StoreError(f"unknown run {run_id!r}")
        return row

    def list_runs(self, experiment: str | None = None) -> list[RunRow]:
        """All runs (of one experiment), oldest first."""
        with self._session() as s:
            q = select(RunRow).order_by(RunRow.created_at)
            if experiment is not None:
                q = q.where(RunRow.experiment == experiment)
            return list(s.scalars(q))

    def rounds(self, run_id: str) -> list[RoundRow]:
        """The run's completed rounds in order."""
        with self._session() as s:
            return list(s.scalars(select(RoundRow).where(RoundRow.run_id == run_id).order_by(RoundRow.round_no)))

    def site_metrics(self, run_id: str, phase: str | None = None) -> list[SiteMetricRow]:
        """Per-site metric rows of a run, by round."""
        with self._session() as s:
            q = select(SiteMetricRow).where(SiteMetricRow.run_id == run_id)
            if phase is not None:
                q = q.where(SiteMetricRow.phase == phase)
            return list(s.scalars(q.order_by(SiteMetricRow.round_no, SiteMetricRow.site, SiteMetricRow.name)))

    def results(self, run_id: str) -> dict[str, Any]:
        """The run's recorded results by key (see :class:`~fedcare.store.models.RunResultRow`)."""
        with self._session() as s:
            rows = s.scalars(select(RunResultRow).where(RunResultRow.run_id == run_id).order_by(RunResultRow.id))
            return {r.key: r.value for r in rows}

    def site_events(self, run_id: str) -> list[SiteEventRow]:
        """Refusals and failures recorded for a run."""
        with self._session() as s:
            return list(s.scalars(select(SiteEventRow).where(SiteEventRow.run_id == run_id).order_by(SiteEventRow.id)))

    def exchanges(self, run_id: str, kind: str | None = None) -> list[ExchangeRow]:
        """The run's exchanges with the sites (of one kind: ``"query"``, ``"fit"``...), in order."""
        with self._session() as s:
            q = select(ExchangeRow).where(ExchangeRow.run_id == run_id)
            if kind is not None:
                q = q.where(ExchangeRow.kind == kind)
            return list(s.scalars(q.order_by(ExchangeRow.id)))

    def ledger_rows(self, run_id: str) -> list[PrivacyLedgerRow]:
        """Every site's privacy-ledger charges for one run, in order (the model card's per-round DP)."""
        with self._session() as s:
            q = select(PrivacyLedgerRow).where(PrivacyLedgerRow.run_id == run_id)
            return list(s.scalars(q.order_by(PrivacyLedgerRow.round_no, PrivacyLedgerRow.site, PrivacyLedgerRow.id)))

    def summary_rows(self) -> list[dict[str, Any]]:
        """One dict per run for listings."""
        return [
            {
                "id": r.id,
                "experiment": r.experiment,
                "name": r.name,
                "dataset": r.dataset,
                "strategy": r.strategy,
                "status": r.status,
                "rounds": r.rounds,
            }
            for r in self.list_runs()
        ]


def _json_safe(value: Any) -> Any:
    """Replace NaN/Inf (not JSON; PostgreSQL refuses them) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _redact(url: str) -> str:
    """Hide a password in a database URL before it reaches a log or an error."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
