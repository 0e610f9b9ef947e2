"""The Strategy and Fold protocols: server-side round logic with explicit state.

A strategy never keeps round data on ``self``: ``init`` builds a :class:`ServerState`,
``configure_fit`` says what each sampled site receives, ``new_fold`` opens a running
aggregate that replies are folded into as they arrive, and ``finish_round`` turns the
fold into the next state. The Coordinator checkpoints the state (model plus extras
such as optimiser moments) after every round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

from fedcare.types import ConfigValue, FitResult, Metrics, ModelState, Payload, RoundInfo, SiteId

__all__ = ["Fold", "ServerState", "Strategy", "broadcast"]


@dataclass(frozen=True)
class ServerState:
    """Everything the next round depends on: the global model plus strategy extras.

    Attributes
    ----------
    model : ModelState
        The global model (its shared entries).
    extras : Mapping[str, ModelState]
        Strategy-specific arrays (e.g. FedAdam moments, SCAFFOLD control variate).
    """

    model: ModelState
    extras: Mapping[str, ModelState] = field(default_factory=dict)


class Fold(Protocol):
    """A running aggregate: replies are added one by one and then dropped.

    Memory is O(model) for weighted sums; robust statistics (median, Krum) must buffer
    and say so in their docstring.
    """

    def add(self, site: SiteId, result: FitResult) -> None:
        """Fold one site's validated result into the aggregate."""
        ...

    @property
    def count(self) -> int:
        """Number of results folded so far."""
        ...


class Strategy(Protocol):
    """Server-side algorithm: configure a round, fold replies, produce the next state."""

    #: Registry key, e.g. ``"fedavg"``.
    name: ClassVar[str]

    def init(self, model: ModelState) -> ServerState:
        """Return the state before round 1, starting from ``model``."""
        ...

    def configure_fit(
        self,
        state: ServerState,
        rnd: RoundInfo,
        sites: Sequence[SiteId],
        rng: np.random.Generator,
    ) -> Mapping[SiteId, Payload]:
        """Return the fit instruction payload for each site that takes part."""
        ...

    def new_fold(self, state: ServerState, rnd: RoundInfo) -> Fold:
        """Open the running aggregate for this round."""
        ...

    def finish_round(self, state: ServerState, fold: Fold) -> tuple[ServerState, Metrics]:
        """Turn the round's fold into the next state and round-level metrics."""
        ...


def broadcast(
    state: ServerState,
    sites: Sequence[SiteId],
    config: Mapping[str, ConfigValue],
) -> dict[SiteId, Payload]:
    """Send the same model and config to every site (no copy: one shared payload)."""
    payload = Payload(arrays={"model": state.model}, config=dict(config))
    return dict.fromkeys(sites, payload)
