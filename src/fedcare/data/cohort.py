"""Cohort statistics over any Channel: a ``QUERY`` instruction answered at each site.

The coordinator sends ``MessageKind.QUERY`` with ``config = {"query": "cohort-stats",
"spec_hash": ...}``; each site's :class:`StatsResponder` (its own process, its own
config) checks that the requested statistics are exactly the ones its config allows
(same :meth:`StatsSpec.digest`, which covers columns, bins, small-cell threshold and
noise), computes :func:`fedcare.data.stats.site_aggregates` on its own table, and replies
with the release as arrays. Only that release crosses the channel. A refusal is an error
reply, never an exception. :func:`collect_cohort_stats` is the coordinator side.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedcare.data.schema import StudySchema
from fedcare.data.stats import CohortStats, SiteAggregates, StatsSpec, combine, site_aggregates
from fedcare.errors import FedcareError, NotEnoughSitesError
from fedcare.protocols import Channel
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

__all__ = ["STATS_QUERY", "CohortResult", "StatsResponder", "collect_cohort_stats"]

log = logging.getLogger(__name__)

#: The ``query`` name of a cohort-statistics instruction.
STATS_QUERY = "cohort-stats"


class StatsResponder:
    """Answer cohort-statistics queries with a site's own table and release rules.

    Parameters
    ----------
    site_id : SiteId
        This site.
    frame : pandas.DataFrame
        The site's checked table (it never leaves this object).
    schema : StudySchema
        The study schema.
    spec : StatsSpec
        The site's release rules (threshold, bins, noise) from its own config.
    rng : numpy.random.Generator or None (default: None)
        DP noise source; ``None`` is CSPRNG-seeded per release.
    """

    def __init__(
        self,
        *,
        site_id: SiteId,
        frame: pd.DataFrame,
        schema: StudySchema,
        spec: StatsSpec,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.site_id = site_id
        self._frame = frame
        self.schema = schema
        self.spec = spec
        self.digest = spec.digest(schema)
        self._rng = rng

    def __call__(self, message: Message) -> Message:
        """Check the query against this site's rules, then release aggregates only."""
        if message.kind is not MessageKind.QUERY:
            return message.reply(error=f"refused: {message.kind.value!r} is not a query")
        config = message.payload.config
        if config.get("query") != STATS_QUERY:
            return message.reply(error=f"refused: unknown query {config.get('query')!r}")
        asked = config.get("spec_hash")
        if asked != self.digest:
            return message.reply(
                error=f"refused: statistics spec {asked} differs from this site's configured spec {self.digest}"
            )
        try:
            release = site_aggregates(self._frame, self.schema, self.spec, rng=self._rng)
        except FedcareError as exc:
            return message.reply(error=f"{type(exc).__name__}: {exc}")
        log.info("site %s released cohort statistics (n=%s, noise %s)", self.site_id, release.n, release.noise)
        return message.reply(Payload(arrays={"stats": release.to_arrays()}, config={"noise": release.noise}))


@dataclass(frozen=True)
class CohortResult:
    """Combined statistics plus the sites that refused or failed (and why)."""

    stats: CohortStats
    failures: Mapping[SiteId, str]


def collect_cohort_stats(
    channel: Channel,
    schema: StudySchema,
    spec: StatsSpec,
    *,
    run_id: RunId,
    timeout_s: float = 60.0,
    min_sites: int = 1,
) -> CohortResult:
    """Ask every reachable site for its release and combine them (coordinator side).

    Raises
    ------
    NotEnoughSitesError
        Fewer than ``min_sites`` sites answered with a valid release.
    """
    sites = list(channel.sites())
    messages = [
        Message(
            kind=MessageKind.QUERY,
            run_id=run_id,
            round_no=0,
            site=site,
            payload=Payload(config={"query": STATS_QUERY, "spec_hash": spec.digest(schema)}),
        )
        for site in sites
    ]
    expected = {m.message_id: m.site for m in messages}
    channel.send(messages)
    layout = spec.layout(schema)
    releases: dict[SiteId, SiteAggregates] = {}
    failures: dict[SiteId, str] = {}
    for reply in channel.receive(timeout_s=timeout_s):
        site = expected.pop(reply.reply_to or "", None)
        if site is None:
            continue
        if reply.has_error:
            failures[site] = str(reply.error)
        else:
            try:
                releases[site] = SiteAggregates.from_arrays(
                    reply.payload.arrays.get("stats", {}), layout, where=f"stats from {site}"
                )
            except FedcareError as exc:
                failures[site] = str(exc)
        if not expected:
            break
    for site in expected.values():
        failures[site] = f"no reply within {timeout_s:g} s"
    if len(releases) < min_sites:
        detail = "; ".join(f"{s}: {e}" for s, e in sorted(failures.items()))
        raise NotEnoughSitesError(f"{len(releases)} site(s) released statistics, need {min_sites} ({detail})")
    return CohortResult(stats=combine(layout, releases), failures=dict(sorted(failures.items())))
