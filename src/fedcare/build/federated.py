"""Run a built study over any Channel: combine statistics, stamp the study, run the rounds.

The same function runs a simulated study (in-process channel of site gates) and a
deployed one (gRPC channel of dialled-in nodes); only the channel differs.
"""

from __future__ import annotations

from collections.abc import Callable

from fedcare.build.prep import StudyChannel
from fedcare.build.run import RunPlan, combine_statistics, make_coordinator
from fedcare.protocols import Recorder, RoundReport, RunSpec
from fedcare.runtime.coordinator import RunResult
from fedcare.strategies.base import ServerState
from fedcare.transport.base import Channel
from fedcare.types import RunId

__all__ = ["run_federated"]


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
        stats = combine_statistics(plan, stamped, run_id=run_id)
        if stats is not None:
            stamped.set_prep(stats)
        coordinator = make_coordinator(plan, stamped, recorder=recorder, on_round=on_round)
        return coordinator.run(plan.initial_model(), spec=spec, state=state, start_round=start_round)
    finally:
        if close:
            channel.close()
