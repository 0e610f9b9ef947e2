"""SecAggPlusWorkflow: the Coordinator's fit phase run as the four SecAgg+ stages.

The Coordinator calls :meth:`SecAggPlusWorkflow.run_fit` instead of its plain
"FIT exchange + fold". Each stage is one :meth:`Coordinator.exchange` of ``secagg``
messages (deadline, validation and failure recording are the Coordinator's), driving
the sans-I/O :class:`SecAggServer`. The unmasked weighted sum is finally handed to the
strategy's fold with ``add_sum``, so any strategy whose fold only needs a weighted sum
(FedAvg, FedProx, the FedOpt family) runs unchanged on top of secure aggregation.

References: Bonawitz et al., CCS 2017; Bell et al., CCS 2020 (SecAgg+).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcare.errors import ConfigError, NotEnoughSitesError, SerdeError
from fedcare.protocols import FitPhase, RoundDriver
from fedcare.secure.dp import DistributedDp, DistributedDpLedger
from fedcare.secure.encoding import FixedPointCodec
from fedcare.secure.errors import SecAggAbort, SecAggError
from fedcare.secure.server import SecAggServer
from fedcare.secure.stages import MaskedInputIns, MaskedInputRes, Stage, parse_reply
from fedcare.types import MessageKind, Metrics, ModelState, SiteId

__all__ = ["SecAggPlusWorkflow"]

log = logging.getLogger(__name__)


def _plan_min_sites(ctx: FitPhase) -> int:
    """The fewest noise shares a distributed-DP plan allows in a sum (``dp.min_sites``; 1 without a plan)."""
    values = [p.config.get("dp.min_sites", 1) for p in ctx.payloads.values()]
    return max((int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)), default=1)


@dataclass
class SecAggPlusWorkflow:
    """Secure aggregation of the fit phase (the server learns only the sum).

    Attributes
    ----------
    codec : FixedPointCodec (default: clip 1.0, 16 bits, mod 2^32)
        Encoding of each site's update (trained minus global model).
    degree : int or None (default: None)
        Neighbours per site in the SecAgg+ graph; ``None``: ``2 * ceil(log2 n)`` (complete when ``n`` is small).
    threshold : int or float (default: 0.5)
        Shares to reconstruct a secret: an int, or a fraction of a site's ``k + 1`` holders (rounded up, >= 2).
    max_site_weight : int or None (default: None)
        Overflow bound on a site's weight (sample count); ``None``: the largest that fits the modulus.
    dp : DistributedDp or None (default: None)
        Distributed Gaussian noise added by the sites before masking; weights become 1.
    seed : int or None (default: None)
        Seeds the graph and the session id (tests and demos); ``None`` uses the OS CSPRNG.
    """

    codec: FixedPointCodec = field(default_factory=FixedPointCodec)
    degree: int | None = None
    threshold: int | float = 0.5
    max_site_weight: int | None = None
    dp: DistributedDp | None = None
    seed: int | None = None
    ledger: DistributedDpLedger | None = None

    def __post_init__(self) -> None:
        """Validate the configuration."""
        if self.degree is not None and self.degree < 1:
            raise ConfigError(f"SecAggPlusWorkflow.degree must be >= 1, got {self.degree}")
        t = self.threshold
        if isinstance(t, bool) or not (isinstance(t, int) and t >= 1 or isinstance(t, float) and 0 < t <= 1):
            raise ConfigError(f"SecAggPlusWorkflow.threshold must be an int >= 1 or a fraction in (0, 1], got {t}")
        if self.dp is not None and self.ledger is None:
            self.ledger = DistributedDpLedger(self.dp)

    def degree_for(self, n: int) -> int:
        """The graph degree used with ``n`` sites."""
        if self.degree is not None:
            return min(self.degree, max(1, n - 1))
        return max(1, min(n - 1, 2 * math.ceil(math.log2(max(2, n)))))

    def threshold_for(self, degree: int) -> int:
        """The reconstruction threshold used with graph ``degree``."""
        if isinstance(self.threshold, int):
            return self.threshold
        return max(min(2, degree + 1), math.ceil(self.threshold * (degree + 1)))

    # -- the seam the Coordinator calls -----------------------------------------------------

    def run_fit(self, coordinator: RoundDriver, ctx: FitPhase) -> Metrics:
        """Run the four stages for ``ctx``'s sampled sites and fold the unmasked sum."""
        compressed = sorted({str(p.config.get("compression")) for p in ctx.payloads.values()} - {"none", "None"})
        if compressed:
            raise ConfigError(
                f"compression {', '.join(compressed)} cannot run under SecAgg+: masked values are uniformly random "
                "field elements that do not compress, and SecAgg+ already sends fixed-point integers of its own bit "
                "width (its FixedPointCodec); use compression without secure aggregation, or secure aggregation alone"
            )
        add_sum = getattr(ctx.fold, "add_sum", None)
        if add_sum is None:
            raise ConfigError(
                f"strategy {coordinator.strategy.name!r} needs individual updates; secure aggregation "
                "works only with strategies whose fold accepts a weighted sum (add_sum)"
            )
        names = list(ctx.state.model)
        shapes = {k: v.shape for k, v in ctx.state.model.items()}
        size = int(sum(int(np.prod(s)) for s in shapes.values()))
        sites = sorted(ctx.payloads)
        degree = self.degree_for(len(sites))
        threshold = min(self.threshold_for(degree), degree + 1)  # every site has >= degree + 1 holders
        max_weight = 1 if self.dp is not None else self.max_site_weight or self.codec.default_site_weight(len(sites))
        rng = np.random.default_rng([self.seed, ctx.round_no]) if self.seed is not None else None
        try:
            server = SecAggServer(
                sites=sites,
                run_id=str(ctx.run_id),
                round_no=ctx.round_no,
                vector_size=size,
                codec=self.codec,
                degree=degree,
                threshold=threshold,
                max_site_weight=max_weight,
                min_survivors=max(coordinator.min_sites, threshold, _plan_min_sites(ctx)),
                dp_clip_norm=self.dp.clip_norm if self.dp else 0.0,
                dp_noise_multiplier=self.dp.noise_multiplier if self.dp else 0.0,
                rng=rng,
            )
        except SecAggError as exc:
            raise ConfigError(str(exc)) from None
        site_metrics: dict[SiteId, dict[str, float]] = {}
        planned = 0
        try:
            instructions: dict[SiteId, Any] = server.start()
            for stage in Stage:
                if stage is Stage.MASKED_INPUT:
                    planned = len(instructions)
                    payloads = {
                        s: ins.to_payload(ctx.payloads[s])
                        for s, ins in instructions.items()
                        if isinstance(ins, MaskedInputIns)
                    }
                else:
                    payloads = {s: ins.to_payload() for s, ins in instructions.items()}
                stage_failures: dict[SiteId, str] = {}
                for reply in coordinator.exchange(
                    MessageKind.SECAGG, ctx.run_id, ctx.round_no, payloads, stage_failures
                ):
                    where = f"secagg {stage.value} reply from {reply.site}"
                    try:
                        parsed = parse_reply(reply.payload, where, size=size + 1, dtype=self.codec.dtype)
                        server.receive(reply.site, parsed)
                    except (SecAggError, SerdeError) as exc:
                        stage_failures[reply.site] = str(exc)
                        continue
                    if isinstance(parsed, MaskedInputRes):
                        site_metrics[reply.site] = dict(parsed.metrics)
                for site, error in stage_failures.items():
                    ctx.failures.setdefault(site, f"secagg {stage.value}: {error}")
                    log.warning("round %d: %s failed secagg %s: %s", ctx.round_no, site, stage.value, error)
                instructions = server.advance()
            result = server.result()
        except SecAggAbort as exc:
            raise NotEnoughSitesError(str(exc)) from None
        # sum_k w_k * model_k = W * global + sum_k w_k * delta_k, reshaped like the model
        sums: ModelState = {}
        offset = 0
        weight = float(result.total_weight)
        for name in names:
            n = int(np.prod(shapes[name]))
            block = result.weighted_sum[offset : offset + n].reshape(shapes[name])
            block += weight * np.asarray(ctx.state.model[name], dtype=np.float64)
            sums[name] = block
            offset += n
        survivors = [s for s in result.survivors if s in site_metrics]
        keys = sorted({k for s in survivors for k in site_metrics[s]})
        means = {k: float(np.mean([site_metrics[s][k] for s in survivors if k in site_metrics[s]])) for k in keys}
        add_sum(sums, weight, count=len(result.survivors), metrics=means)
        for s in result.survivors:
            ctx.site_fit[s] = site_metrics.get(s, {})
        extra: Metrics = {
            "secagg_survivors": float(len(result.survivors)),
            "secagg_dropped": float(len(result.dropped)),
            "secagg_threshold": float(threshold),
            "secagg_degree": float(degree),
        }
        if self.dp is not None and self.ledger is not None:
            entry = self.ledger.charge(ctx.round_no, planned=planned, survived=len(result.survivors))
            extra.update({"dp_epsilon": entry.epsilon, "dp_noise_multiplier_effective": entry.noise_multiplier})
        return extra
