"""Queries a site answers besides training: the site's side of the QUERY exchange.

A query (``MessageKind.QUERY``, named by its config key ``query``) asks a site for
aggregates of its data: the moments of federated standardisation, cohort statistics
(:class:`fedcare.data.cohort.StatsQuery`). :class:`SiteQueries` is how a site answers
them, the same in simulation and behind a deployed node:

1. find the query by name (an unknown name is an error reply naming the known ones);
2. let the query admit the instruction against the site's own rules (a refusal is an
   error reply starting with ``"refused"``) and say what its release costs in privacy;
3. compute the release;
4. charge a DP release to the site's privacy ledger (the ledger training is charged
   to) *before* it leaves; past the site's budget the charge fails and nothing leaves.

Queries whose ``task_bound`` is true serve a training task (the moments its
preprocessing needs): the node applies its task policy to them first, as for fit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from fedcare.errors import FedcareError, PolicyError
from fedcare.privacy.cost import PrivacyCost
from fedcare.privacy.guard import SitePrivacyGuard
from fedcare.runtime.moments import column_moments
from fedcare.task import SiteData
from fedcare.types import Message, MessageKind, Payload, SiteId

__all__ = ["MOMENTS_QUERY", "MomentsQuery", "SiteQueries", "SiteQuery", "column_moments"]

log = logging.getLogger(__name__)

#: The ``query`` config value of a Moments query.
MOMENTS_QUERY = "moments"


class SiteQuery(Protocol):
    """One kind of query a site answers with its own data and rules."""

    #: The ``query`` config value this answers.
    name: str
    #: True when the site's task policy applies (the query serves a training task).
    task_bound: bool

    def admit(self, message: Message) -> PrivacyCost | None:
        """Check the instruction against the site's rules; return its DP cost (``None``: no DP).

        Raises ``PolicyError`` (message starting with ``"refused"``) to refuse.
        """
        ...

    def answer(self, message: Message) -> Payload:
        """The release: aggregates only, computed at the site."""
        ...


class MomentsQuery:
    """Per-column count, sum and sum of squares of a site's training features.

    What federated standardisation needs (missing values are left out); adding the
    sites' answers gives the pooled moments exactly. Not noised: the study's task
    policy governs it (``task_bound``).

    Parameters
    ----------
    data : SiteData
        The site's data; the moments are of ``data.train.x`` (rows x features).
    """

    name = MOMENTS_QUERY
    task_bound = True

    def __init__(self, data: SiteData) -> None:
        self.data = data

    def admit(self, message: Message) -> PrivacyCost | None:
        """Always admitted once the task policy passed; no DP cost."""
        return None

    def answer(self, message: Message) -> Payload:
        """``{"moments": {"count", "sum", "sum_sq"}}`` over the training rows."""
        rows = getattr(self.data.train, "x", None)
        if rows is None:  # a RecordSource: files read a batch at a time, never standardised
            raise PolicyError("refused: this site streams its records from files; it releases no feature moments")
        x = np.asarray(rows, dtype=np.float64)
        count, total, total_sq = column_moments(x.reshape(len(x), -1))
        return Payload(arrays={"moments": {"count": count, "sum": total, "sum_sq": total_sq}})


class SiteQueries:
    """Answer QUERY instructions: admit, compute, charge the ledger, release.

    Parameters
    ----------
    site_id : SiteId
        This site.
    queries : Iterable[SiteQuery]
        The queries this site answers (a later one replaces an earlier one of the same name).
    privacy : SitePrivacyGuard or None (default: None)
        The site's privacy guard; DP releases are charged to its ledger and refused
        past its budget. ``None``: a DP release is refused (it could not be accounted).
    """

    def __init__(
        self, *, site_id: SiteId, queries: Iterable[SiteQuery], privacy: SitePrivacyGuard | None = None
    ) -> None:
        self.site_id = site_id
        self.queries: dict[str, SiteQuery] = {q.name: q for q in queries}
        self.privacy = privacy

    def get(self, message: Message) -> SiteQuery | None:
        """The query an instruction names, or ``None``."""
        name = message.payload.config.get("query")
        return self.queries.get(name) if isinstance(name, str) else None

    def handle(self, message: Message) -> Message:
        """Answer one QUERY instruction (refusals and failures are error replies)."""
        if message.kind is not MessageKind.QUERY:
            return message.reply(error=f"refused: {message.kind.value!r} is not a query")
        query = self.get(message)
        if query is None:
            name = message.payload.config.get("query")
            known = ", ".join(sorted(self.queries)) or "none"
            return message.reply(error=f"unknown query {name!r}; this site answers: {known}")
        try:
            cost = query.admit(message)
            payload = query.answer(message)
            if cost is not None:
                payload = self._charged(query, cost, message, payload)
        except PolicyError as exc:
            log.info("site %s refused query %s: %s", self.site_id, query.name, exc)
            return message.reply(error=str(exc))
        except FedcareError as exc:
            return message.reply(error=f"{type(exc).__name__}: {exc}")
        return message.reply(payload)

    def _charged(self, query: SiteQuery, cost: PrivacyCost, message: Message, payload: Payload) -> Payload:
        """Charge ``cost`` before ``payload`` leaves (fail-closed); add the ε spent to its metrics."""
        guard = self.privacy
        if guard is None:
            raise PolicyError(f"refused: site {self.site_id} has no privacy ledger to account a DP release")
        details: dict[str, Any] = {"query": query.name, "components": cost.steps}
        spent = guard.charge_release(cost, run_id=message.run_id, round_no=message.round_no, details=details)
        metrics = dict(payload.metrics)
        if spent is not None:
            metrics["dp.epsilon_total"] = spent
        return Payload(arrays=payload.arrays, config=payload.config, metrics=metrics)
