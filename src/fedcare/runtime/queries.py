"""Site-side answers to QUERY instructions: a registry by ``query`` name, and Moments.

A :class:`~fedcare.runtime.node.SiteNode` answers a
:attr:`~fedcare.types.MessageKind.QUERY` instruction through :func:`answer_query`, by the
instruction's ``query`` config value. The built-in ``moments`` query returns the
per-column count, sum and sum of squares of the site's training features (missing values
left out): nothing else leaves the site. The coordinator side lives with the data adapters
(:func:`fedcare.data.moments_query.query_moments`); further queries register a handler
with :func:`register_query` under their own name.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedcare.task import SiteData
from fedcare.types import Message, Payload

__all__ = ["MOMENTS_QUERY", "QUERY_HANDLERS", "QueryHandler", "answer_query", "column_moments", "register_query"]

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


def column_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column count, sum and sum of squares of ``x``, NaN left out of all three."""
    present = ~np.isnan(x)
    filled = np.where(present, x, 0.0)
    return present.sum(axis=0).astype(np.float64), filled.sum(axis=0), (filled**2).sum(axis=0)


def _moments_answer(data: SiteData, message: Message) -> Payload:
    count, total, total_sq = column_moments(np.asarray(data.train.x, dtype=np.float64))
    return Payload(arrays={"moments": {"count": count, "sum": total, "sum_sq": total_sq}})


register_query(MOMENTS_QUERY, _moments_answer)
