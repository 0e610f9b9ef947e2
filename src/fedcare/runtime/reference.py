"""The training cohort's input histograms, for drift checks at new sites: the ``reference`` QUERY.

After the last round of a tabular study, the coordinator asks every site once for the
histogram of each of its standardised training inputs over fixed bins
(:data:`fedcare.evaluation.validation.HIST_EDGES`, the deciles of N(0, 1)); cells of 1
to 4 rows are suppressed at the site (sent as 0). The sum over the sites is stored with
the run and shipped in the release bundle, and ``fedcare validate`` computes the
population stability index of each numeric input of a new site against it. Counts only
leave a site; the query is task-bound (the site's task policy applies, as for the
moments of federated standardisation) and goes through the Coordinator's exchange, so it
is recorded and audited the same way in simulation and over gRPC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from fedcare.errors import NotEnoughSitesError, SerdeError
from fedcare.evaluation.validation import HIST_EDGES, feature_histograms
from fedcare.privacy.cost import PrivacyCost
from fedcare.runtime.exchange import Exchange
from fedcare.task import SiteData
from fedcare.types import ConfigValue, Message, MessageKind, Payload, RunId, SiteId

__all__ = ["MIN_CELL", "REFERENCE_QUERY", "ReferenceQuery", "collect_reference"]

#: The ``query`` config value.
REFERENCE_QUERY = "reference"
#: Cells with fewer rows (but not 0) are suppressed at the site.
MIN_CELL = 5


class _HasData(Protocol):
    data: SiteData


class ReferenceQuery:
    """A site's histograms of its standardised training inputs (counts only, small cells suppressed)."""

    name = REFERENCE_QUERY
    task_bound = True

    def __init__(self, node: _HasData, *, min_cell: int = MIN_CELL) -> None:
        self.node, self.min_cell = node, min_cell

    def admit(self, message: Message) -> PrivacyCost | None:
        """Admitted once the task policy passed; no DP cost (suppressed counts)."""
        return None

    def answer(self, message: Message) -> Payload:
        """``{"reference": {"counts": (columns x bins)}}`` over the training rows (2-D tabular data only)."""
        x = getattr(self.node.data.train, "x", None)
        if not isinstance(x, np.ndarray) or x.ndim != 2:  # images, streamed records: nothing to compare
            raise SerdeError("reference query: this site's inputs are not an in-memory table")
        counts, _ = feature_histograms(x, min_cell=self.min_cell)
        return Payload(arrays={"reference": {"counts": np.asarray(counts, dtype=np.float64)}})


def collect_reference(
    exchange: Exchange,
    *,
    run_id: RunId,
    sites: Sequence[SiteId] | None = None,
    min_sites: int = 1,
) -> dict[str, Any]:
    """Ask every site for its input histograms and add them up (``counts``: columns x bins).

    Sites must agree on the number of columns (the first valid answer sets it).

    Raises
    ------
    NotEnoughSitesError
        Fewer than ``min_sites`` valid answers.
    """
    targets = list(sites) if sites is not None else exchange.sites()
    config: dict[str, ConfigValue] = {"query": REFERENCE_QUERY}
    failures: dict[SiteId, str] = {}
    got: dict[SiteId, np.ndarray] = {}
    shape: tuple[int, ...] | None = None
    for reply in exchange(MessageKind.QUERY, run_id, 0, dict.fromkeys(targets, Payload(config=config)), failures):
        record = reply.payload.arrays.get("reference") or {}
        counts = np.asarray(record.get("counts", np.zeros(0)), dtype=np.float64)
        ok = counts.ndim == 2 and counts.shape[1] == len(HIST_EDGES) + 1 and (shape is None or counts.shape == shape)
        if not ok or not np.isfinite(counts).all() or (counts < 0).any():
            want = shape or ("columns", len(HIST_EDGES) + 1)
            failures[reply.site] = f"reference reply from {reply.site}: expected non-negative counts of shape {want}"
            continue
        shape = counts.shape
        got[reply.site] = counts
    if len(got) < min_sites:
        detail = "; ".join(f"{s}: {e}" for s, e in sorted(failures.items()))
        why = f" ({detail})" if detail else ""
        raise NotEnoughSitesError(f"reference query: {len(got)} valid answer(s), at least {min_sites} required{why}")
    total = np.sum([got[s] for s in sorted(got)], axis=0)
    return {
        "edges": list(HIST_EDGES),
        "scale": "standardised inputs (training mean 0, sd 1)",
        "counts": [[int(v) for v in row] for row in total],
        "sites": sorted(got),
        "failures": dict(failures),
        "min_cell": MIN_CELL,
    }
