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

Sites' policies apply as for training: the query names the approved task hash.
Further queries (e.g. cohort statistics) register a handler with
:func:`register_query` under their own ``query`` name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedcare.data.tabular import Moments
from fedcare.errors import NotEnoughSitesError, SerdeError
from fedcare.task import SiteData
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

__all__ = ["MOMENTS_QUERY", "QUERY_HANDLERS", "answer_query", "query_moments", "register_query"]

#: The ``query`` config value of a Moments query.
MOMENTS_QUERY = "moments"
#: Site-side handler: (the site's data, the instruction) -> reply payload.
QueryHandler = Callable[[SiteData, Message], Payload]
#: query name -> site-side handler.
QUERY_HANDLERS: dict[str, QueryHandler] = {}


def register_query(name: str, handler: QueryHandler) -> None:
    """Register the site-side handler of the query called ``name`` (duplicates are an error)."""
    if name in QUERY_HANDLERS and QUERY_HANDLERS[name] is not handler:
        raise ValueError(f"a query named {name!r} is already registered")
    QUERY_HANDLERS[name] = handler


def answer_query(data: SiteData, message: Message) -> Message:
    """Answer a QUERY instruction at a site by its ``query`` config key (error reply if unknown)."""
    name = message.payload.config.get("query")
    handler = QUERY_HANDLERS.get(name) if isinstance(name, str) else None
    if handler is None:
        return message.reply(error=f"unknown query {name!r}; this site answers: {', '.join(sorted(QUERY_HANDLERS))}")
    return message.reply(handler(data, message))


def _moments_answer(data: SiteData, message: Message) -> Payload:
    m = Moments.of(np.asarray(data.train.x, dtype=np.float64))
    return Payload(arrays={"moments": {"count": m.count, "sum": m.total, "sum_sq": m.total_sq}})


register_query(MOMENTS_QUERY, _moments_answer)


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
    channel: object,
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
    targets = list(sites if sites is not None else channel.sites())  # type: ignore[attr-defined]
    config: Mapping[str, str] = {"query": MOMENTS_QUERY, "task": task_name, "task_hash": task_hash}
    pending = {}
    for site in targets:
        message = Message(kind=MessageKind.QUERY, run_id=run_id, round_no=0, site=site, payload=Payload(config=config))
        pending[message.message_id] = message
    channel.send(list(pending.values()))  # type: ignore[attr-defined]
    per_site: dict[SiteId, Moments] = {}
    failures: dict[SiteId, str] = {}
    n_columns: int | None = None
    for reply in channel.receive(timeout_s=timeout_s):  # type: ignore[attr-defined]
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
