"""Cyclic weight transfer: one site trains per round, in turn.

Implementation based on Chang et al., "Distributed deep learning networks among
institutions for medical imaging", JAMIA 2018 (https://pubmed.ncbi.nlm.nih.gov/29617797/),
as benchmarked by FLamby (``flamby/strategies/cyclic.py``): each round exactly one site
trains from the current global model and its model becomes the next global model.
The order is a permutation of the sites; with ``deterministic_cycle=True`` every cycle
visits the sites in their sorted order, otherwise each cycle draws a fresh seeded
permutation (FLamby's default). The order is a pure function of ``(seed, round_no)``,
so the strategy keeps no state between rounds and a resumed run continues the same cycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import numpy as np

from fedcare.errors import ConfigError
from fedcare.strategies.base import ServerState, broadcast
from fedcare.strategies.fedavg import FedAvg
from fedcare.strategies.registry import register_strategy
from fedcare.types import ConfigValue, Payload, RoundInfo, SiteId

__all__ = ["Cyclic", "cyclic_order"]


def cyclic_order(n_sites: int, cycle: int, *, seed: int, deterministic_cycle: bool) -> list[int]:
    """Indices (into the sorted sites) visited in cycle ``cycle`` (0-based)."""
    if deterministic_cycle:
        return list(range(n_sites))
    return [int(i) for i in np.random.default_rng([seed, cycle]).permutation(n_sites)]


@register_strategy
class Cyclic(FedAvg):
    """Send the global model to one site per round; its result is the new global model.

    The Coordinator offers the round's sampled sites (all reachable sites with its
    default ``fraction_fit=1``); this strategy instructs only the one whose turn it is,
    the cycle running over the offered sites in sorted order.

    Parameters
    ----------
    seed : int (default: 0)
        Seed of the per-cycle permutations.
    deterministic_cycle : bool (default: False)
        Visit the sites in sorted order every cycle instead of a fresh permutation.
    fit_config : Mapping[str, ConfigValue] or None (default: None)
        Local training config sent to the site.
    """

    name: ClassVar[str] = "cyclic"

    def __init__(
        self,
        *,
        seed: int = 0,
        deterministic_cycle: bool = False,
        fit_config: Mapping[str, ConfigValue] | None = None,
    ) -> None:
        super().__init__(fit_config=fit_config)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"Cyclic seed must be a non-negative integer, got {seed!r}")
        if not isinstance(deterministic_cycle, bool):
            raise ConfigError(f"Cyclic deterministic_cycle must be true or false, got {deterministic_cycle!r}")
        self.seed = seed
        self.deterministic_cycle = deterministic_cycle

    def site_for_round(self, round_no: int, sites: Sequence[SiteId]) -> SiteId:
        """The site whose turn it is in ``round_no`` (1-based) among ``sites``."""
        if not sites:
            raise ConfigError("Cyclic needs at least one site")
        ordered = sorted(sites)
        n = len(ordered)
        cycle, pos = divmod(round_no - 1, n)
        order = cyclic_order(n, cycle, seed=self.seed, deterministic_cycle=self.deterministic_cycle)
        return ordered[order[pos]]

    def configure_fit(
        self,
        state: ServerState,
        rnd: RoundInfo,
        sites: Sequence[SiteId],
        rng: np.random.Generator,
    ) -> Mapping[SiteId, Payload]:
        """Instruct only the site whose turn it is."""
        return broadcast(state, [self.site_for_round(rnd.round_no, sites)], self.fit_config)
