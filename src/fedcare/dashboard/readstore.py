"""Read-only views of the run store for the dashboard and the exporters.

The database is opened read-only where the engine allows it (SQLite ``mode=ro``,
PostgreSQL ``default_transaction_read_only``), so the dashboard can never change what
the coordinator recorded. Every method returns plain JSON-ready values.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from fedcare.errors import StoreError
from fedcare.store.models import PrivacyLedgerRow, RoundRow, RunRow, SiteEventRow, SiteMetricRow

__all__ = ["RunReader", "open_read_only", "redact_url", "sqlite_file"]

_RUNS = RunRow.__table__
_ROUNDS = RoundRow.__table__
_METRICS = SiteMetricRow.__table__
_EVENTS = SiteEventRow.__table__
_LEDGER = PrivacyLedgerRow.__table__


def redact_url(url: str) -> str:
    """Hide a password in a database URL before it reaches a page, a log or an error."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (``None`` for other engines and in-memory databases)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    return None


def open_read_only(url: str) -> Engine:
    """An engine on ``url`` that cannot write: SQLite opened ``mode=ro``, PostgreSQL read-only transactions.

    Raises
    ------
    StoreError
        The SQLite file does not exist, or the database cannot be reached.
    """
    path = sqlite_file(url)
    try:
        if path is not None:
            if not path.is_file():
                raise StoreError(f"no store at {path} (run a study first, or pass --db URL)")
            engine = create_engine(f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro&uri=true")
        elif url.startswith("postgresql"):
            engine = create_engine(url, connect_args={"options": "-c default_transaction_read_only=on"})
        else:
            engine = create_engine(url)
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
    except StoreError:
        raise
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot open store {redact_url(url)}: {exc.__class__.__name__}: {exc}") from None
    except Exception as exc:  # driver import errors, bad URLs
        raise StoreError(f"cannot open store {redact_url(url)}: {exc}") from None
    if "runs" not in tables:
        engine.dispose()
        raise StoreError(f"{redact_url(url)} is not a fedcare store (no 'runs' table)")
    return engine


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite drops the zone; fedcare always writes UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat(timespec="seconds")


def _seconds(start: datetime, end: datetime | None) -> float:
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    if end is None:
        end = datetime.now(UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    return max(0.0, (end - start).total_seconds())


def participation_status(message: str, kind: str) -> str:
    """``refused``, ``dropped`` (missed a deadline) or ``failed`` for a recorded site event."""
    if kind == "refusal" or message.startswith("refused"):
        return "refused"
    if " reply within " in message:
        return "dropped"
    return "failed"


class RunReader:
    """What the dashboard shows, read from a store it cannot modify.

    Parameters
    ----------
    url : str
        SQLAlchemy URL of the run store (``sqlite:///path`` or ``postgresql+psycopg://...``).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = open_read_only(url)
        self._sites_cache: dict[str, list[str]] = {}
        with self.engine.connect() as conn:
            self._has_ledger = "privacy_ledger" in set(inspect(conn).get_table_names())

    def close(self) -> None:
        """Dispose of the connection pool."""
        self.engine.dispose()

    def _all(self, query: Any) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(query).all())  # fetchall: far faster than row by row
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read store {redact_url(self.url)}: {exc.__class__.__name__}: {exc}") from None

    # -- runs list ----------------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        """Every run, newest first, with rounds done and the sites seen.

        The sites of a finished run never change, so they are read once and kept: the
        list stays fast with hundreds of runs of many rounds.
        """
        done = {r.run_id: r.n for r in self._all(select(_ROUNDS.c.run_id, func.count().label("n")).group_by("run_id"))}
        rows = self._all(select(_RUNS).order_by(_RUNS.c.created_at.desc()))
        wanted = [r.id for r in rows if r.id not in self._sites_cache]
        found: dict[str, set[str]] = defaultdict(set)
        for chunk in (wanted[i : i + 500] for i in range(0, len(wanted), 500)):
            for table in (_METRICS, _EVENTS):
                query = select(table.c.run_id, table.c.site).where(table.c.run_id.in_(chunk)).distinct()
                for run_id, site in self._all(query):
                    found[run_id].add(site)
        for r in rows:
            if r.id not in self._sites_cache and r.status != "running":
                self._sites_cache[r.id] = sorted(found[r.id])
        return [self._run_dict(r, done.get(r.id, 0), self._sites_cache.get(r.id) or sorted(found[r.id])) for r in rows]

    @staticmethod
    def _run_dict(r: Any, rounds_done: int, sites: list[str]) -> dict[str, Any]:
        config = r.config if isinstance(r.config, dict) else {}
        return {
            "id": r.id,
            "study": str(config.get("study") or r.experiment or ""),
            "experiment": r.experiment,
            "name": r.name,
            "dataset": r.dataset,
            "strategy": r.strategy,
            "task": r.task,
            "task_hash": r.task_hash,
            "seed": r.seed,
            "status": r.status,
            "message": r.message,
            "rounds": r.rounds,
            "rounds_done": rounds_done,
            "sites": sites,
            "started": _iso(r.created_at),
            "ended": _iso(r.finished_at),
            "duration_s": round(_seconds(r.created_at, r.finished_at), 3),
        }

    # -- one run --------------------------------------------------------------------------

    def run(self, run_id: str) -> dict[str, Any] | None:
        """Everything about one run except its metric curves; ``None`` if unknown."""
        found = self._all(select(_RUNS).where(_RUNS.c.id == run_id))
        if not found:
            return None
        row = found[0]
        rounds = self._all(select(_ROUNDS).where(_ROUNDS.c.run_id == run_id).order_by(_ROUNDS.c.round_no))
        events = self._all(select(_EVENTS).where(_EVENTS.c.run_id == run_id).order_by(_EVENTS.c.id))
        fit_rounds = self._all(
            select(_METRICS.c.site, _METRICS.c.round_no)
            .where(_METRICS.c.run_id == run_id, _METRICS.c.phase == "fit")
            .distinct()
        )
        traffic = self._all(
            select(_METRICS.c.site, _METRICS.c.round_no, _METRICS.c.name, _METRICS.c.value).where(
                _METRICS.c.run_id == run_id, _METRICS.c.phase == "traffic"
            )
        )
        test = self._all(
            select(_METRICS.c.site, _METRICS.c.name, _METRICS.c.value).where(
                _METRICS.c.run_id == run_id, _METRICS.c.phase == "test"
            )
        )
        eval_sites = self._all(select(_METRICS.c.site).where(_METRICS.c.run_id == run_id).distinct())
        sites = sorted({s for (s,) in eval_sites} | {e.site for e in events})

        # who took part in which round: ok (an accepted update), refused, dropped, failed
        participation: dict[str, dict[int, str]] = {s: {} for s in sites}
        for site, round_no in fit_rounds:
            if round_no > 0:
                participation[site][round_no] = "ok"
        for e in events:
            participation.setdefault(e.site, {})[e.round_no] = participation_status(e.message, e.kind)
        per_round_bytes: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
        per_site_bytes: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for site, round_no, name, value in traffic:
            i = 0 if name == "bytes_to_site" else 1
            per_round_bytes[round_no][i] += value
            per_site_bytes[site][i] += value
        tests: dict[str, dict[str, float]] = defaultdict(dict)
        for site, name, value in test:
            tests[site][name] = value
        out = self._run_dict(row, len(rounds), sites)
        out["config"] = row.config if isinstance(row.config, dict) else {}
        out["rounds_list"] = [
            {
                "round_no": r.round_no,
                "n_sampled": r.n_sampled,
                "n_succeeded": r.n_succeeded,
                "duration_s": r.duration_s,
                "fit_metrics": r.fit_metrics or {},
                "eval_metrics": r.eval_metrics or {},
                "bytes_to_sites": int(per_round_bytes[r.round_no][0]),
                "bytes_from_sites": int(per_round_bytes[r.round_no][1]),
                "finished_at": _iso(r.finished_at),
            }
            for r in rounds
        ]
        out["events"] = [
            {
                "round_no": e.round_no,
                "site": e.site,
                "kind": participation_status(e.message, e.kind),
                "message": e.message,
                "time": _iso(e.created_at),
            }
            for e in events
        ]
        out["participation"] = {s: {str(k): v for k, v in sorted(p.items())} for s, p in participation.items()}
        out["bytes"] = {
            "to_sites": int(sum(v[0] for v in per_site_bytes.values())),
            "from_sites": int(sum(v[1] for v in per_site_bytes.values())),
            "per_site": {s: {"to_site": int(v[0]), "from_site": int(v[1])} for s, v in sorted(per_site_bytes.items())},
        }
        out["round_time_s"] = round(sum(r.duration_s for r in rounds), 3)
        out["test_metrics"] = {s: dict(sorted(m.items())) for s, m in sorted(tests.items())}
        out["privacy"] = self.privacy(run_id)
        return out

    def privacy(self, run_id: str) -> dict[str, dict[str, Any]]:
        """ε spent per site in this run, from the privacy ledger kept in this store (simulation).

        A deployed site keeps its ledger at the site; the coordinator's store then holds
        nothing and the site console shows it instead.
        """
        if not self._has_ledger:
            return {}
        rows = self._all(select(_LEDGER).where(_LEDGER.c.run_id == run_id).order_by(_LEDGER.c.id))
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            entry = out.setdefault(
                r.site,
                {"epsilon_run": 0.0, "epsilon_total": 0.0, "delta": r.delta, "mechanism": r.mechanism, "rounds": 0},
            )
            entry["epsilon_run"] = max(entry["epsilon_run"], r.epsilon_run)
            entry["epsilon_total"] = r.epsilon_total
            entry["rounds"] += 1
            entry["accountant"] = r.accountant
        return dict(sorted(out.items()))

    def metrics(self, run_id: str) -> dict[str, Any]:
        """Curves: ``per_site[phase][metric][site] = [[round, value], ...]`` and the round aggregates.

        ``num_examples`` is left out (it is a count, not a curve); the final test metrics
        are in :meth:`run`.
        """
        c = _METRICS.c
        rows = self._all(
            select(c.phase, c.name, c.site, c.round_no, c.value)
            .where(c.run_id == run_id, c.phase != "test", c.name != "num_examples")
            .order_by(c.phase, c.name, c.site, c.round_no)
        )
        per_site: dict[str, dict[str, dict[str, list[list[float]]]]] = {}
        key, points = None, None
        for phase, name, site, round_no, value in rows:  # sorted: one dict lookup per curve, not per point
            if (phase, name, site) != key:
                key = (phase, name, site)
                points = per_site.setdefault(phase, {}).setdefault(name, {}).setdefault(site, [])
            points.append([round_no, value])  # type: ignore[union-attr]
        aggregate: dict[str, dict[str, list[list[float]]]] = {"fit": {}, "eval": {}}
        rounds = self._all(
            select(_ROUNDS.c.round_no, _ROUNDS.c.fit_metrics, _ROUNDS.c.eval_metrics)
            .where(_ROUNDS.c.run_id == run_id)
            .order_by(_ROUNDS.c.round_no)
        )
        for round_no, fit, ev in rounds:
            for phase, values in (("fit", fit or {}), ("eval", ev or {})):
                for name, value in values.items():
                    if isinstance(value, int | float):
                        aggregate[phase].setdefault(name, []).append([round_no, value])
        return {"run_id": run_id, "per_site": per_site, "aggregate": aggregate}

    def version(self, run_id: str) -> dict[str, Any] | None:
        """A cheap fingerprint of the run's progress (what the live page watches)."""
        found = self._all(select(_RUNS.c.status).where(_RUNS.c.id == run_id))
        if not found:
            return None
        (n_rounds,) = self._all(select(func.count()).select_from(_ROUNDS).where(_ROUNDS.c.run_id == run_id))[0]
        (n_events,) = self._all(select(func.count()).select_from(_EVENTS).where(_EVENTS.c.run_id == run_id))[0]
        return {"status": found[0].status, "rounds_done": n_rounds, "events": n_events}
