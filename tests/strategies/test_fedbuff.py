"""FedBuff: buffered asynchronous rounds, staleness weights, determinism on a simulated clock."""

import threading
import time

import numpy as np
import pytest

from fedcare.datasets.heart_disease import load_heart_disease
from fedcare.errors import ConfigError
from fedcare.runtime.asynchronous import BufferedAsyncFit
from fedcare.runtime.simulation import build_nodes, run_simulation
from fedcare.strategies import FedBuff, StalenessFold, make_strategy
from fedcare.tasks import make_task
from fedcare.types import FitResult, RunId, SiteId

FIT = {"optimizer": "sgd", "lr": 0.05, "batch_size": 16, "local_epochs": 1}


@pytest.fixture(scope="module")
def heart():
    data = load_heart_disease()
    return data, make_task("logreg", n_features=data.n_features)


def _run(heart, name, rounds=4, nodes=None, **params):
    data, task = heart
    strategy = make_strategy(name, fit_config=FIT, **params)
    return run_simulation(
        sites=data.sites,
        task=task,
        strategy=strategy,
        rounds=rounds,
        seed=3,
        run_id=RunId("fb"),
        max_workers=2,
        nodes=nodes,
    )


def test_fedbuff_with_zero_latency_equals_fedavg(heart):
    data, _ = heart
    avg = _run(heart, "fedavg")
    buff = _run(heart, "fedbuff", simulated_latency=dict.fromkeys(data.site_ids(), 0.0))
    for name, value in avg.state.model.items():
        np.testing.assert_allclose(buff.state.model[name], value, rtol=1e-6, atol=1e-7)
    assert all(r.fit_metrics["staleness_max"] == 0 for r in buff.rounds)
    assert [len(r.site_fit) for r in buff.rounds] == [4] * 4


def _slow_site_run(heart, delays=None):
    """FedBuff, K = 2, one site 4x slower on the simulated clock; threads finish in a shuffled real order."""
    data, task = heart
    sites = data.site_ids()
    latency = dict.fromkeys(sites, 1.0) | {sites[0]: 4.0}
    nodes = build_nodes(data.sites, task)
    if delays is not None:  # perturb real finishing order: the simulated clock must not care

        def slowed(node, delay):
            handle = node.handle

            def wrapped(message):
                time.sleep(delay)
                return handle(message)

            return wrapped

        for site, delay in zip(sites, delays, strict=True):
            nodes[site].handle = slowed(nodes[site], delay)
    return _run(heart, "fedbuff", rounds=8, nodes=nodes, buffer_size=2, simulated_latency=latency)


def test_fedbuff_is_deterministic_on_the_simulated_clock_whatever_the_thread_order(heart):
    a = _slow_site_run(heart)
    b = _slow_site_run(heart, delays=[0.0, 0.05, 0.0, 0.03])
    for name in a.state.model:
        np.testing.assert_array_equal(a.state.model[name], b.state.model[name])
    assert [r.fit_metrics["async_clock_s"] for r in a.rounds] == [r.fit_metrics["async_clock_s"] for r in b.rounds]
    # the slow site lands once, four ticks in, carrying staleness; fast sites keep the buffer moving
    slow = heart[0].site_ids()[0]
    assert sum(slow in r.site_fit for r in a.rounds) == 1
    assert max(r.fit_metrics["staleness_max"] for r in a.rounds) >= 4
    assert a.rounds[-1].fit_metrics["async_clock_s"] < 8 * 4.0 / 4  # a synchronous round waits 4 ticks


def test_staleness_discounts_an_update():
    ref = {"w": np.zeros(3, np.float32)}
    fold = StalenessFold(ref, staleness_exponent=0.5)
    fold.add_stale(SiteId("a"), FitResult({"w": np.ones(3, np.float32)}, 10), reference=ref, staleness=3)
    fold.add(SiteId("b"), FitResult({"w": np.ones(3, np.float32)}, 10))
    np.testing.assert_allclose(fold.step()["w"], (0.5 + 1.0) / 2)
    assert fold.metrics()["staleness_mean"] == 1.5


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"buffer_size": 0}, "fedbuff buffer_size must be a positive integer, got 0"),
        ({"server_lr": 0.0}, "fedbuff server_lr must be positive"),
        ({"simulated_latency": {"a": -1.0}}, r"simulated_latency\['a'\] must be seconds >= 0"),
    ],
)
def test_bad_fedbuff_settings_are_one_line(params, message):
    with pytest.raises(ConfigError, match=message):
        FedBuff(**params)


def test_a_site_that_never_answers_is_a_recorded_failure_and_the_others_carry_on(heart):
    data, task = heart
    nodes = build_nodes(data.sites, task)
    stuck = data.site_ids()[1]
    release = threading.Event()

    def hang(message):
        release.wait(10)
        return message.reply(error="late")

    nodes[stuck].handle = hang
    for site in data.site_ids():
        if site != stuck:
            handle = nodes[site].handle
            nodes[site].handle = lambda m, h=handle: (time.sleep(0.4), h(m))[1]
    from fedcare.runtime.coordinator import Coordinator
    from fedcare.runtime.recorder import RunSpec
    from fedcare.task import task_hash
    from fedcare.transport.inprocess import InProcessChannel

    channel = InProcessChannel({s: n.handle for s, n in nodes.items()}, max_workers=4)
    strategy = FedBuff(fit_config=FIT, buffer_size=3)
    coordinator = Coordinator(
        channel=channel,
        strategy=strategy,
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=6,
        round_timeout_s=1.5,
        evaluate=False,
    )
    assert isinstance(coordinator.fit_workflow, BufferedAsyncFit)
    spec = RunSpec(RunId("t"), "t", "heart", "fedbuff", task.name, task_hash(task), 0, 6)
    try:
        result = coordinator.run(task.init_model(np.random.default_rng(0)), spec=spec)
    finally:
        release.set()
        channel.close()
    failed = [r.failures[stuck] for r in result.rounds if stuck in r.failures]
    assert failed == ["no fit reply within 1.5 s"]  # recorded once, in the round its deadline passed
    assert len(result.rounds) == 6 and all(stuck not in r.site_fit for r in result.rounds)
    assert all(r.fit_metrics["num_examples"] > 0 for r in result.rounds)
