"""Federated preprocessing statistics over the real protocol: a ``QUERY`` for Moments.

Each site answers a :attr:`~fedcare.types.MessageKind.QUERY` instruction whose config
says ``query = "moments"`` with the per-column count, sum and sum of squares of its
training features (:class:`fedcare.data.tabular.Moments`; missing values are left out).
Nothing else leaves the site: no row, no per-row value. The coordinator side,
:func:`query_moments`, sends the query over any Channel (in-process, gRPC...), validates
the replies and adds them up; ``Moments.standardizer()`` then gives the mean (the
imputation value) and the standard deviation every site standardises with. Adding the
sites' moments equals the moments of the pooled training rows, so the result is the
pooled statistics without pooling (tested against the direct computation, which is
what ``prepare_sites`` uses for the ``federated`` view).

Sites' policies apply as for training: the query names the approved task hash. The
site side (:func:`answer_query`, the registry and the built-in moments answer) is the
runtime's, :mod:`fedcare.runtime.queries`, re-exported here; further queries (e.g.
cohort statistics) register a handler with :func:`register_query` under their own
``query`` name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedcare.data.tabular import Moments
from fedcare.errors import NotEnoughSitesError, SerdeError
from fedcare.protocols import Channel
from fedcare.runtime.queries import MOMENTS_QUERY, QUERY_HANDLERS, answer_query, register_query
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

__all__ = ["MOMENTS_QUERY", "QUERY_HANDLERS", "answer_query", "query_moments", "register_query"]


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
    channel: Channel,
    *,
    run_id: RunId,
    task_name: str,
    task_hash: str,
    sites: Sequence[SiteId] | None = None,
    timeout_s: float = 60.0,
    min_sites: int = 1,
) -> tuple[Moments, dict[SiteId, Moments], dict[SiteId, str]]:
    """Ask every site for its Moments over ``channel`` and add them up.

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
    targets = list(sites if sites is not None else channel.sites())
    config: Mapping[str, str] = {"query": MOMENTS_QUERY, "task": task_name, "task_hash": task_hash}
    pending = {}
    for site in targets:
        message = Message(kind=MessageKind.QUERY, run_id=run_id, round_no=0, site=site, payload=Payload(config=config))
        pending[message.message_id] = message
    channel.send(list(pending.values()))
    per_site: dict[SiteId, Moments] = {}
    failures: dict[SiteId, str] = {}
    n_columns: int | None = None
    for reply in channel.receive(timeout_s=timeout_s):
        sent = pending.pop(reply.reply_to or "", None)
        if sent is None or sent.site != reply.site:
            continue
        if reply.has_error:
            failures[reply.site] = reply.error or "error"
        else:
            try:
                moments = _moments_of(reply, n_columns)
            except SerdeError as exc:
                failures[reply.site] = str(exc)
            else:
                n_columns = len(moments.count)
                per_site[reply.site] = moments
        if not pending:
            break
    for sent in pending.values():
        failures[sent.site] = f"no query reply within {timeout_s:g} s"
    if len(per_site) < min_sites:
        raise NotEnoughSitesError(f"moments query: {len(per_site)} valid answer(s), at least {min_sites} required")
    ordered = [per_site[s] for s in sorted(per_site)]
    combined = ordered[0]
    for m in ordered[1:]:
        combined = combined + m
    return combined, per_site, failures
