"""The Coordinator: runs rounds of a Strategy against any Channel.

It owns what the algorithms must not: sampling sites, deadlines, validation of every
reply, minimum participation, recording and checkpointing. The same code drives
in-process simulation and deployed sites over gRPC; nothing here knows which.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedcare.compression import payload_bytes
from fedcare.errors import ConfigError, NotEnoughSitesError, SerdeError
from fedcare.protocols import (
    Channel,
    FitPhase,
    FitWorkflow,
    NullRecorder,
    PartialSum,
    PrefoldRequest,
    Recorder,
    RoundDriver,
    RoundReport,
    RunSpec,
)
from fedcare.runtime.asynchronous import BufferedAsyncFit
from fedcare.runtime.exchange import Exchange
from fedcare.runtime.replies import finite_metrics as _finite_metrics
from fedcare.runtime.replies import fit_result as _fit_result
from fedcare.runtime.replies import site_seed
from fedcare.serde import spec_of
from fedcare.strategies.base import ServerState, Strategy
from fedcare.strategies.fedavg import WeightedMeanFold
from fedcare.types import (
    ConfigValue,
    Message,
    MessageKind,
    Metrics,
    ModelState,
    Payload,
    RoundInfo,
    RunId,
    SiteId,
)

__all__ = ["Coordinator", "FitPhase", "FitWorkflow", "PlainFit", "RunResult", "prefold_request", "site_seed"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """The outcome of :meth:`Coordinator.run`."""

    state: ServerState
    rounds: list[RoundReport] = field(default_factory=list)


class PlainFit:
    """The default fit phase: one FIT exchange, each valid reply folded as it arrives.

    Records ``bytes_down`` / ``bytes_up`` in the round's fit metrics: the array bytes of
    the instructions sent and of the replies received (compressed updates count as sent).

    When the round's aggregation is a weighted linear mean (:func:`prefold_request`),
    it asks the channel to fold valid replies where the sites run; a channel that can
    (:class:`~fedcare.protocols.PrefoldChannel`, Ray) hands back partial sums and each
    folded site's metrics, any other delivers the replies whole. Either way each site's
    fit metrics, failures and traffic are recorded per site.
    """

    def run_fit(self, coordinator: RoundDriver, ctx: FitPhase) -> Metrics:
        """Send ``ctx.payloads`` as FIT instructions and fold the validated replies."""
        spec = spec_of(ctx.state.model)
        fold, failures = ctx.fold, ctx.failures
        bytes_down = float(sum(payload_bytes(p.arrays) for p in ctx.payloads.values()))
        bytes_up = 0.0
        folded: dict[SiteId, int] = {}  # site -> its update's array bytes, for sites folded elsewhere

        open_ = True  # a sum arriving after this exchange ended (late sites) is not this round's

        def take(partial: PartialSum) -> None:
            nonlocal bytes_up
            if not open_:
                return
            assert isinstance(fold, WeightedMeanFold)  # prefold_request asks only then
            fold.add_sum(partial.sums, partial.total_weight, count=len(partial.sites), metric_sums=partial.metric_sums)
            bytes_up += partial.update_bytes
            share = partial.update_bytes // max(len(partial.sites), 1)
            folded.update(dict.fromkeys(partial.sites, share))

        request = prefold_request(coordinator.strategy, ctx, take)
        replies = coordinator.exchange(
            MessageKind.FIT, ctx.run_id, ctx.round_no, ctx.payloads, failures, prefold=request
        )
        for reply in replies:
            if reply.site in folded:  # already in the fold: the reply carries its metrics only
                ctx.site_fit[reply.site] = {**reply.payload.metrics}
                coordinator.count_traffic(reply.site, received=folded[reply.site])
                continue
            bytes_up += payload_bytes(reply.payload.arrays)
            try:
                fit = _fit_result(reply, spec, ctx.payloads[reply.site].arrays.get("model"))
                fold.add(reply.site, fit)
            except (SerdeError, ValueError) as exc:
                failures[reply.site] = str(exc)
                log.warning("round %d: rejected update from %s: %s", ctx.round_no, reply.site, exc)
                continue
            ctx.site_fit[reply.site] = {"num_examples": float(fit.num_examples), **fit.metrics}
        open_ = False
        return {"bytes_down": bytes_down, "bytes_up": bytes_up}


#: Fit-config keys under which a site's reply is more than its model (compression, client
#: DP, personalisation): such rounds keep per-site replies.
_PER_SITE_CONFIG = ("compression", "dp.", "ditto_")


def prefold_request(strategy: Strategy, ctx: FitPhase, on_sum: Callable[[PartialSum], None]) -> PrefoldRequest | None:
    """The pre-folding request for this fit phase, or ``None`` when replies must arrive whole.

    Pre-folding is asked for only when the strategy declares a weighted linear mean
    (``linear_fold``, e.g. FedAvg, FedProx, the FedOpt family whose server step acts on
    that mean; not median, trimmed mean, Krum, SCAFFOLD, FedBuff or a DP wrapper), its
    fold is a :class:`WeightedMeanFold`, every site is sent exactly the global model,
    and the fit config asks for nothing that makes a reply more than a model
    (compression, client-level DP, Ditto).
    """
    if not getattr(strategy, "linear_fold", False) or not isinstance(ctx.fold, WeightedMeanFold):
        return None
    spec = spec_of(ctx.state.model)
    for payload in ctx.payloads.values():
        model = payload.arrays.get("model")
        if set(payload.arrays) != {"model"} or model is None or spec_of(model) != spec:
            return None
        if any(str(key).startswith(_PER_SITE_CONFIG) for key in payload.config):
            return None
    return PrefoldRequest(spec=spec, on_sum=on_sum)


class Coordinator:
    """Run federated rounds.

    Parameters
    ----------
    channel : Channel
        How sites are reached.
    strategy : Strategy
        Round logic (configure, fold, finish).
    task_name, task_hash : str
        The task every instruction names; sites refuse hashes they did not approve.
    rounds : int
        Number of rounds to run.
    seed : int (default: 0)
        Seeds site sampling and each site's per-round training seed.
    fraction_fit : float (default: 1.0)
        Share of reachable sites sampled per round, in (0, 1].
    min_sites : int (default: 1)
        Minimum sites that must return a valid update; fewer ends the run.
    round_timeout_s : float (default: 300.0)
        Deadline for each exchange (fit, evaluate, SecAgg stage, query); late sites
        count as failed.
    evaluate : bool (default: True)
        After each round, ask every site to evaluate the new model on its test split.
    recorder : Recorder or None (default: None)
        Where rounds are recorded (the Store); ``None`` records nothing.
    on_round : callable or None (default: None)
        Called with each :class:`RoundReport` (progress display).
    fit_workflow : FitWorkflow or None (default: None)
        How the fit phase runs; ``None`` is :class:`PlainFit` (e.g. pass
        ``fedcare.secure.SecAggPlusWorkflow()`` for secure aggregation).
    """

    def __init__(
        self,
        *,
        channel: Channel,
        strategy: Strategy,
        task_name: str,
        task_hash: str,
        rounds: int,
        seed: int = 0,
        fraction_fit: float = 1.0,
        min_sites: int = 1,
        round_timeout_s: float = 300.0,
        evaluate: bool = True,
        recorder: Recorder | None = None,
        on_round: Callable[[RoundReport], None] | None = None,
        fit_workflow: FitWorkflow | None = None,
    ) -> None:
        if rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {rounds}")
        if not 0.0 < fraction_fit <= 1.0:
            raise ConfigError(f"fraction_fit must be in (0, 1], got {fraction_fit}")
        if min_sites < 1:
            raise ConfigError(f"min_sites must be at least 1, got {min_sites}")
        if round_timeout_s <= 0:
            raise ConfigError(f"round_timeout_s must be positive, got {round_timeout_s}")
        self.channel = channel
        self.strategy = strategy
        self.task_name = task_name
        self.task_hash = task_hash
        self.rounds = rounds
        self.seed = seed
        self.fraction_fit = fraction_fit
        self.min_sites = min_sites
        self.round_timeout_s = round_timeout_s
        self.evaluate = evaluate
        self.recorder: Recorder = recorder or NullRecorder()
        self.on_round = on_round
        if fit_workflow is None and getattr(strategy, "asynchronous", False):
            fit_workflow = BufferedAsyncFit.for_strategy(strategy)
        self.fit_workflow: FitWorkflow = fit_workflow or PlainFit()
        # array bytes to / from each site in the current round (every exchange counts)
        self._bytes_to: dict[SiteId, int] = {}
        self._bytes_from: dict[SiteId, int] = {}
        #: Called with replies that answer no instruction of the current exchange (work a
        #: buffered asynchronous workflow still has in flight); True means it took them.
        self.stray_reply: Callable[[Message], bool] | None = None
        #: The one send/receive/deadline loop: rounds, SecAgg stages and queries all use it.
        self.exchanger = Exchange(
            channel=channel,
            timeout_s=round_timeout_s,
            recorder=self.recorder,
            stamp=self._stamp,
            on_traffic=self.count_traffic,
            stray=self._stray,
        )

    # -- public ---------------------------------------------------------------------

    def run(
        self,
        initial_model: ModelState,
        *,
        spec: RunSpec,
        state: ServerState | None = None,
        start_round: int = 1,
    ) -> RunResult:
        """Run rounds ``start_round..rounds`` and return the final state.

        Pass ``state`` and ``start_round`` to resume from a checkpoint.

        Raises
        ------
        NotEnoughSitesError
            When fewer than ``min_sites`` sites are reachable or return a valid update;
            the run is recorded as failed and the last completed round stays intact.
        """
        current = state if state is not None else self.strategy.init(initial_model)
        result = RunResult(state=current)
        if start_round == 1:
            self.recorder.start_run(spec)
        try:
            for round_no in range(start_round, self.rounds + 1):
                current, report = self._round(spec.run_id, round_no, current)
                result.state = current
                result.rounds.append(report)
                self.recorder.record_round(spec.run_id, report, current)
                if self.on_round is not None:
                    self.on_round(report)
        except BaseException as exc:
            # Whatever ends a run early (too few sites, a bug, Ctrl-C) leaves it marked as
            # such, never as "running"; a resumed run starts again from its last checkpoint.
            status = "aborted" if isinstance(exc, KeyboardInterrupt) else "failed"
            try:
                self.recorder.finish_run(spec.run_id, status=status, message=f"{type(exc).__name__}: {exc}"[:1000])
            except Exception:  # the store itself may be what failed: the original error matters more
                log.exception("could not record run %s as %s", spec.run_id, status)
            raise
        self.recorder.finish_run(spec.run_id, status="completed")
        return result

    # -- one round ------------------------------------------------------------------

    def sample_sites(self, round_no: int, available: Sequence[SiteId]) -> list[SiteId]:
        """Choose this round's sites: ``max(min_sites, ceil(fraction * n))``, seeded."""
        if len(available) < self.min_sites:
            raise NotEnoughSitesError(
                f"round {round_no}: {len(available)} site(s) reachable, at least {self.min_sites} required"
            )
        k = max(self.min_sites, math.ceil(self.fraction_fit * len(available)))
        if k >= len(available):
            return sorted(available)
        rng = np.random.default_rng([self.seed, round_no])
        picked = rng.choice(len(available), size=k, replace=False)
        ordered = sorted(available)
        return sorted(ordered[i] for i in picked)

    def _round(self, run_id: RunId, round_no: int, state: ServerState) -> tuple[ServerState, RoundReport]:
        started = time.perf_counter()
        self._bytes_to, self._bytes_from = {}, {}
        info = RoundInfo(run_id=run_id, round_no=round_no, total_rounds=self.rounds)
        sampled = self.sample_sites(round_no, self.channel.sites())
        rng = np.random.default_rng([self.seed, round_no, 1])
        payloads = self.strategy.configure_fit(state, info, sampled, rng)
        stray = sorted(set(payloads) - set(sampled))
        if stray:  # a strategy may instruct a subset of the sampled sites (Cyclic), never others
            raise ConfigError(f"round {round_no}: strategy {self.strategy.name!r} instructed unsampled sites {stray}")
        sampled = sorted(payloads)
        failures: dict[SiteId, str] = {}
        site_fit: dict[SiteId, Metrics] = {}
        fold = self.strategy.new_fold(state, info)
        ctx = FitPhase(run_id, round_no, state, payloads, fold, failures, site_fit)
        extra_metrics = self.fit_workflow.run_fit(self, ctx)
        if fold.count < self.min_sites:
            detail = "; ".join(f"{s}: {e}" for s, e in sorted(failures.items()))
            raise NotEnoughSitesError(
                f"round {round_no}: {fold.count} valid update(s), at least "
                f"{self.min_sites} required" + (f" ({detail})" if detail else "")
            )
        new_state, fit_metrics = self.strategy.finish_round(state, fold)
        fit_metrics.update(extra_metrics)
        site_eval: dict[SiteId, Metrics] = {}
        if self.evaluate:
            site_eval = self._evaluate(run_id, round_no, new_state, failures)
        report = RoundReport(
            round_no=round_no,
            sampled=tuple(sampled),
            fit_metrics=fit_metrics,
            site_fit=site_fit,
            site_eval=site_eval,
            eval_metrics=_weighted_mean(site_eval),
            failures=failures,
            duration_s=time.perf_counter() - started,
            bytes_to_site=dict(self._bytes_to),
            bytes_from_site=dict(self._bytes_from),
        )
        return new_state, report

    def _evaluate(
        self, run_id: RunId, round_no: int, state: ServerState, failures: dict[SiteId, str]
    ) -> dict[SiteId, Metrics]:
        sites = sorted(self.channel.sites())
        # a workflow whose sites hold the model themselves (peer-to-peer) says what to send instead
        custom = getattr(self.fit_workflow, "evaluate_payload", None)
        payload = custom(state.model) if callable(custom) else Payload(arrays={"model": state.model})
        out: dict[SiteId, Metrics] = {}
        eval_failures: dict[SiteId, str] = {}
        for reply in self.exchange(
            MessageKind.EVALUATE, run_id, round_no, dict.fromkeys(sites, payload), eval_failures
        ):
            try:
                out[reply.site] = _finite_metrics(reply.payload.metrics, f"evaluate reply from {reply.site}")
            except SerdeError as exc:
                eval_failures[reply.site] = str(exc)
        for site, error in eval_failures.items():
            failures.setdefault(site, f"evaluate: {error}")
        return out

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
        """Send one instruction per site through :attr:`exchanger`; yield valid replies.

        Every instruction names the task, its hash and the site's round seed. Error
        replies, replies that answer nothing outstanding and sites that miss the
        deadline are written to ``failures``; they never raise. The exchange is recorded.
        ``prefold`` (from :func:`prefold_request`) lets a channel fold fit replies where
        the sites run.
        """
        return self.exchanger(kind, run_id, round_no, payloads, failures, prefold=prefold)

    def _stamp(self, site: SiteId, round_no: int) -> dict[str, ConfigValue]:
        return {"task": self.task_name, "task_hash": self.task_hash, "seed": site_seed(self.seed, round_no, site)}

    def _stray(self, reply: Message) -> bool:
        return self.stray_reply is not None and self.stray_reply(reply)

    def count_traffic(self, site: SiteId, *, sent: int = 0, received: int = 0) -> None:
        """Add array bytes sent to / received from ``site`` to this round's per-site traffic."""
        if sent:
            self._bytes_to[site] = self._bytes_to.get(site, 0) + sent
        if received:
            self._bytes_from[site] = self._bytes_from.get(site, 0) + received

    def instruction(
        self,
        kind: MessageKind,
        run_id: RunId,
        round_no: int,
        site: SiteId,
        payload: Payload,
        *,
        seed: int | None = None,
    ) -> Message:
        """Build one instruction: ``payload`` plus the task, its hash and the site's seed."""
        config: dict[str, ConfigValue] = {
            **payload.config,
            "task": self.task_name,
            "task_hash": self.task_hash,
            "seed": site_seed(self.seed, round_no, site) if seed is None else seed,
        }
        return Message(
            kind=kind,
            run_id=run_id,
            round_no=round_no,
            site=site,
            payload=Payload(arrays=payload.arrays, config=config, metrics=payload.metrics),
        )

    _exchange = exchange  # the name used before the fit phase became a workflow


def _weighted_mean(site_metrics: Mapping[SiteId, Metrics]) -> Metrics:
    """Example-weighted mean of each metric over sites (``num_examples`` summed).

    Summed in site order, not arrival order, so the same run gives the same digits.
    """
    site_metrics = {s: site_metrics[s] for s in sorted(site_metrics)}
    total = sum(m.get("num_examples", 0.0) for m in site_metrics.values())
    if total <= 0:
        return {}
    keys = {k for m in site_metrics.values() for k in m if k != "num_examples"}
    out = {
        k: sum(m.get("num_examples", 0.0) * m[k] for m in site_metrics.values() if k in m) / total for k in sorted(keys)
    }
    out["num_examples"] = total
    return out
