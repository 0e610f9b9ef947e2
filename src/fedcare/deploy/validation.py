"""External validation at deployed sites: ``fedcare validate --bundle DIR --server server.toml``.

The coordinating centre listens (gRPC, mutual TLS, allow-listed sites) exactly as for a
training run, waits for the new sites' nodes to dial in, announces the released model's
study and sends one ``validate`` query through the :class:`~fedcare.runtime.exchange.Exchange`
(:mod:`fedcare.build.validation`). Each node answers with sufficient statistics of the
model's scores on its own rows (suppressed at the site). The exchange is recorded in
the store (kind ``query``, name ``validate``), both sides audit every message, and the
sites are told the query run is over.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcare.build.prep import StudyChannel
from fedcare.build.validation import VALIDATE_QUERY, collect_validation
from fedcare.deploy.stats import await_sites
from fedcare.errors import NotEnoughSitesError
from fedcare.runtime.exchange import Exchange
from fedcare.store.audit import AuditLog
from fedcare.store.sql import SqlStore
from fedcare.study.spec import StudySpec
from fedcare.transport.grpc_server import GrpcChannel, StudyInfo
from fedcare.transport.tls import TlsFiles
from fedcare.types import ModelState, RunId, SiteId

__all__ = ["ValidationOutcome", "serve_validation"]


@dataclass(frozen=True)
class ValidationOutcome:
    """What :func:`serve_validation` did: its run id, each site's statistics, rows left out, failures."""

    run_id: str
    statistics: dict[str, dict[str, Any]]
    left_out: dict[str, int] = field(default_factory=dict)
    failures: dict[SiteId, str] = field(default_factory=dict)


def serve_validation(
    *,
    listen: str,
    tls: TlsFiles,
    allowed_sites: Sequence[str],
    study: StudySpec,
    model: ModelState,
    preprocessing: Mapping[str, Any],
    task: str,
    task_hash: str,
    min_cell: int,
    store_url: str,
    audit_log: Path,
    wait_for_sites: int,
    wait_timeout_s: float,
    timeout_s: float,
    min_sites: int = 1,
    run_id: str | None = None,
    on_listening: Callable[[int], None] | None = None,
) -> ValidationOutcome:
    """Serve the validating sites, run one ``validate`` query, record it; return the statistics.

    Raises
    ------
    NotEnoughSitesError
        Fewer than ``min_sites`` sites joined within ``wait_timeout_s`` or answered.
    """
    run = RunId(run_id or f"validate-{uuid.uuid4().hex[:12]}")
    store = SqlStore(store_url)
    audit = AuditLog(audit_log, actor="server")
    try:
        names = {"study": study.name, "study_hash": study.hash, "task_hash": task_hash}
        audit.append("query_start", run_id=run, query=VALIDATE_QUERY, **names)
        channel = GrpcChannel(
            listen=listen,
            tls=tls,
            allowed_sites=allowed_sites,
            study=StudyInfo(study=study.name, run_id=run, task=task, task_hash=task_hash),
            audit=audit,
        )
        try:
            await_sites(channel, wait_for_sites, wait_timeout_s, min_sites, on_listening)
            exchange = Exchange(channel=StudyChannel(channel, study), timeout_s=timeout_s, recorder=store)
            try:
                stats, left_out, failures = collect_validation(
                    exchange,
                    run_id=run,
                    model=model,
                    preprocessing=preprocessing,
                    task=task,
                    task_hash=task_hash,
                    min_cell=min_cell,
                    min_sites=min_sites,
                )
            except NotEnoughSitesError as exc:
                audit.append("query_failed", run_id=run, query=VALIDATE_QUERY, reason=str(exc)[:500])
                channel.finish(f"failed: {exc}"[:500])
                raise
            audit.append(
                "query_done",
                run_id=run,
                query=VALIDATE_QUERY,
                released=sorted(stats),
                failures={s: why[:200] for s, why in failures.items()},
            )
            channel.finish("validation statistics released")
            return ValidationOutcome(run_id=run, statistics=stats, left_out=left_out, failures=failures)
        finally:
            channel.close()
    finally:
        audit.close()
        store.close()
