"""One site pipeline: FedBN, FedPer and Ditto run under SecAgg+ exactly as without it (fixed-point precision)."""

import numpy as np
import pytest
from tests.personal.test_personal import FIT, shifted_sites

from fedcare.personal import model_for
from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.policy import SitePolicy
from fedcare.runtime.recorder import RunSpec
from fedcare.runtime.simulation import build_nodes
from fedcare.secure import FixedPointCodec, SecAggPlusWorkflow
from fedcare.strategies.fedavg import FedAvg
from fedcare.task import task_hash
from fedcare.tasks import make_task
from fedcare.transport.inprocess import InProcessChannel
from fedcare.types import RunId

ROUNDS = 2
CODEC = FixedPointCodec(clip_range=4.0, bits=24, modulus_bits=64)


def run(task, fit_config, *, secure: bool):
    nodes = build_nodes(shifted_sites(), task)
    if secure:  # the sites insist on it: a plain fit would be refused
        for node in nodes.values():
            node.policy = SitePolicy(require_secure_aggregation=True)
    channel = InProcessChannel({s: n.handle for s, n in nodes.items()}, max_workers=1)
    local = getattr(task, "local_keys", lambda: set())()
    shared = {k: v for k, v in task.init_model(np.random.default_rng(0)).items() if k not in local}
    coordinator = Coordinator(
        channel=channel,
        strategy=FedAvg(fit_config=fit_config),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=ROUNDS,
        seed=3,
        evaluate=False,
        fit_workflow=SecAggPlusWorkflow(codec=CODEC, seed=0) if secure else None,
    )
    spec = RunSpec(RunId("r"), "p", "toy", "fedavg", task.name, task_hash(task), 3, ROUNDS, {})
    try:
        result = coordinator.run(shared, spec=spec)
    finally:
        channel.close()
    assert all(not r.failures for r in result.rounds), result.rounds[-1].failures
    personal = {s: model_for(task, result.state.model, n.site_state[RunId("r")]) for s, n in nodes.items()}
    return result.state.model, personal


@pytest.mark.parametrize(
    ("local", "fit_config"),
    [("norm", FIT), ("head", FIT), ("none", {**FIT, "ditto_lambda": 0.5, "ditto_epochs": 1})],
    ids=["fedbn", "fedper", "ditto"],
)
def test_personalised_training_under_secagg_equals_it_without(local, fit_config):
    # FedBN keeps its BatchNorm layers local; FedPer its head (no BatchNorm: its integer
    # ``num_batches_tracked`` would be averaged, which secure aggregation does differently)
    kwargs = {"input_norm": True, "hidden_norm": True, "local": local} if local == "norm" else {"local": local}
    task = make_task("mlp", n_features=4, hidden=(4,), **kwargs)
    plain_global, plain_personal = run(task, fit_config, secure=False)
    secure_global, secure_personal = run(task, fit_config, secure=True)
    # each round's summed update is exact up to the codec's rounding, which then feeds the next round
    tol = 50 * CODEC.error_bound
    assert set(secure_global) == set(plain_global)
    for name, value in plain_global.items():
        np.testing.assert_allclose(secure_global[name], value, atol=tol, err_msg=name)
    for site, model in plain_personal.items():  # local entries (FedBN/FedPer) and Ditto's model stay at the site
        for name, value in model.items():
            np.testing.assert_allclose(secure_personal[site][name], value, atol=tol, err_msg=f"{site} {name}")
    assert not set(secure_global) & set(getattr(task, "local_keys", lambda: set())())
