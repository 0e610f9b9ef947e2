"""The protocols the core declares and the lower layers implement.

The layers (:mod:`fedcare._layers`) let a module import only from its own layer or the
layers above it. Where the runtime needs a transport, a store or an audit trail, it asks
for one of these protocols and an adapter implements it: ``InProcessChannel`` and
``GrpcChannel`` are :class:`Channel` implementations, ``SqlStore`` is a :class:`Recorder`,
``AuditLog`` an :class:`AuditSink`, ``SiteMemoryFiles`` a :class:`SiteMemory`.
:class:`FitWorkflow` lets the core's secure aggregation run the Coordinator's fit phase
through the :class:`RoundDriver` it is handed, without importing the runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard, runtime_checkable

from fedcare.serde import StateSpec
from fedcare.strategies.base import Fold, ServerState, Strategy
from fedcare.types import ConfigValue, Message, MessageKind, Metrics, ModelState, Payload, RunId, SiteId

__all__ = [
    "AuditSink",
    "Channel",
    "ExchangeReport",
    "FitPhase",
    "FitWorkflow",
    "NullRecorder",
    "PartialSum",
    "PrefoldChannel",
    "PrefoldRequest",
    "Recorder",
    "RoundDriver",
    "RoundReport",
    "RunSpec",
    "SiteMemory",
    "can_prefold",
]


# -- how the Coordinator reaches sites -------------------------------------------------------


class Channel(Protocol):
    """A way to send instructions to sites and receive their replies.

    The Coordinator only sends messages and reads replies as they arrive, with a
    deadline; it never knows whether sites are threads, Ray actors or hospitals on the
    other side of a gRPC stream. Every implementation passes the same contract tests.
    """

    def sites(self) -> Sequence[SiteId]:
        """Sites currently reachable, in a stable (sorted) order."""
        ...

    def send(self, messages: Sequence[Message]) -> None:
        """Deliver instructions; never blocks on a site's work."""
        ...

    def receive(self, *, timeout_s: float) -> Iterator[Message]:
        """Yield replies as they arrive, until ``timeout_s`` seconds have passed.

        The caller stops iterating once it has what it waits for.
        """
        ...

    def close(self) -> None:
        """Release threads, sockets and workers."""
        ...


@dataclass(frozen=True)
class PartialSum:
    """Valid fit replies of some sites, folded where those sites are hosted.

    What a :class:`PrefoldChannel` hands the Coordinator instead of those sites'
    models: the same float64 running sum a
    :class:`~fedcare.strategies.fedavg.WeightedMeanFold` would hold after folding them
    in ``sites`` order.

    Attributes
    ----------
    sites : tuple[SiteId, ...]
        The sites whose updates are in the sum, in the order they were folded.
    sums : ModelState
        ``sum_k n_k * w_k`` per entry, float64.
    total_weight : float
        ``sum_k n_k`` (the sites' ``num_examples``).
    metric_sums : Metrics
        ``sum_k n_k * m_k`` of each training metric.
    update_bytes : int
        Array bytes of the folded updates (what those sites sent to their host).
    """

    sites: tuple[SiteId, ...]
    sums: ModelState
    total_weight: float
    metric_sums: Metrics = field(default_factory=dict)
    update_bytes: int = 0


@dataclass(frozen=True)
class PrefoldRequest:
    """The Coordinator's request that a channel fold valid FIT replies where the sites run.

    Only the Coordinator makes one, and only for a strategy whose aggregation is a
    weighted linear mean (``linear_fold``). A site's reply that is an error, that fails
    the validation of :func:`fedcare.runtime.replies.fit_result` against ``spec``, or
    that carries anything besides its ``"model"`` record is passed through whole, so
    the Coordinator treats it as usual.

    Attributes
    ----------
    spec : StateSpec
        Names, shapes and dtypes every folded update must have.
    on_sum : Callable[[PartialSum], None]
        Called with each :class:`PartialSum` before the replies of the sites it covers
        are yielded (each such reply then carries the site's metrics, no arrays).
    """

    spec: StateSpec
    on_sum: Callable[[PartialSum], None]


@runtime_checkable
class PrefoldChannel(Channel, Protocol):
    """A :class:`Channel` that can fold fit replies where the sites are hosted (Ray actors)."""

    def send_prefolded(self, messages: Sequence[Message], request: PrefoldRequest) -> None:
        """Deliver FIT instructions whose valid replies are folded as ``request`` says."""
        ...


def can_prefold(channel: Channel) -> TypeGuard[PrefoldChannel]:
    """True when ``channel``'s class defines ``send_prefolded``.

    The class, not the instance: a wrapper that forwards unknown attributes to its inner
    channel (``StudyChannel``) would otherwise pass and skip its own ``send``.
    """
    return hasattr(type(channel), "send_prefolded")


# -- the narrow write path from the runtime to the Store ------------------------------------


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


