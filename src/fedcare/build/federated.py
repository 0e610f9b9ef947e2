"""Run a built study over any Channel: combine statistics, stamp the study, run the rounds.

The same function runs a simulated study (in-process channel of site gates) and a
deployed one (gRPC channel of dialled-in nodes); only the channel differs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fedcare.build.prep import StudyChannel
from fedcare.build.run import RunPlan, combine_statistics, make_coordinator
from fedcare.errors import ConfigError, FedcareError
from fedcare.protocols import Recorder, RoundReport, RunSpec
from fedcare.runtime.coordinator import RunResult
from fedcare.runtime.exchange import Exchange
from fedcare.runtime.recalibration import describe_fit, fit_platt
from fedcare.runtime.reference import collect_reference
from fedcare.strategies.base import ServerState
from fedcare.study.prep_stats import n_encoded_features
from fedcare.transport.base import Channel
from fedcare.transport.inprocess import InProcessChannel
from fedcare.types import RunId, SiteId

__all__ = ["run_federated", "site_channel"]

log = logging.getLogger(__name__)


def site_channel(
    sites: Mapping[SiteId, Any],
    *,
    backend: str = "inprocess",
    ray_address: str | None = None,
    ray_actors: int | None = None,
    cpus_per_site: float | None = None,
    memory_per_site: int | None = None,
) -> Channel:
    """The channel of a simulation: the sites' gates on threads (``inprocess``) or on Ray actors (``ray``).

    ``ray_actors``, ``cpus_per_site`` and ``memory_per_site`` size the Ray actor pool
    (:class:`~fedcare.transport.ray_channel.RayChannel`'s ``actors``, ``cpus_per_site``,
    ``memory_per_site``); they are refused with another backend.
    """
    if backend == "inprocess":
        ray_only = {"ray_actors": ray_actors, "cpus_per_site": cpus_per_site, "memory_per_site": memory_per_site}
        given = [k for k, v in ray_only.items() if v is not None]
        if given:
            raise ConfigError(f"{given[0]} applies only to the ray backend")
        return InProcessChannel({s: g.handle for s, g in sites.items()})
    if backend == "ray":
        try:  # optional extra: imported only when asked for
            from fedcare.transport.ray_channel import RayChannel
        except ImportError:
            raise ConfigError("backend 'ray' needs the ray extra: pip install 'fedcare[ray]'") from None
        return RayChannel(
            sites,
            address=ray_address,
            actors=ray_actors,
            cpus_per_site=cpus_per_site,
            memory_per_site=memory_per_site,
        )
    raise ConfigError(f"backend must be 'inprocess' or 'ray', got {backend!r}")


def _platt(plan: RunPlan, exchange: Exchange, run_id: RunId, result: RunResult) -> dict[str, Any]:
    """Fit Platt scaling of the final model over the sites' training rows (a failure is recorded, not raised)."""
    try:
        fit, used, failures = fit_platt(
            exchange, run_id=run_id, model=result.state.model, min_sites=plan.study.federation.min_sites
        )
    except FedcareError as exc:
        log.warning("run %s: Platt scaling not fitted: %s", run_id, exc)
        return {"method": "platt", "error": str(exc)}
    return describe_fit(fit, used, failures)


def _reference(plan: RunPlan, exchange: Exchange, run_id: RunId) -> dict[str, Any]:
    """The training cohort's input histograms (drift checks at new sites); a failure is recorded, not raised."""
    try:
        return collect_reference(exchange, run_id=run_id, min_sites=plan.study.federation.min_sites)
    except FedcareError as exc:  # images and streamed records have no table to compare
        log.info("run %s: no reference histograms: %s", run_id, exc)
        return {"error": str(exc)}


def run_federated(
    plan: RunPlan,
    channel: Channel,
    *,
    run_id: RunId,
    spec: RunSpec,
    recorder: Recorder | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
    state: ServerState | None = None,
    start_round: int = 1,
    close: bool = True,
) -> RunResult:
    """Run (or resume, with ``state`` and ``start_round``) ``plan`` over ``channel``; close it after."""
    stamped = StudyChannel(channel, plan.study)
    try:
        coordinator = make_coordinator(plan, stamped, recorder=recorder, on_round=on_round)
        stats = combine_statistics(plan, coordinator.exchanger, run_id=run_id)
        if stats is not None:
            stamped.set_prep(stats)
        result = coordinator.run(plan.initial_model(), spec=spec, state=state, start_round=start_round)
        if recorder is not None:
            if plan.study.evaluation.recalibration == "platt":
                recorder.record_result(run_id, "recalibration", _platt(plan, coordinator.exchanger, run_id, result))
            if plan.study.data.schema is None or n_encoded_features(plan.study) > 0:  # not for image studies
                recorder.record_result(run_id, "reference", _reference(plan, coordinator.exchanger, run_id))
        return result
    finally:
        if close:
            channel.close()
