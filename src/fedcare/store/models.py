"""SQLAlchemy tables: runs, rounds, per-site metrics, site events, results, checkpoints, privacy ledger."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "CheckpointRow",
    "ExchangeRow",
    "PrivacyLedgerRow",
    "RoundRow",
    "RunResultRow",
    "RunRow",
    "SiteEventRow",
    "SiteMetricRow",
]


class Base(DeclarativeBase):
    """Declarative base of the fedcare schema."""


class RunRow(Base):
    """One run: a federated training, or a baseline setting of an experiment."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    experiment: Mapped[str] = mapped_column(String(64), index=True, default="")
    name: Mapped[str] = mapped_column(String(200))
    dataset: Mapped[str] = mapped_column(String(200))
    strategy: Mapped[str] = mapped_column(String(100))
    task: Mapped[str] = mapped_column(String(100))
    task_hash: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    rounds: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(20), default="running")
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RoundRow(Base):
    """One completed round of a run."""

    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("run_id", "round_no"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round_no: Mapped[int] = mapped_column(Integer)
    n_sampled: Mapped[int] = mapped_column(Integer)
    n_succeeded: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float)
    fit_metrics: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    eval_metrics: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SiteMetricRow(Base):
    """One metric of one site in one round (phase ``fit``, ``eval``, ``test`` or ``traffic``).

    ``traffic`` holds ``bytes_to_site`` and ``bytes_from_site``: the array bytes the
    coordinator sent to and received from the site in that round.
    """

    __tablename__ = "site_metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round_no: Mapped[int] = mapped_column(Integer)
    site: Mapped[str] = mapped_column(String(200))
    phase: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)


class SiteEventRow(Base):
    """A refusal, failure, rejected update or missed deadline at a site."""

    __tablename__ = "site_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round_no: Mapped[int] = mapped_column(Integer)
    site: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ExchangeRow(Base):
    """One exchange with the sites: a fit or evaluate phase, a SecAgg stage, or a query.

    Not a foreign key to ``runs``: a statistics query or the moments query of federated
    standardisation happens before (or without) a training run.
    """

    __tablename__ = "exchanges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    round_no: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(100), default="")
    sent: Mapped[list[str]] = mapped_column(JSON, default=list)
    answered: Mapped[list[str]] = mapped_column(JSON, default=list)
    failures: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    details: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    duration_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RunResultRow(Base):
    """A named result of a run that per-site numbers cannot give back (JSON).

    Keys in use: ``context`` (what the experiment was: data set provenance, site
    names in order, task parameters, the experiment's settings) and ``evaluation``
    (pooled-test metrics, calibration, subgroups, uncertainty), so that a report is
    built from the store alone.
    """

    __tablename__ = "run_results"
    __table_args__ = (UniqueConstraint("run_id", "key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    key: Mapped[str] = mapped_column(String(100))
    value: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CheckpointRow(Base):
    """The server state after a round: a safetensors blob and its sha256."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("run_id", "round_no"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    round_no: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PrivacyLedgerRow(Base):
    """One charge to a site's privacy budget, with everything needed to recompute ε.

    Keyed by site and study (the budget scope), not by a foreign key to ``runs``: a
    deployed node keeps its ledger in its own store, where the run is not recorded.
    """

    __tablename__ = "privacy_ledger"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    site: Mapped[str] = mapped_column(String(200), index=True)
    study: Mapped[str] = mapped_column(String(200), index=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    round_no: Mapped[int] = mapped_column(Integer)
    mechanism: Mapped[str] = mapped_column(String(40))
    noise_multiplier: Mapped[float] = mapped_column(Float)
    sample_rate: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    delta: Mapped[float] = mapped_column(Float)
    accountant: Mapped[str] = mapped_column(String(20))
    accountant_version: Mapped[str] = mapped_column(String(60))
    epsilon_round: Mapped[float] = mapped_column(Float)
    epsilon_run: Mapped[float] = mapped_column(Float)
    epsilon_total: Mapped[float] = mapped_column(Float)
    details: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
