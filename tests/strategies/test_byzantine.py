"""One hostile site out of five: FedAvg collapses, robust aggregation does not."""

from dataclasses import replace

import numpy as np
import pytest

from fedcare.data.federated import concat
from fedcare.datasets.heart_disease import load_heart_disease
from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.recorder import RunSpec
from fedcare.runtime.simulation import build_nodes
from fedcare.strategies import make_strategy
from fedcare.task import ArrayDataset, SiteData, task_hash
from fedcare.tasks import make_task
from fedcare.transport.inprocess import InProcessChannel
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

FIT = {"optimizer": "sgd", "lr": 0.05, "batch_size": 16, "local_epochs": 1}
ROUNDS = 5
ATTACKER = SiteId("site-4")


def five_sites() -> tuple[dict[SiteId, SiteData], ArrayDataset]:
    """Heart disease training rows of all 4 hospitals, seeded split into 5 sites."""
    data = load_heart_disease()
    train = concat([d.train for d in data.sites.values()])
    test = concat([d.test for d in data.sites.values()])
    order = np.random.default_rng(2024).permutation(len(train))
    sites = {}
    for k, idx in enumerate(np.array_split(order, 5)):
        part = ArrayDataset(x=train.x[idx], y=train.y[idx])
        sites[SiteId(f"site-{k}")] = SiteData(train=part, test=test)
    return sites, test


def sign_flipping(handle, scale: float):
    """Wrap a site's handler: reply ``x - scale * (y - x)`` instead of its trained ``y``."""

    def hostile(message: Message) -> Message:
        reply = handle(message)
        if message.kind is not MessageKind.FIT or reply.has_error:
            return reply
        x, y = message.payload.arrays["model"], reply.payload.arrays["model"]
        bad = {k: (x[k] - scale * (y[k] - x[k])).astype(x[k].dtype) for k in x}
        return replace(reply, payload=Payload(arrays={"model": bad}, metrics=reply.payload.metrics))

    return hostile


def accuracy(strategy_name: str, params: dict, *, attack: bool) -> float:
    sites, test = five_sites()
    task = make_task("logreg", n_features=test.x.shape[1])
    nodes = build_nodes(sites, task)
    handlers = {s: n.handle for s, n in nodes.items()}
    if attack:
        handlers[ATTACKER] = sign_flipping(handlers[ATTACKER], scale=10.0)
    channel = InProcessChannel(handlers, max_workers=2)
    strategy = make_strategy(strategy_name, fit_config=FIT, **params)
    digest = task_hash(task)
    coordinator = Coordinator(
        channel=channel,
        strategy=strategy,
        task_name=task.name,
        task_hash=digest,
        rounds=ROUNDS,
        seed=5,
        evaluate=False,
    )
    spec = RunSpec(
        run_id=RunId("byz"),
        name="byz",
        dataset="heart",
        strategy=strategy_name,
        task=task.name,
        task_hash=digest,
        seed=5,
        rounds=ROUNDS,
        config={},
    )
    try:
        result = coordinator.run(task.init_model(np.random.default_rng(5)), spec=spec)
    finally:
        channel.close()
    return task.evaluate(result.state.model, test).metrics["accuracy"]


@pytest.fixture(scope="module")
def clean() -> float:
    return accuracy("fedavg", {}, attack=False)


def test_fedavg_collapses_under_one_sign_flipping_site(clean):
    assert clean > 0.75  # the clean federation learns
    attacked = accuracy("fedavg", {}, attack=True)
    assert attacked < clean - 0.15


@pytest.mark.parametrize(
    ("name", "params"), [("median", {}), ("trimmed_mean", {"beta": 0.2}), ("krum", {"f": 1, "m": 1})]
)
def test_robust_rules_stay_within_three_points_of_the_clean_run(clean, name, params):
    assert accuracy(name, params, attack=True) >= clean - 0.03
