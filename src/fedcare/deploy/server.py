"""``fedcare server``: the coordinating centre's process.

It serves sites over :class:`~fedcare.transport.grpc_server.GrpcChannel`, waits for
them to join, and runs the very same :class:`~fedcare.runtime.coordinator.Coordinator`
the simulation runs. Its state lives in the Store (SQLite by default, PostgreSQL by
URL): the run row, every completed round with its metrics, and a checkpoint of the
strategy state (safetensors + sha256) after each round. Started again after a crash
(even SIGKILL), it finds the run, loads the last verified checkpoint and continues
with the next round; rounds are seeded by (seed, round), so the resumed run computes
exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedcare.deploy.config import ServerConfig
from fedcare.errors import NotEnoughSitesError, StoreError
from fedcare.protocols import ExchangeReport, Recorder, RoundReport, RunSpec
from fedcare.runtime.coordinator import Coordinator, RunResult
from fedcare.store.audit import AuditLog
from fedcare.store.sql import SqlStore
from fedcare.strategies.base import ServerState
from fedcare.strategies.registry import make_strategy
from fedcare.task import task_hash
from fedcare.tasks import make_task
from fedcare.transport.grpc_server import GrpcChannel, StudyInfo
from fedcare.types import RunId

__all__ = ["ServerOutcome", "run_server"]

log = logging.getLogger(__name__)


class _ResumingRecorder:
    """The Store as Recorder, except that a resumed run's row is not inserted again."""

    def __init__(self, store: SqlStore, *, exists: bool) -> None:
        self.store, self.exists = store, exists

    def start_run(self, spec: RunSpec) -> None:
        if not self.exists:
            self.store.start_run(spec)

    def record_round(self, run_id: RunId, report: RoundReport, state: ServerState) -> None:
        self.store.record_round(run_id, report, state)

    def record_result(self, run_id: RunId, key: str, value: Any) -> None:
        self.store.record_result(run_id, key, value)

    def finish_run(self, run_id: RunId, *, status: str, message: str = "") -> None:
        self.store.finish_run(run_id, status=status, message=message)

    def record_exchange(self, report: ExchangeReport) -> None:
        self.store.record_exchange(report)


@dataclass(frozen=True)
class ServerOutcome:
    """What :func:`run_server` did."""

    run_id: str
    status: str
    start_round: int
    result: RunResult | None


def _context(cfg: ServerConfig) -> dict[str, Any]:
    """The study's settings as the report shows them (sites in the allow-list's order)."""
    return {
        "provenance": f"deployed study {cfg.study}",
        "sites": {s: s for s in cfg.allowed_sites},
        "task_params": dict(cfg.task_params),
        "config": {
            "rounds": cfg.rounds,
            "seed": cfg.seed,
            "strategy": cfg.strategy,
            "strategy_params": dict(cfg.strategy_params),
            "fit_config": dict(cfg.fit_config),
            "fraction_fit": cfg.fraction_fit,
            "min_sites": cfg.min_sites,
            "evaluate": cfg.evaluate,
        },
    }


def run_server(
    cfg: ServerConfig,
    *,
    on_round: Any = None,
    on_listening: Any = None,
) -> ServerOutcome:
    """Run (or resume) the configured study to the end; return how it ended.

    Raises
    ------
    NotEnoughSitesError
        Fewer than ``min_sites`` sites joined within ``wait_timeout_s``, or a round
        ended with fewer valid updates than the minimum (recorded as failed).
    """
    task = make_task(cfg.task, **dict(cfg.task_params))
    digest = task_hash(task)
    strategy = make_strategy(cfg.strategy, fit_config=dict(cfg.fit_config), **dict(cfg.strategy_params))
    store = SqlStore(cfg.store_url, checkpoint_dir=cfg.checkpoint_dir)
    audit = AuditLog(cfg.audit_log, actor="server")
    try:
        exists, state, start_round = False, None, 1
        try:
            row = store.get_run(cfg.run_id)
            exists = True
        except StoreError:
            row = None
        if row is not None:
            if row.task_hash != digest:
                raise StoreError(
                    f"run {cfg.run_id} was started with task hash {row.task_hash}, the config now gives {digest}"
                )
            if row.status == "completed":
                log.warning("run %s is already completed; nothing to do", cfg.run_id)
                return ServerOutcome(cfg.run_id, "completed", row.rounds + 1, None)
            latest = store.latest_checkpoint(RunId(cfg.run_id))
            if latest is not None:
                done, state = latest
                start_round = done + 1
            audit.append("resume", run_id=cfg.run_id, start_round=start_round)
            log.warning("resuming run %s at round %d", cfg.run_id, start_round)
        study = StudyInfo(study=cfg.study, run_id=cfg.run_id, task=task.name, task_hash=digest)
        channel = GrpcChannel(
            listen=cfg.listen,
            tls=cfg.tls,
            allowed_sites=cfg.allowed_sites,
            study=study,
            chunk_bytes=cfg.chunk_bytes,
            max_message_bytes=cfg.max_message_bytes,
            audit=audit,
        )
        try:
            if on_listening is not None:
                on_listening(channel.port)
            joined = channel.wait_for_sites(cfg.wait_for_sites, timeout_s=cfg.wait_timeout_s)
            if len(joined) < cfg.min_sites:
                raise NotEnoughSitesError(
                    f"{len(joined)} site(s) joined within {cfg.wait_timeout_s:g} s, at least {cfg.min_sites} required"
                )
            log.info("sites joined: %s", ", ".join(joined))
            recorder: Recorder = _ResumingRecorder(store, exists=exists)
            coordinator = Coordinator(
                channel=channel,
                strategy=strategy,
                task_name=task.name,
                task_hash=digest,
                rounds=cfg.rounds,
                seed=cfg.seed,
                fraction_fit=cfg.fraction_fit,
                min_sites=cfg.min_sites,
                round_timeout_s=cfg.round_timeout_s,
                evaluate=cfg.evaluate,
                recorder=recorder,
                on_round=on_round,
            )
            spec = RunSpec(
                run_id=RunId(cfg.run_id),
                name=cfg.study,
                dataset=cfg.dataset,
                strategy=strategy.name,
                task=task.name,
                task_hash=digest,
                seed=cfg.seed,
                rounds=cfg.rounds,
                config={"fit_config": dict(cfg.fit_config), "study": cfg.study, "sites": list(cfg.allowed_sites)},
                experiment=cfg.study,
            )
            initial = task.init_model(np.random.default_rng(cfg.seed))
            result = coordinator.run(initial, spec=spec, state=state, start_round=start_round)
            recorder.record_result(RunId(cfg.run_id), "context", _context(cfg))  # what `fedcare report` shows
            audit.append("finished", run_id=cfg.run_id, rounds=cfg.rounds)
            channel.finish(f"completed {cfg.rounds} rounds")  # sites stop reconnecting to this run
            return ServerOutcome(cfg.run_id, "completed", start_round, result)
        except BaseException as exc:
            # A run that fails or is aborted ends like one that completes: every connected
            # site gets the Finished frame, with the reason, instead of reconnecting to a
            # coordinator that is gone (`fedcare node --once` then exits).
            why = "aborted (interrupted)" if isinstance(exc, KeyboardInterrupt) else f"failed: {exc}"
            audit.append("failed", run_id=cfg.run_id, reason=why[:500])
            channel.finish(why)
            raise
        finally:
            channel.close()
    finally:
        store.close()
