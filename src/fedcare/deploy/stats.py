"""Cohort statistics from deployed sites: ``fedcare stats --server``.

The coordinating centre listens (gRPC, mutual TLS, allow-listed sites) exactly as for
a training run, waits for the sites' nodes to dial in, sends one ``cohort-stats``
query through the :class:`~fedcare.runtime.exchange.Exchange`, and combines the
releases. Each node answers with its own data and release rules (small-cell
suppression and DP noise applied at the site; a DP release charged to the site's
privacy ledger and refused past its budget). The exchange is recorded in the store
(``exchanges``, kind ``query``, name ``cohort-stats``) and both sides audit every
message; the server's log also records the outcome. Then the sites are told the
query run is over.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedcare.build.prep import StudyChannel
from fedcare.data.cohort import STATS_QUERY, CohortResult, collect_cohort_stats
from fedcare.data.schema import StudySchema
from fedcare.data.stats import StatsSpec
from fedcare.errors import NotEnoughSitesError
from fedcare.protocols import Channel
from fedcare.runtime.exchange import Exchange
from fedcare.store.audit import AuditLog
from fedcare.store.sql import SqlStore
from fedcare.study.spec import StudySpec
from fedcare.transport.grpc_server import GrpcChannel, StudyInfo
from fedcare.transport.tls import TlsFiles
from fedcare.types import RunId

__all__ = ["StatsOutcome", "await_sites", "serve_cohort_stats"]

log = logging.getLogger(__name__)


def await_sites(
    channel: GrpcChannel,
    wait_for: int,
    timeout_s: float,
    min_sites: int,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Wait for ``wait_for`` sites to dial in; NotEnoughSitesError when fewer than ``min_sites`` came.

    The start of every deployed query (statistics, external validation): report the
    bound port, then hold the query until its sites have joined.
    """
    if on_listening is not None:
        on_listening(channel.port)
    joined = channel.wait_for_sites(wait_for, timeout_s=timeout_s)
    if len(joined) < min_sites:
        raise NotEnoughSitesError(f"{len(joined)} site(s) joined within {timeout_s:g} s, at least {min_sites} required")


@dataclass(frozen=True)
class StatsOutcome:
    """What :func:`serve_cohort_stats` did: the query's run id and the combined result."""

    run_id: str
    result: CohortResult


def serve_cohort_stats(
    *,
    listen: str,
    tls: TlsFiles,
    allowed_sites: Sequence[str],
    study: str,
    schema: StudySchema,
    spec: StatsSpec,
    store_url: str,
    audit_log: Path,
    wait_for_sites: int,
    wait_timeout_s: float,
    timeout_s: float,
    min_sites: int = 1,
    run_id: str | None = None,
    on_listening: Callable[[int], None] | None = None,
    announce: StudySpec | None = None,
) -> StatsOutcome:
    """Serve the sites, run one cohort-statistics query, record it; return the combined result.

    With ``announce`` the query carries the study (as every training instruction does), so a
    node started from its site file (``fedcare node``) builds its part of the study and
    answers with its own release rules.

    Raises
    ------
    NotEnoughSitesError
        Fewer than ``min_sites`` sites joined within ``wait_timeout_s`` or released statistics.
    """
    run = RunId(run_id or f"stats-{uuid.uuid4().hex[:12]}")
    digest = spec.digest(schema)
    store = SqlStore(store_url)
    audit = AuditLog(audit_log, actor="server")
    try:
        audit.append("query_start", run_id=run, query=STATS_QUERY, spec_hash=digest, study=study)
        channel = GrpcChannel(
            listen=listen,
            tls=tls,
            allowed_sites=allowed_sites,
            study=StudyInfo(study=study, run_id=run, task=STATS_QUERY, task_hash=""),
            audit=audit,
        )
        try:
            await_sites(channel, wait_for_sites, wait_timeout_s, min_sites, on_listening)
            reach: Channel = StudyChannel(channel, announce) if announce is not None else channel
            exchange = Exchange(channel=reach, timeout_s=timeout_s, recorder=store)
            try:
                result = collect_cohort_stats(exchange, schema, spec, run_id=run, min_sites=min_sites)
            except NotEnoughSitesError as exc:
                audit.append("query_failed", run_id=run, query=STATS_QUERY, reason=str(exc)[:500])
                raise
            audit.append(
                "query_done",
                run_id=run,
                query=STATS_QUERY,
                spec_hash=digest,
                released=sorted(result.stats.sites),
                failures={s: why[:200] for s, why in result.failures.items()},
                epsilon=dict(result.epsilon),
            )
            channel.finish("cohort statistics released")
            return StatsOutcome(run_id=run, result=result)
        finally:
            channel.close()
    finally:
        audit.close()
        store.close()
