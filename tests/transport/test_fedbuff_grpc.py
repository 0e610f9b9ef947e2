"""FedBuff over the real gRPC channel (mutual TLS, 127.0.0.1): updates folded in arrival order."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import shift_sites
from tests.transport.grpc_helpers import Deployment

from fedcare.runtime.asynchronous import BufferedAsyncFit
from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.recorder import RunSpec
from fedcare.strategies import FedBuff
from fedcare.task import task_hash
from fedcare.types import RunId

pytestmark = pytest.mark.grpc


def test_fedbuff_rounds_over_grpc_fold_k_updates_each_with_their_staleness(deployment: Deployment):
    deployment.nodes(shift_sites(4))
    assert len(deployment.channel.wait_for_sites(4, timeout_s=20)) == 4, deployment.errors
    task = deployment.task
    coordinator = Coordinator(
        channel=deployment.channel,
        strategy=FedBuff(buffer_size=2, staleness_exponent=0.0),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=4,
        round_timeout_s=20.0,
        evaluate=True,  # evaluation exchanges in between must not swallow fit replies in flight
    )
    assert isinstance(coordinator.fit_workflow, BufferedAsyncFit)
    assert not coordinator.fit_workflow.simulated
    spec = RunSpec(RunId("run-1"), "t", "", "fedbuff", task.name, task_hash(task), 0, 4)
    result = coordinator.run(task.init_model(np.random.default_rng(0)), spec=spec)
    assert all(not r.failures for r in result.rounds)
    # each server step adds a weighted mean of two sites' shifts (1e-3 .. 4e-3), whatever their order
    moved = result.state.model["w"] - np.linspace(-1, 1, 8, dtype=np.float32)
    assert np.all(moved >= 4 * 1e-3 - 1e-6) and np.all(moved <= 4 * 4e-3 + 1e-6)
    assert [r.fit_metrics["num_examples"] > 0 for r in result.rounds] == [True] * 4
    assert len(result.rounds[-1].site_eval) == 4
