"""Peer-to-peer rounds: the sites aggregate; the coordinator only relays bytes it cannot read.

:class:`PeerToPeerFit` is a fit workflow (``[secure_aggregation] mode = "p2p"``). There is
no aggregator: every site keeps its own copy of the run's model between rounds (its
per-run memory), and each round

1-3. the sites run SecAgg+'s ``advertise_keys``, ``share_keys`` and ``masked_input`` on the
     complete graph (X25519 agreements, Shamir shares of the self-mask seed ``b`` and the
     mask-key seed sent AES-GCM encrypted per recipient); each trains from its **own**
     copy, after checking its digest against the one the round names;
4.   ``p2p.unmask``: each site seals its unmask shares in one AES-GCM box per other
     survivor (the coordinator never sees a share in clear, so it cannot learn even the sum);
5.   ``p2p.aggregate``: the coordinator relays every masked update and the boxes; every
     site unmasks the sum itself (:class:`~fedcare.secure.p2p_site.PeerToPeerSiteHandler`),
     computes the FedAvg model and answers with its sha256. All digests must agree, or the
     run stops with :class:`~fedcare.secure.errors.ModelDivergenceError` naming the sites.

The coordinator's own state keeps the public initial model (seeded by the study) until
the last round, when one in-sync site (the first by id) returns the agreed model, checked
against the agreed digest, for the report, the card and the registry. Sites evaluate
their own copy. Threat model, bytes and limits: ``docs/p2p.md``.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcare.errors import ConfigError, NotEnoughSitesError, SerdeError
from fedcare.protocols import FitPhase, RoundDriver
from fedcare.secure.encoding import FixedPointCodec
from fedcare.secure.errors import ModelDivergenceError, SecAggAbort, SecAggError
from fedcare.secure.p2p_wire import (
    AGGREGATE,
    DIGEST_KEY,
    EVALUATE_KEY,
    EXPECTED_KEY,
    FLAG,
    SUM,
    UNMASK,
    WEIGHT_KEY,
    AggregateIns,
    model_digest,
    parse_bundles,
)
from fedcare.secure.server import SecAggServer
from fedcare.secure.stages import (
    STAGE_KEY,
    MaskedInputIns,
    MaskedInputRes,
    ShareKeysRes,
    Stage,
    UnmaskIns,
    parse_reply,
)
from fedcare.serde import check_state, spec_of
from fedcare.types import ConfigValue, MessageKind, Metrics, ModelState, Payload, SiteId

__all__ = ["LINEAR_STRATEGIES", "PeerToPeerFit"]

log = logging.getLogger(__name__)

#: Strategies whose new model every site can compute from the sum alone: the weighted mean.
LINEAR_STRATEGIES = ("fedavg", "fedprox")


@dataclass
class PeerToPeerFit:
    """Serverless rounds: SecAgg+ masks, every site unmasks and averages, digests must agree.

    Attributes
    ----------
    codec : FixedPointCodec (default: clip 1.0, 16 bits, mod 2^32)
        Encoding of each site's update (trained minus its copy of the model).
    threshold : int or float (default: 0.5)
        Shares to reconstruct a secret: an int, or a fraction of the ``n`` sites (rounded up, >= 2).
    relay : str (default: "all")
        ``"all"``: every site receives every survivor's masked vector (N vectors down; it checks
        that its own is among them); ``"sum"``: the coordinator adds the masked vectors it
        cannot read and relays one sum (one vector down; the site cannot check its own is in it).
    release_final : bool (default: True)
        In the last round one site returns the agreed model to the coordinator (report, card).
    seed : int or None (default: None)
        Seeds the session ids (tests and demos); ``None`` uses the OS CSPRNG.
    """

    codec: FixedPointCodec = field(default_factory=FixedPointCodec)
    threshold: int | float = 0.5
    relay: str = "all"
    release_final: bool = True
    seed: int | None = None

    #: Recorded with each round: what protected the updates on the wire.
    protection = "p2p-secagg+"

    def __post_init__(self) -> None:
        """Validate the configuration; the run's agreed digest and in-sync sites start empty."""
        t = self.threshold
        if isinstance(t, bool) or not (isinstance(t, int) and t >= 1 or isinstance(t, float) and 0 < t <= 1):
            raise ConfigError(f"PeerToPeerFit.threshold must be an int >= 1 or a fraction in (0, 1], got {t}")
        if self.relay not in ("all", "sum"):
            raise ConfigError(f"PeerToPeerFit.relay must be 'all' or 'sum', got {self.relay!r}")
        self.agreed: str | None = None
        self.in_sync: set[SiteId] = set()
        self.digests: dict[int, dict[SiteId, str]] = {}
        self.total_weight = 0.0  # W of the last round's sum, as the sites report it (SecAgg+'s server learns it too)

    def threshold_for(self, n: int) -> int:
        """The reconstruction threshold with ``n`` sites (each secret has ``n`` holders)."""
        if isinstance(self.threshold, int):
            return min(self.threshold, n)
        return min(n, max(2, math.ceil(self.threshold * n)))

    def evaluate_payload(self, model: ModelState) -> Payload:
        """Evaluate instructions: each site evaluates its own copy (the coordinator sends no model)."""
        return Payload(config={EVALUATE_KEY: "site"})

    def _check(self, coordinator: RoundDriver, ctx: FitPhase) -> None:
        name = coordinator.strategy.name
        if name not in LINEAR_STRATEGIES:
            raise ConfigError(
                f"strategy {name!r} cannot run peer-to-peer: every site computes the new model from the sum alone, "
                f"so only the weighted mean is available ({', '.join(LINEAR_STRATEGIES)}); median, trimmed mean and "
                "Krum need individual updates, and server optimisers (FedAdam...) keep a state at the coordinator"
            )
        if getattr(ctx.fold, "add_sum", None) is None:
            raise ConfigError(f"strategy {name!r} does not fold a weighted sum; it cannot run peer-to-peer")
        compressed = sorted({str(p.config.get("compression")) for p in ctx.payloads.values()} - {"none", "None"})
        if compressed:
            raise ConfigError(f"compression {', '.join(compressed)} cannot run peer-to-peer (masked values)")
        if self.agreed is None and ctx.round_no > 1:
            raise ConfigError(
                f"round {ctx.round_no}: a peer-to-peer run cannot resume from a checkpoint (the model lives at the "
                "sites and the coordinator has no agreed digest); start the run again"
            )

    def run_fit(self, coordinator: RoundDriver, ctx: FitPhase) -> Metrics:
        """Relay the five stages for ``ctx``'s in-sync sites; check that their new models agree."""
        self._check(coordinator, ctx)
        first = self.agreed is None
        if first:
            self.agreed = model_digest(ctx.state.model)
            self.in_sync = set(ctx.payloads)
        for s in sorted(set(ctx.payloads) - self.in_sync):
            ctx.failures[s] = "out of sync: its copy of the model missed an earlier round (it rejoins in a new run)"
        sites = sorted(set(ctx.payloads) & self.in_sync)
        size = int(sum(int(np.asarray(v).size) for v in ctx.state.model.values()))
        n = len(sites)
        if n == 0:
            raise NotEnoughSitesError(f"round {ctx.round_no}: no site holds the agreed model any more")
        threshold = self.threshold_for(n)
        rng = np.random.default_rng([self.seed, ctx.round_no]) if self.seed is not None else None
        try:
            server = SecAggServer(
                sites=sites,
                run_id=str(ctx.run_id),
                round_no=ctx.round_no,
                vector_size=size,
                codec=self.codec,
                degree=max(1, n - 1),
                threshold=threshold,
                max_site_weight=self.codec.default_site_weight(n),
                min_survivors=max(coordinator.min_sites, threshold),
                rng=rng,
            )
        except SecAggError as exc:
            raise ConfigError(str(exc)) from None
        site_metrics: dict[SiteId, dict[str, float]] = {}
        commitments: dict[SiteId, bytes] = {}
        masked: dict[SiteId, Any] = {}
        try:
            instructions: dict[SiteId, Any] = server.start()
            for stage in Stage:
                if stage is Stage.UNMASK:
                    break
                payloads = {s: self._payload(ins, ctx.payloads[s], first) for s, ins in instructions.items()}
                stage_failures: dict[SiteId, str] = {}
                for reply in coordinator.exchange(
                    MessageKind.SECAGG, ctx.run_id, ctx.round_no, payloads, stage_failures
                ):
                    try:
                        parsed = parse_reply(
                            reply.payload,
                            f"p2p {stage.value} reply from {reply.site}",
                            size=size + 1,
                            dtype=self.codec.dtype,
                        )
                        server.receive(reply.site, parsed)
                    except (SecAggError, SerdeError) as exc:
                        stage_failures[reply.site] = str(exc)
                        continue
                    if isinstance(parsed, ShareKeysRes):
                        commitments[reply.site] = parsed.b_commitment
                    if isinstance(parsed, MaskedInputRes):
                        site_metrics[reply.site] = dict(parsed.metrics)
                        masked[reply.site] = parsed.masked
                self._fail(ctx, stage.value, stage_failures)
                instructions = server.advance()
        except SecAggAbort as exc:
            raise NotEnoughSitesError(str(exc)) from None
        unmask: dict[SiteId, UnmaskIns] = dict(instructions)
        survivors = sorted(unmask)
        dropped = sorted(next(iter(unmask.values())).dropped) if unmask else []
        boxes = self._unmask_stage(coordinator, ctx, unmask, threshold)
        agreed, released = self._aggregate_stage(
            coordinator, ctx, survivors, dropped, masked, boxes, commitments, server.session
        )
        # the coordinator folds the model it holds (the public initial one, or the released final one)
        model = released if released is not None else ctx.state.model
        means = _mean_metrics({s: site_metrics[s] for s in survivors if s in site_metrics})
        ctx.fold.add_sum(  # type: ignore[attr-defined]
            {k: np.asarray(v, dtype=np.float64) for k, v in model.items()}, 1.0, count=len(survivors), metrics=means
        )
        for s in survivors:
            ctx.site_fit[s] = site_metrics.get(s, {})
        return {
            "num_examples": self.total_weight,
            "p2p_sites": float(len(self.in_sync)),
            "p2p_released": float(released is not None),
            "secagg_survivors": float(len(survivors)),
            "secagg_dropped": float(len(dropped)),
            "secagg_threshold": float(threshold),
            "secagg_degree": float(n - 1),
        }

    def _payload(self, ins: Any, base: Payload, first: bool) -> Payload:
        """A SecAgg+ stage instruction flagged peer-to-peer; the masked-input one names the model's digest.

        The (public, seeded) initial model travels in the first round only; later rounds
        carry the fit config and no model: each site trains from its own copy.
        """
        if isinstance(ins, MaskedInputIns):
            arrays = {k: v for k, v in base.arrays.items() if k != "model" or first}
            payload = ins.to_payload(Payload(arrays=arrays, config=base.config, metrics=base.metrics))
        else:
            payload = ins.to_payload()
        extra: dict[str, ConfigValue] = {FLAG: True}
        if isinstance(ins, MaskedInputIns) and self.agreed is not None:
            extra[EXPECTED_KEY] = self.agreed
        return Payload(arrays=payload.arrays, config={**payload.config, **extra}, metrics=payload.metrics)

    @staticmethod
    def _fail(ctx: FitPhase, stage: str, failures: Mapping[SiteId, str]) -> None:
        for site, error in failures.items():
            ctx.failures.setdefault(site, f"p2p {stage}: {error}")
            log.warning("round %d: %s failed p2p %s: %s", ctx.round_no, site, stage, error)

    def _unmask_stage(
        self, coordinator: RoundDriver, ctx: FitPhase, unmask: Mapping[SiteId, UnmaskIns], threshold: int
    ) -> dict[SiteId, dict[SiteId, bytes]]:
        """Stage 4: each survivor's sealed shares, one box per other survivor (relayed unread)."""
        payloads = {}
        for s, ins in unmask.items():
            p = ins.to_payload()
            payloads[s] = Payload(config={**p.config, STAGE_KEY: UNMASK, FLAG: True})
        failures: dict[SiteId, str] = {}
        boxes: dict[SiteId, dict[SiteId, bytes]] = {}
        for reply in coordinator.exchange(MessageKind.SECAGG, ctx.run_id, ctx.round_no, payloads, failures):
            try:
                got = parse_bundles(reply.payload, f"p2p unmask reply from {reply.site}")
                want = set(unmask) - {reply.site}
                if set(got) != want:
                    raise SecAggError(f"boxes for {sorted(got)}, expected {sorted(want)}")
            except SecAggError as exc:
                failures[reply.site] = str(exc)
                continue
            boxes[reply.site] = got
        self._fail(ctx, UNMASK, failures)
        if len(boxes) < threshold:
            raise NotEnoughSitesError(
                f"round {ctx.round_no}: peer-to-peer unmask: {len(boxes)} site(s) sent their shares, threshold "
                f"{threshold}: no site can unmask the sum ({len(unmask) - len(boxes)} dropped after masking)"
            )
        return boxes

    def _aggregate_stage(
        self,
        coordinator: RoundDriver,
        ctx: FitPhase,
        survivors: list[SiteId],
        dropped: list[SiteId],
        masked: Mapping[SiteId, Any],
        boxes: Mapping[SiteId, Mapping[SiteId, bytes]],
        commitments: Mapping[SiteId, bytes],
        session: bytes,
    ) -> tuple[str, ModelState | None]:
        """Stage 5: every site unmasks and averages; all digests must agree."""
        total_rounds = getattr(coordinator, "rounds", None)
        last = isinstance(total_rounds, int) and ctx.round_no >= total_rounds and self.release_final
        aggregators = sorted(boxes)
        releaser = aggregators[0] if last else None
        vectors: dict[str, Any] = {u: masked[u] for u in survivors}
        if self.relay == "sum":  # ring addition of masked vectors: the coordinator still reads nothing
            total = np.zeros_like(masked[survivors[0]])
            for u in survivors:
                np.add(total, masked[u], out=total)
            vectors = {SUM: total}
        payloads = {
            s: AggregateIns(
                session=session,
                survivors=tuple(survivors),
                dropped=tuple(dropped),
                masked=vectors,
                summed=self.relay == "sum",
                boxes={v: boxes[v][s] for v in aggregators if v != s},
                commitments={u: commitments[u] for u in survivors},
                release=s == releaser,
            ).to_payload()
            for s in aggregators
        }
        failures: dict[SiteId, str] = {}
        digests: dict[SiteId, str] = {}
        weights: dict[SiteId, int] = {}
        released: ModelState | None = None
        for reply in coordinator.exchange(MessageKind.SECAGG, ctx.run_id, ctx.round_no, payloads, failures):
            digest = reply.payload.config.get(DIGEST_KEY)
            if not isinstance(digest, str) or len(digest) != 64:
                failures[reply.site] = f"p2p aggregate reply from {reply.site} carries no model digest"
                continue
            digests[reply.site] = digest
            weight = reply.payload.config.get(WEIGHT_KEY)
            if isinstance(weight, int) and not isinstance(weight, bool) and weight > 0:
                weights[reply.site] = weight
            if reply.site == releaser:
                model = reply.payload.arrays.get("model")
                try:
                    if model is None:
                        raise SerdeError("no 'model' record")
                    check_state(model, spec_of(ctx.state.model), where=f"released model from {reply.site}")
                    if model_digest(model) != digest:
                        raise SerdeError("its bytes do not match the digest it reported")
                    released = dict(model)
                except SerdeError as exc:
                    failures[reply.site] = f"released model: {exc}"
        self._fail(ctx, AGGREGATE, failures)
        self.digests[ctx.round_no] = dict(sorted(digests.items()))
        groups: dict[str, list[SiteId]] = defaultdict(list)
        for s, d in sorted(digests.items()):
            groups[d].append(s)
        if len(groups) > 1:
            detail = "; ".join(
                f"{d[:16]}: {', '.join(ss)}" for d, ss in sorted(groups.items(), key=lambda g: -len(g[1]))
            )
            raise ModelDivergenceError(f"round {ctx.round_no}: the sites' models disagree ({detail})")
        if not groups:
            raise NotEnoughSitesError(f"round {ctx.round_no}: no site reported its new model's digest")
        agreed = next(iter(groups))
        self.total_weight = float(max(weights.values(), default=0))
        self.agreed = agreed
        self.in_sync = set(digests)
        recorder = getattr(coordinator, "recorder", None)
        if recorder is not None:
            recorder.record_result(
                ctx.run_id,
                f"p2p_digest_round_{ctx.round_no}",
                {"round": ctx.round_no, "digest": agreed, "sites": sorted(digests), "released": released is not None},
            )
        return agreed, released


def _mean_metrics(site_metrics: Mapping[SiteId, Mapping[str, float]]) -> dict[str, float]:
    """Plain mean of each training metric over the sites that report it (as SecAgg+ does)."""
    keys = sorted({k for m in site_metrics.values() for k in m})
    return {k: float(np.mean([m[k] for m in site_metrics.values() if k in m])) for k in keys}
