"""The SecAgg+ communication graph: a randomly relabelled Harary graph of degree k.

Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020, section 3: each site shares keys and masks only
with its ``k`` neighbours in a random ``k``-regular graph (a Harary graph ``H_{k,n}``
whose vertices are randomly permuted), instead of with all ``n - 1`` other sites.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedcare.errors import ConfigError
from fedcare.types import SiteId

__all__ = ["harary_graph"]


def harary_graph(sites: Sequence[SiteId], degree: int, rng: np.random.Generator) -> dict[SiteId, tuple[SiteId, ...]]:
    """Return each site's sorted neighbours in a random ``H_{k,n}`` (complete when ``k >= n - 1``).

    Sites are placed on a ring in a random order; each is joined to the ``ceil(k/2)``
    nearest sites on either side (``k`` is rounded up to even, so degrees are ``k`` or ``k + 1``).
    """
    n = len(sites)
    if len(set(sites)) != n:
        raise ConfigError("harary_graph: site ids must be unique")
    if degree < 1:
        raise ConfigError(f"graph degree must be >= 1, got {degree}")
    ordered = sorted(sites)
    if degree >= n - 1:
        return {s: tuple(x for x in ordered if x != s) for s in ordered}
    half = (degree + 1) // 2
    ring = [ordered[i] for i in rng.permutation(n)]
    out: dict[SiteId, set[SiteId]] = {s: set() for s in ordered}
    for i, s in enumerate(ring):
        for d in range(1, half + 1):
            t = ring[(i + d) % n]
            if t != s:
                out[s].add(t)
                out[t].add(s)
    return {s: tuple(sorted(v)) for s, v in out.items()}