@dataclass(frozen=True)
class ExchangeReport:
    """One exchange with the sites (fit, evaluate, a SecAgg stage, a query): who answered.

    Attributes
    ----------
    run_id : RunId
        The run the instructions named.
    round_no : int
        Their round (0 for queries outside rounds: statistics, moments).
    kind : MessageKind
        What was asked.
    name : str
        The query (``"cohort-stats"``, ``"moments"``) or SecAgg stage; ``""`` otherwise.
    sent : tuple[SiteId, ...]
        Sites that were sent an instruction.
    answered : tuple[SiteId, ...]
        Sites whose reply was not an error (the caller may still reject its content).
    failures : Mapping[SiteId, str]
        Refusals, errors and missed deadlines of this exchange.
    duration_s : float
        From sending to the last reply (or the deadline).
    details : Mapping[str, ConfigValue]
        What identifies the request (e.g. the statistics spec hash); never data.
    """

    run_id: RunId
    round_no: int
    kind: MessageKind
    name: str
    sent: tuple[SiteId, ...]
    answered: tuple[SiteId, ...]
    failures: Mapping[SiteId, str]
    duration_s: float
    details: Mapping[str, ConfigValue] = field(default_factory=dict)


class Recorder(Protocol):
    """Where a run's events go (the Store implements this); reports only read the Store."""

    def start_run(self, spec: RunSpec) -> None:
        """Record that a run started."""
        ...

    def record_round(self, run_id: RunId, report: RoundReport, state: ServerState) -> None:
        """Record a completed round and checkpoint the state it produced."""
        ...

    def record_result(self, run_id: RunId, key: str, value: Mapping[str, Any]) -> None:
        """Record a named JSON result of the run (``context``, ``evaluation``) for reports."""
        ...

    def finish_run(self, run_id: RunId, *, status: str, message: str = "") -> None:
        """Record how a run ended (``"completed"``, ``"failed"``)."""
        ...

    def record_exchange(self, report: ExchangeReport) -> None:
        """Record one exchange with the sites (also queries outside any round)."""
        ...


class NullRecorder:
    """Records nothing; for benchmarks and throwaway runs."""

    def start_run(self, spec: RunSpec) -> None:
        """Ignore."""

    def record_round(self, run_id: RunId, report: RoundReport, state: ServerState) -> None:
        """Ignore."""

    def record_result(self, run_id: RunId, key: str, value: Mapping[str, Any]) -> None:
        """Ignore."""

    def finish_run(self, run_id: RunId, *, status: str, message: str = "") -> None:
        """Ignore."""

    def record_exchange(self, report: ExchangeReport) -> None:
        """Ignore."""


# -- audit trail and site memory --------------------------------------------------------------


class AuditSink(Protocol):
    """An append-only, hash-chained audit trail (``fedcare.store.audit.AuditLog``)."""

    def append(self, event: str, **fields: Any) -> str:
        """Append one event and return its digest."""
        ...

    @property
    def head(self) -> str:
        """``"seq:hash"`` of the last entry (what another party records as an anchor)."""
        ...


class SiteMemory(Protocol):
    """Where a site keeps its per-run memory between rounds (``fedcare.store.site_memory``)."""

    def save(self, run_id: RunId, memory: Mapping[str, ModelState]) -> None:
        """Write the run's memory durably."""
        ...

    def load(self, run_id: RunId) -> dict[str, ModelState]:
        """The run's memory as last saved (empty if none)."""
        ...


# -- the Coordinator's fit phase as a pluggable workflow ------------------------------------


@dataclass
class FitPhase:
    """One round's fit phase: what a :class:`FitWorkflow` reads and fills in."""

    run_id: RunId
    round_no: int
    state: ServerState
    payloads: Mapping[SiteId, Payload]
    fold: Fold
    failures: dict[SiteId, str]
    site_fit: dict[SiteId, Metrics]


class RoundDriver(Protocol):
    """What a fit workflow may use of the Coordinator: its strategy, quorum and exchange."""

    @property
    def strategy(self) -> Strategy:
        """The strategy whose round is running."""
        ...

    @property
    def min_sites(self) -> int:
        """Minimum number of valid updates a round needs."""
        ...

    def exchange(
        self,
        kind: MessageKind,
        run_id: RunId,
        round_no: int,
        payloads: Mapping[SiteId, Payload],
        failures: dict[SiteId, str],
        *,
        prefold: PrefoldRequest | None = None,
    ) -> Iterator[Message]:
        """Send one instruction per site; yield valid replies as they arrive (failures recorded).

        With ``prefold`` a :class:`PrefoldChannel` folds valid fit replies where the
        sites run (other channels ignore it and deliver every reply whole).
        """
        ...

    def count_traffic(self, site: SiteId, *, sent: int = 0, received: int = 0) -> None:
        """Add array bytes sent to / received from ``site`` to this round's per-site traffic."""
        ...


class FitWorkflow(Protocol):
    """How the fit phase of a round runs (plain exchange, or SecAgg+'s four stages)."""

    def run_fit(self, coordinator: RoundDriver, ctx: FitPhase) -> Metrics:
        """Exchange with the sites, fold into ``ctx.fold``; return extra round metrics."""
        ...
