"""BufferedAsyncFit: the fit phase of buffered asynchronous strategies (FedBuff).

Sites are kept busy across Coordinator rounds: an idle site is sent the current global
model at once, and its reply is folded whenever it comes, with its staleness (server
steps since its model was sent). A round ends, and the strategy steps the global model,
when ``buffer_size`` updates are folded; work still in flight carries over to the
next round. Replies that arrive while the Coordinator is doing something else (the
evaluation exchange) are kept for this workflow, never dropped.

Two clocks:

* **Simulated** (``simulated_latency`` given): each piece of work finishes at
  ``sent + latency[site]`` on a virtual clock, and replies are folded in that order
  (ties: first sent, first folded), whatever order the threads finish in. The result
  depends only on the seed and the latencies. Idle sites are sent new work only after
  every reply due at the same virtual instant is folded, so with zero latency every
  round folds exactly one fresh update per site: FedAvg.
* **Real** (``None``, e.g. over gRPC): replies are folded in arrival order.

Memory: one model per version still in flight (the model those sites started from)
plus at most ``concurrency`` replies waiting to be folded in virtual-time order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedcare.compression import payload_bytes
from fedcare.errors import ConfigError, SerdeError
from fedcare.protocols import FitPhase
from fedcare.runtime.replies import fit_result, site_seed
from fedcare.serde import spec_of
from fedcare.types import Message, MessageKind, Metrics, ModelState, RunId, SiteId

if TYPE_CHECKING:  # the Coordinator calls this workflow; only its type is needed here
    from fedcare.runtime.coordinator import Coordinator

__all__ = ["BufferedAsyncFit"]

log = logging.getLogger(__name__)


@dataclass
class _Job:
    site: SiteId
    version: int  # the round whose global model the site was sent
    finish: float  # virtual finish time (simulated clock)
    seq: int  # send order, breaks ties
    sent_at: float  # real time it was sent (deadline)


class BufferedAsyncFit:
    """Keep sites busy and fold their updates as they come, with their staleness.

    Parameters
    ----------
    buffer_size : int or None (default: None)
        Updates folded per round (server step); ``None`` is the number of sites sampled.
    concurrency : int or None (default: None)
        Most sites working at once; ``None`` is every sampled site.
    simulated_latency : Mapping[str, float] or None (default: None)
        Seconds per update of each site on a virtual clock (simulation); sites not
        named take 0. ``None`` folds in real arrival order.
    """

    def __init__(
        self,
        *,
        buffer_size: int | None = None,
        concurrency: int | None = None,
        simulated_latency: Mapping[str, float] | None = None,
    ) -> None:
        for label, count in (("buffer_size", buffer_size), ("concurrency", concurrency)):
            if count is not None and count < 1:
                raise ConfigError(f"{label} must be at least 1, got {count}")
        self.buffer_size = buffer_size
        self.concurrency = concurrency
        self.latency = dict(simulated_latency) if simulated_latency is not None else None
        self._reset(None)

    @classmethod
    def for_strategy(cls, strategy: Any) -> BufferedAsyncFit:
        """The workflow an asynchronous strategy (e.g. FedBuff) asks for through its settings."""
        return cls(
            buffer_size=getattr(strategy, "buffer_size", None),
            concurrency=getattr(strategy, "concurrency", None),
            simulated_latency=getattr(strategy, "simulated_latency", None),
        )

    def _reset(self, run_id: RunId | None) -> None:
        self._run_id = run_id
        self._jobs: dict[str, _Job] = {}
        self._arrived: dict[str, Message] = {}
        self._models: dict[int, ModelState] = {}
        self._clock = 0.0
        self._seq = 0

    @property
    def simulated(self) -> bool:
        """True when replies are ordered by the virtual clock."""
        return self.latency is not None

    @property
    def clock_s(self) -> float:
        """Virtual time of the last folded update (simulation)."""
        return self._clock

    def take(self, reply: Message) -> bool:
        """Keep ``reply`` if it answers work in flight (the Coordinator's stray-reply hook)."""
        job = self._jobs.get(reply.reply_to or "")
        if job is None or reply.site != job.site or reply.kind is not MessageKind.FIT:
            return False
        self._arrived[reply.reply_to or ""] = reply
        return True

    # -- the seam the Coordinator calls -------------------------------------------------

    def run_fit(self, coordinator: Coordinator, ctx: FitPhase) -> Metrics:
        """Fold ``buffer_size`` updates into ``ctx.fold``, keeping idle sites busy."""
        if ctx.run_id != self._run_id or (ctx.round_no == 1 and self._jobs):
            self._reset(ctx.run_id)
        coordinator.stray_reply = self.take
        add_stale = getattr(ctx.fold, "add_stale", None)
        if add_stale is None:
            raise ConfigError(
                f"strategy {coordinator.strategy.name!r} cannot fold stale updates; buffered asynchronous "
                "rounds need a fold with add_stale (e.g. fedbuff)"
            )
        version = ctx.round_no
        self._models[version] = ctx.state.model
        spec = spec_of(ctx.state.model)
        sites = sorted(ctx.payloads)
        want = self.buffer_size or len(sites)
        limit = self.concurrency or len(sites)
        failed: set[SiteId] = set()
        sent_count: dict[SiteId, int] = {}
        traffic = {"bytes_down": 0.0, "bytes_up": 0.0}

        def dispatch() -> None:
            busy = {job.site for job in self._jobs.values()}
            messages = []
            for site in sites:
                if len(self._jobs) >= limit:
                    break
                if site in busy or site in failed:
                    continue
                n = sent_count.get(site, 0)
                sent_count[site] = n + 1
                seed = site_seed(coordinator.seed, ctx.round_no + 1_000_000 * n, site)  # n = 0: FedAvg's seed
                message = coordinator.instruction(
                    MessageKind.FIT, ctx.run_id, ctx.round_no, site, ctx.payloads[site], seed=seed
                )
                delay = (self.latency or {}).get(str(site), 0.0)
                self._jobs[message.message_id] = _Job(site, version, self._clock + delay, self._seq, time.monotonic())
                self._seq += 1
                size = payload_bytes(ctx.payloads[site].arrays)
                traffic["bytes_down"] += size
                coordinator.count_traffic(site, sent=size)
                messages.append(message)
            if messages:
                coordinator.channel.send(messages)

        dispatch()
        while ctx.fold.count < want:
            got = self._next(coordinator)
            if got is None:
                break
            job, reply = got
            if self.simulated:
                self._clock = max(self._clock, job.finish)
            coordinator.count_traffic(job.site, received=payload_bytes(reply.payload.arrays))
            if reply.has_error:
                ctx.failures[job.site] = reply.error or "error"
                failed.add(job.site)
            else:
                traffic["bytes_up"] += payload_bytes(reply.payload.arrays)
                reference = self._models[job.version]
                try:
                    fit = fit_result(reply, spec, reference)
                    add_stale(job.site, fit, reference=reference, staleness=version - job.version)
                except (SerdeError, ValueError) as exc:
                    ctx.failures[job.site] = str(exc)
                    failed.add(job.site)
                    log.warning("round %d: rejected update from %s: %s", ctx.round_no, job.site, exc)
                else:
                    ctx.site_fit[job.site] = {"num_examples": float(fit.num_examples), **fit.metrics}
            due_now = self.simulated and any(j.finish <= self._clock for j in self._jobs.values())
            if ctx.fold.count < want and not due_now:
                dispatch()
        in_use = {job.version for job in self._jobs.values()} | {version}
        for old in [v for v in self._models if v not in in_use]:
            del self._models[old]
        out: Metrics = {**traffic, "in_flight": float(len(self._jobs))}
        if self.simulated:
            out["async_clock_s"] = self._clock
        return out

    # -- waiting for the next update ----------------------------------------------------

    def _next(self, coordinator: Coordinator) -> tuple[_Job, Message] | None:
        """The next reply to fold: by virtual finish time (simulated) or arrival (real)."""
        timeout = coordinator.round_timeout_s
        while self._jobs:
            if self.simulated:
                key, job = min(self._jobs.items(), key=lambda kv: (kv[1].finish, kv[1].seq))
                if key in self._arrived:
                    del self._jobs[key]
                    return job, self._arrived.pop(key)
            else:
                for key in list(self._arrived):  # dict order is arrival order
                    reply = self._arrived.pop(key)
                    return self._jobs.pop(key), reply
                key, job = min(self._jobs.items(), key=lambda kv: kv[1].sent_at)
            remaining = job.sent_at + timeout - time.monotonic()
            if remaining <= 0:
                del self._jobs[key]
                self._arrived.pop(key, None)
                return job, Message(
                    kind=MessageKind.FIT,
                    run_id=self._run_id or RunId(""),
                    round_no=job.version,
                    site=job.site,
                    reply_to=key,
                    error=f"no fit reply within {timeout:g} s",
                )
            for reply in coordinator.channel.receive(timeout_s=remaining):
                if not self.take(reply):
                    log.warning("ignored reply %s from %s: answers no work in flight", reply.message_id, reply.site)
                    continue
                if not self.simulated or reply.reply_to == key:
                    break
        return None
