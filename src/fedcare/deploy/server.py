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

from fedcare.build.federated import run_federated
from fedcare.build.run import build_run, build_task, run_spec
from fedcare.deploy.config import ServerConfig
from fedcare.errors import NotEnoughSitesError, StoreError
from fedcare.protocols import ExchangeReport, Recorder, RoundReport, RunSpec
from fedcare.runtime.coordinator import RunResult
from fedcare.store.audit import AuditLog
from fedcare.store.sql import SqlStore
from fedcare.strategies.base import ServerState
from fedcare.study.spec import StudySpec
from fedcare.transport.grpc_server import GrpcChannel, StudyInfo
from fedcare.types import RunId, SiteId

__all__ = ["ServerOutcome", "run_server"]

log = logging.getLogger(__name__)


class _ResumingRecorder:
    """The Store as Recorder, except that a resumed run's row is not inserted again.

    The digest peer-to-peer sites agreed on each round (``p2p_digest_round_N``) also goes
    to the server's audit log.
    """

    def __init__(self, store: SqlStore, *, exists: bool, audit: AuditLog | None = None) -> None:
        self.store, self.exists, self.audit = store, exists, audit

    def start_run(self, spec: RunSpec) -> None:
        if not self.exists:
            self.store.start_run(spec)

    def record_round(self, run_id: RunId, report: RoundReport, state: ServerState) -> None:
        self.store.record_round(run_id, report, state)

    def record_result(self, run_id: RunId, key: str, value: Any) -> None:
        self.store.record_result(run_id, key, value)
        if self.audit is not None and key.startswith("p2p_digest_round_"):
            self.audit.append("p2p_agreed", run_id=run_id, **dict(value))

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


def _context(study: StudySpec, cfg: ServerConfig) -> dict[str, Any]:
    """The study's settings as the report shows them (sites in the allow-list's order)."""
    return {
        "provenance": f"deployed study {study.name} ({study.hash})",
        "sites": {s: s for s in cfg.allowed_sites},
        "task_params": dict(study.task_params),
        "study": {"name": study.name, "hash": study.hash},
        "config": {
            "rounds": study.rounds,
            "seed": study.seed,
            "strategy": study.strategy,
            "strategy_params": dict(study.strategy_params),
            "fit_config": dict(study.fit),
            "fraction_fit": study.federation.fraction_fit,
            "min_sites": study.federation.min_sites,
            "evaluate": study.federation.evaluate,
            "privacy": dict(study.privacy),
            "secure_aggregation": study.secure_aggregation.enabled,
            "personalization": study.personalization.method,
        },
    }


def run_server(
    cfg: ServerConfig,
    study: StudySpec,
    *,
    on_round: Any = None,
    on_listening: Any = None,
) -> ServerOutcome:
    """Run (or resume) ``study`` to the end as ``cfg`` deploys it; return how it ended.

    The run is built by the same run builder as a simulation (strategy, DP wrappers,
    secure aggregation, personalisation), and sites prepare their data from statistics
    they combine through the same exchange.

    Raises
    ------
    NotEnoughSitesError
        Fewer than ``min_sites`` sites joined within ``wait_timeout_s``, or a round
        ended with fewer valid updates than the minimum (recorded as failed).
    """
    run_id = cfg.run_id or study.name
    task = build_task(study)
    plan = build_run(study, task, sites=[SiteId(s) for s in cfg.allowed_sites], experiment=run_id)
    digest = plan.task_hash
    store = SqlStore(cfg.store_url, checkpoint_dir=cfg.checkpoint_dir)
    audit = AuditLog(cfg.audit_log, actor="server")
    try:
        exists, state, start_round = False, None, 1
        try:
            row = store.get_run(run_id)
            exists = True
        except StoreError:
            row = None
        if row is not None:
            if row.task_hash != digest:
                raise StoreError(
                    f"run {run_id} was started with task hash {row.task_hash}, the study now gives {digest}"
                )
            started_with = (row.config or {}).get("study_hash")
            if started_with is not None and started_with != study.hash:
                raise StoreError(
                    f"run {run_id} was started with study hash {started_with}, {study.where} now has {study.hash}"
                )
            if row.status == "completed":
                log.warning("run %s is already completed; nothing to do", run_id)
                return ServerOutcome(run_id, "completed", row.rounds + 1, None)
            latest = store.latest_checkpoint(RunId(run_id))
            if latest is not None:
                done, state = latest
                start_round = done + 1
            audit.append("resume", run_id=run_id, start_round=start_round)
            log.warning("resuming run %s at round %d", run_id, start_round)
        audit.append("study", run_id=run_id, study=study.name, study_hash=study.hash, task=task.name, task_hash=digest)
        info = StudyInfo(study=study.name, run_id=run_id, task=task.name, task_hash=digest)
        channel = GrpcChannel(
            listen=cfg.listen,
            tls=cfg.tls,
            allowed_sites=cfg.allowed_sites,
            study=info,
            chunk_bytes=cfg.chunk_bytes,
            max_message_bytes=cfg.max_message_bytes,
            audit=audit,
        )
        try:
            if on_listening is not None:
                on_listening(channel.port)
            fed = study.federation
            wait_for = min(fed.wait_for_sites or cfg.wait_for_sites, len(cfg.allowed_sites))
            joined = channel.wait_for_sites(wait_for, timeout_s=cfg.wait_timeout_s)
            if len(joined) < fed.min_sites:
                raise NotEnoughSitesError(
                    f"{len(joined)} site(s) joined within {cfg.wait_timeout_s:g} s, at least {fed.min_sites} required"
                )
            log.info("sites joined: %s", ", ".join(joined))
            recorder: Recorder = _ResumingRecorder(store, exists=exists, audit=audit)
            spec = run_spec(plan, RunId(run_id), experiment=run_id, name=study.name)
            result = run_federated(
                plan,
                channel,
                run_id=RunId(run_id),
                spec=spec,
                recorder=recorder,
                on_round=on_round,
                state=state,
                start_round=start_round,
                close=False,
            )
            recorder.record_result(RunId(run_id), "context", _context(study, cfg))  # what `fedcare report` shows
            audit.append("finished", run_id=run_id, rounds=study.rounds)
            channel.finish(f"completed {study.rounds} rounds")  # sites stop reconnecting to this run
            return ServerOutcome(run_id, "completed", start_round, result)
        except BaseException as exc:
            # A run that fails or is aborted ends like one that completes: every connected
            # site gets the Finished frame, with the reason, instead of reconnecting to a
            # coordinator that is gone (`fedcare node --once` then exits).
            why = "aborted (interrupted)" if isinstance(exc, KeyboardInterrupt) else f"failed: {exc}"
            audit.append("failed", run_id=run_id, reason=why[:500])
            channel.finish(why)
            raise
        finally:
            channel.close()
    finally:
        store.close()
