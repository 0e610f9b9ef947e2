"""Cohort statistics over the one exchange: a ``QUERY`` instruction answered at each site.

The coordinator sends ``MessageKind.QUERY`` with ``config = {"query": "cohort-stats",
"spec_hash": ...}`` through an :class:`~fedcare.runtime.exchange.Exchange` (recorded in
the store; audited by both sides over gRPC). Each site's :class:`StatsQuery` (its own
process, its own config), answered by its :class:`~fedcare.runtime.node.SiteNode`,
checks that the requested statistics are exactly the ones its config allows (same
:meth:`StatsSpec.digest`, which covers columns, bins, small-cell threshold and noise),
computes :func:`fedcare.data.stats.site_aggregates` on its own table (noise, then
small-cell suppression, at the site), and replies with the release as arrays. A DP
release is charged to the site's privacy ledger before it leaves and refused past the
site's budget. Only that release crosses the channel; a refusal is an error reply,
never an exception. :func:`collect_cohort_stats` is the coordinator side.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from fedcare.data.schema import StudySchema
from fedcare.data.stats import CohortStats, SiteAggregates, StatsSpec, combine, site_aggregates
from fedcare.errors import FedcareError, NotEnoughSitesError, PolicyError
from fedcare.privacy.cost import PrivacyCost
from fedcare.runtime.exchange import Exchange
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

__all__ = ["STATS_QUERY", "CohortResult", "StatsQuery", "collect_cohort_stats"]

log = logging.getLogger(__name__)

#: The ``query`` name of a cohort-statistics instruction.
STATS_QUERY = "cohort-stats"


class StatsQuery:
    """Answer cohort-statistics queries with a site's own table and release rules.

    A :class:`~fedcare.runtime.queries.SiteQuery`: give it to the site's
    :class:`~fedcare.runtime.node.SiteNode` (``queries=[StatsQuery(...)]``).

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

    name = STATS_QUERY
    task_bound = False  # governed by the site's statistics rules, not a task hash

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

    def admit(self, message: Message) -> PrivacyCost | None:
        """Refuse any statistics but the site's configured ones; return the release's DP cost."""
        asked = message.payload.config.get("spec_hash")
        if asked != self.digest:
            raise PolicyError(
                f"refused: statistics spec {asked} differs from this site's configured spec {self.digest}"
            )
        return self.spec.privacy_cost(self.schema)

    def answer(self, message: Message) -> Payload:
        """Noise (if any), then small-cell suppression, at the site: aggregates only."""
        release = site_aggregates(self._frame, self.schema, self.spec, rng=self._rng)
        log.info("site %s released cohort statistics (n=%s, noise %s)", self.site_id, release.n, release.noise)
        return Payload(arrays={"stats": release.to_arrays()}, config={"noise": release.noise})


@dataclass(frozen=True)
class CohortResult:
    """Combined statistics plus the sites that refused or failed (and why)."""

    stats: CohortStats
    failures: Mapping[SiteId, str]
    #: Each site's ε spent (study total in its ledger) after a DP release, as it reported it.
    epsilon: Mapping[SiteId, float]


def collect_cohort_stats(
    exchange: Exchange,
    schema: StudySchema,
    spec: StatsSpec,
    *,
    run_id: RunId,
    sites: Sequence[SiteId] | None = None,
    min_sites: int = 1,
) -> CohortResult:
    """Ask every reachable site for its release through ``exchange`` and combine them.

    Raises
    ------
    NotEnoughSitesError
        Fewer than ``min_sites`` sites answered with a valid release.
    """
    targets = list(sites) if sites is not None else exchange.sites()
    payload = Payload(config={"query": STATS_QUERY, "spec_hash": spec.digest(schema)})
    layout = spec.layout(schema)
    releases: dict[SiteId, SiteAggregates] = {}
    epsilon: dict[SiteId, float] = {}
    failures: dict[SiteId, str] = {}
    for reply in exchange(MessageKind.QUERY, run_id, 0, dict.fromkeys(targets, payload), failures):
        try:
            release = SiteAggregates.from_arrays(
                reply.payload.arrays.get("stats", {}), layout, where=f"stats from {reply.site}"
            )
        except FedcareError as exc:
            failures[reply.site] = str(exc)
            continue
        noise = reply.payload.config.get("noise")
        releases[reply.site] = replace(release, noise=noise[:100]) if isinstance(noise, str) else release
        spent = reply.payload.metrics.get("dp.epsilon_total")
        if spent is not None:
            epsilon[reply.site] = float(spent)
    if len(releases) < min_sites:
        detail = "; ".join(f"{s}: {e}" for s, e in sorted(failures.items()))
        raise NotEnoughSitesError(f"{len(releases)} site(s) released statistics, need {min_sites} ({detail})")
    return CohortResult(
        stats=combine(layout, releases), failures=dict(sorted(failures.items())), epsilon=dict(sorted(epsilon.items()))
    )
