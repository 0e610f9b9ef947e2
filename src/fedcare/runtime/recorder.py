"""The narrow write path from the runtime to the Store.

The Coordinator records through this protocol only; reports and dashboards read the
Store. :class:`NullRecorder` is the do-nothing implementation for throwaway runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedcare.strategies.base import ServerState
from fedcare.types import Metrics, RunId, SiteId

__all__ = ["NullRecorder", "Recorder", "RoundReport", "RunSpec"]


@dataclass(frozen=True)
class RunSpec:
    """What a run is: recorded once when it starts."""

    run_id: RunId
    name: str
    dataset: str
    strategy: str
    task: str
    task_hash: str
    seed: int
    rounds: int
    config: Mapping[str, Any] = field(default_factory=dict)
    experiment: str = ""


@dataclass(frozen=True)
class RoundReport:
    """What happened in one round: who took part, what failed, and the metrics.

    Attributes
    ----------
    round_no : int
        Round number, from 1.
    sampled : tuple[SiteId, ...]
        Sites that were sent a fit instruction.
    fit_metrics : Metrics
        Aggregated training metrics from the strategy.
    site_fit : Mapping[SiteId, Metrics]
        Each site's own training metrics.
    site_eval : Mapping[SiteId, Metrics]
        Each site's evaluation of the new global model on its test split.
    eval_metrics : Metrics
        Example-weighted mean of the sites' evaluation metrics.
    failures : Mapping[SiteId, str]
        Sites that refused, failed, sent invalid data or missed the deadline.
    duration_s : float
        Wall time of the round.
    bytes_to_site, bytes_from_site : Mapping[SiteId, int]
        Array bytes the coordinator sent to / received from each site in the round,
        all exchanges together (fit, evaluate, secure-aggregation stages); the
        safetensors data on the wire, without headers and framing.
    """

    round_no: int
    sampled: tuple[SiteId, ...]
    fit_metrics: Metrics
    site_fit: Mapping[SiteId, Metrics]
    site_eval: Mapping[SiteId, Metrics]
    eval_metrics: Metrics
    failures: Mapping[SiteId, str]
    duration_s: float
    bytes_to_site: Mapping[SiteId, int] = field(default_factory=dict)
    bytes_from_site: Mapping[SiteId, int] = field(default_factory=dict)


class Recorder(Protocol):
    """Where a run's events go (the Store implements this)."""

    def start_run(self, spec: RunSpec) -> None:
        """Record that a run started."""
        ...

    def record_round(self, run_id: RunId, report: RoundReport, state: ServerState) -> None:
        """Record a completed round and checkpoint the state it produced."""
        ...

    def finish_run(self, run_id: RunId, *, status: str, message: str = "") -> None:
        """Record how a run ended (``"completed"``, ``"failed"``)."""
        ...


class NullRecorder:
    """Records nothing; for benchmarks and throwaway runs."""

    def start_run(self, spec: RunSpec) -> None:
        """Ignore."""

    def record_round(self, run_id: RunId, report: RoundReport, state: ServerState) -> None:
        """Ignore."""

    def finish_run(self, run_id: RunId, *, status: str, message: str = "") -> None:
        """Ignore."""
