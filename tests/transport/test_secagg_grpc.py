"""SecAgg+ over the real gRPC channel (mutual TLS, 127.0.0.1): same sum as in simulation."""

from __future__ import annotations

import numpy as np
import pytest
from tests.conftest import shift_sites
from tests.transport.grpc_helpers import Deployment

from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.policy import SitePolicy
from fedcare.runtime.recorder import RunSpec
from fedcare.secure import FixedPointCodec, SecAggPlusWorkflow
from fedcare.strategies.fedavg import FedAvg
from fedcare.task import task_hash
from fedcare.types import RunId

pytestmark = pytest.mark.grpc


def test_secagg_rounds_over_grpc_give_the_plain_fedavg_result(deployment: Deployment):
    sites = shift_sites(4)
    deployment.nodes(sites, policy=SitePolicy(require_secure_aggregation=True, min_peers=3))
    assert len(deployment.channel.wait_for_sites(4, timeout_s=20)) == 4, deployment.errors
    task = deployment.task
    codec = FixedPointCodec(clip_range=0.05)
    coordinator = Coordinator(
        channel=deployment.channel,
        strategy=FedAvg(),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=2,
        round_timeout_s=20.0,
        evaluate=False,
        fit_workflow=SecAggPlusWorkflow(codec=codec, seed=0),
    )
    spec = RunSpec(RunId("run-1"), "t", "", "fedavg", task.name, task_hash(task), 0, 2)
    result = coordinator.run(task.init_model(np.random.default_rng(0)), spec=spec)
    x0 = np.linspace(-1, 1, 8, dtype=np.float32)
    np.testing.assert_allclose(result.state.model["w"], x0 + 2 * 1e-3 * 9 / 3, atol=2 * codec.error_bound + 1e-6)
    assert all(r.fit_metrics["secagg_survivors"] == 4 and not r.failures for r in result.rounds)
