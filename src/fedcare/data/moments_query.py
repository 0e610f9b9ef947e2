"""Federated standardisation over the one exchange: a ``QUERY`` for Moments.

Each site answers a :attr:`~fedcare.types.MessageKind.QUERY` instruction whose config
says ``query = "moments"`` with the per-column count, sum and sum of squares of its
training features (:class:`fedcare.runtime.queries.MomentsQuery`; missing values are
left out). Nothing else leaves the site: no row, no per-row value. The coordinator
side, :func:`query_moments`, sends the query through an
:class:`~fedcare.runtime.exchange.Exchange` (the Coordinator's own, or one over any
Channel: in-process, gRPC...), so it is recorded and audited like a round; it
validates the replies and adds them up. ``Moments.standardizer()`` then gives the mean
(the imputation value) and the standard deviation every site standardises with.
Adding the sites' moments equals the moments of the pooled training rows, so the
result is the pooled statistics without pooling (tested against the direct
computation, which is what ``prepare_sites`` uses for the ``federated`` view).

Sites' policies apply as for training: the query names the approved task hash.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcare.data.tabular import Moments
from fedcare.errors import NotEnoughSitesError, SerdeError
from fedcare.runtime.exchange import Exchange
from fedcare.runtime.queries import MOMENTS_QUERY
from fedcare.types import ConfigValue, Message, MessageKind, Payload, RunId, SiteId

__all__ = ["MOMENTS_QUERY", "query_moments"]


def _moments_of(reply: Message, n_columns: int | None) -> Moments:
    record = reply.payload.arrays.get("moments")
    where = f"moments reply from {reply.site}"
    if record is None or set(record) != {"count", "sum", "sum_sq"}:
        raise SerdeError(f"{where}: expected a 'moments' record with count, sum, sum_sq")
    arrays = [np.asarray(record[k], dtype=np.float64) for k in ("count", "sum", "sum_sq")]
    shape = arrays[0].shape
    if len(shape) != 1 or any(a.shape != shape for a in arrays) or (n_columns is not None and shape[0] != n_columns):
        shapes = [a.shape for a in arrays]
        raise SerdeError(f"{where}: count, sum and sum_sq must be vectors of one length, got {shapes}")
    if not all(np.isfinite(a).all() for a in arrays) or (arrays[0] < 0).any() or (arrays[2] < 0).any():
        raise SerdeError(f"{where}: counts and sums of squares must be finite and non-negative")
    return Moments(*arrays)


def query_moments(
    exchange: Exchange,
    *,
    run_id: RunId,
    task_name: str,
    task_hash: str,
    sites: Sequence[SiteId] | None = None,
    min_sites: int = 1,
) -> tuple[Moments, dict[SiteId, Moments], dict[SiteId, str]]:
    """Ask every site for its Moments through ``exchange`` and add them up.

    Returns
    -------
    (combined, per_site, failures)
        The sum over the sites that answered, each site's own moments (for
        ``normalization="site"``) and why the others did not answer.

    Raises
    ------
    NotEnoughSitesError
        Fewer than ``min_sites`` valid answers.
    """
    targets = list(sites) if sites is not None else exchange.sites()
    config: dict[str, ConfigValue] = {"query": MOMENTS_QUERY, "task": task_name, "task_hash": task_hash}
    payload = Payload(config=config)
    per_site: dict[SiteId, Moments] = {}
    failures: dict[SiteId, str] = {}
    n_columns: int | None = None
    for reply in exchange(MessageKind.QUERY, run_id, 0, dict.fromkeys(targets, payload), failures):
        try:
            moments = _moments_of(reply, n_columns)
        except SerdeError as exc:
            failures[reply.site] = str(exc)
        else:
            n_columns = len(moments.count)
            per_site[reply.site] = moments
    if len(per_site) < min_sites:
        detail = "; ".join(f"{s}: {e}" for s, e in sorted(failures.items()))
        raise NotEnoughSitesError(
            f"moments query: {len(per_site)} valid answer(s), at least {min_sites} required"
            + (f" ({detail})" if detail else "")
        )
    ordered = [per_site[s] for s in sorted(per_site)]
    combined = ordered[0]
    for m in ordered[1:]:
        combined = combined + m
    return combined, per_site, failures
