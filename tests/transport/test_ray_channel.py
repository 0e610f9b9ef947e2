"""RayChannel: the same Coordinator over sites hosted by local Ray actors (2 CPUs)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from fedcare.datasets.heart_disease import load_heart_disease  # noqa: E402
from fedcare.errors import ProtocolError  # noqa: E402
from fedcare.runtime.coordinator import Coordinator  # noqa: E402
from fedcare.runtime.recorder import RunSpec  # noqa: E402
from fedcare.runtime.simulation import build_nodes, run_simulation  # noqa: E402
from fedcare.strategies import make_strategy  # noqa: E402
from fedcare.task import task_hash  # noqa: E402
from fedcare.tasks import make_task  # noqa: E402
from fedcare.transport.ray_channel import RayChannel  # noqa: E402
from fedcare.transport.wire import message_from_parts, message_parts  # noqa: E402
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId  # noqa: E402

pytestmark = pytest.mark.slow  # starts Ray and actor processes (the heart tests' import torch)

FIT = {"optimizer": "sgd", "lr": 0.05, "batch_size": 16, "local_epochs": 1}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def heart():
    data = load_heart_disease()
    return data, make_task("logreg", n_features=data.n_features)


def _coordinator(channel, task, rounds: int, fit=FIT) -> Coordinator:
    return Coordinator(
        channel=channel,
        strategy=make_strategy("fedavg", fit_config=fit),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=rounds,
        seed=3,
        round_timeout_s=120.0,
    )


def _spec(task, rounds: int) -> RunSpec:
    return RunSpec(RunId("ray"), "ray", "heart", "fedavg", task.name, task_hash(task), 3, rounds)


def test_ray_backend_gives_the_in_process_model_for_the_same_seed(local_ray, heart):
    data, task = heart
    local = run_simulation(
        sites=data.sites,
        task=task,
        strategy=make_strategy("fedavg", fit_config=FIT),
        rounds=2,
        seed=3,
        run_id=RunId("ray"),
        max_workers=2,
    )
    channel = RayChannel(build_nodes(data.sites, task), sites_per_actor=2)
    try:
        result = _coordinator(channel, task, 2).run(task.init_model(np.random.default_rng(3)), spec=_spec(task, 2))
    finally:
        channel.close()
    assert ray.is_initialized()  # a channel that joined a running Ray leaves it running
    assert all(not r.failures for r in result.rounds)
    for name, value in local.state.model.items():
        np.testing.assert_array_equal(result.state.model[name], value)
    assert result.rounds[-1].eval_metrics == pytest.approx(local.rounds[-1].eval_metrics)


def test_an_actor_killed_mid_round_is_a_recorded_site_failure_and_the_round_completes(local_ray, heart):
    data, task = heart
    channel = RayChannel(build_nodes(data.sites, task), sites_per_actor=2)
    victims = data.site_ids()[:2]  # the first actor hosts these two sites
    coordinator = _coordinator(channel, task, 1, fit={**FIT, "local_epochs": 60})

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 60
        while not channel._inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        channel.kill_site_actor(victims[0])

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    try:
        result = coordinator.run(task.init_model(np.random.default_rng(3)), spec=_spec(task, 1))
    finally:
        killer.join()
        channel.close()
    report = result.rounds[0]
    assert set(report.failures) == set(victims), report.failures
    assert all("site actor failed" in report.failures[s] for s in victims)
    assert set(report.site_fit) == set(data.site_ids()[2:])


def test_many_sites_share_a_pool_of_actors_and_every_update_is_folded(local_ray):
    from fedcare.task import ArrayDataset, SiteData

    class ShiftTask:  # defined here so Ray ships it by value to the actors
        """Workload 1 of BENCHMARKS.md: a site returns ``x + its offset``; numpy only (no torch in the actors)."""

        name = "shift"

        def params(self):
            return {}

        def init_model(self, rng):
            return {"x": np.linspace(-1, 1, 64, dtype=np.float32)}

        def fit(self, model, data, config, rng):
            from fedcare.types import FitResult

            return FitResult(state={"x": model["x"] + data.x[0, 0]}, num_examples=len(data))

        def evaluate(self, model, data):
            from fedcare.types import EvalResult

            return EvalResult(loss=0.0, num_examples=len(data))

        def predict(self, model, x):
            return np.zeros(len(x))

    n, rounds = 60, 2
    sites = {}
    for k in range(n):
        ds = ArrayDataset(x=np.full((k + 1, 1), 1e-3 * (k + 1), dtype=np.float32), y=np.zeros(k + 1))
        sites[SiteId(f"site-{k:03d}")] = SiteData(train=ds, test=ds)
    task = ShiftTask()
    # small batches: each actor streams several batches per round, replies decoded one by one
    channel = RayChannel(build_nodes(sites, task), max_batch_bytes=2_000)
    assert channel.actors == 2  # one per CPU, not one per site
    coordinator = Coordinator(
        channel=channel,
        strategy=make_strategy("fedavg"),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=rounds,
        evaluate=False,
        round_timeout_s=120.0,
    )
    x0 = task.init_model(None)["x"]
    try:
        spec = RunSpec(RunId("pool"), "pool", "", "fedavg", task.name, task_hash(task), 0, rounds)
        result = coordinator.run(task.init_model(None), spec=spec)
    finally:
        channel.close()
    assert all(len(r.site_fit) == n and not r.failures for r in result.rounds)
    np.testing.assert_allclose(result.state.model["x"], x0 + rounds * 1e-3 * (2 * n + 1) / 3, atol=1e-5)


def test_pool_options_are_checked_with_one_line_errors(local_ray, heart):
    data, task = heart
    from fedcare.errors import ConfigError

    nodes = build_nodes(data.sites, task)
    with pytest.raises(ConfigError, match="actors or sites_per_actor, not both"):
        RayChannel(nodes, actors=2, sites_per_actor=2)
    with pytest.raises(ConfigError, match="cpus_per_site must be positive"):
        RayChannel(nodes, cpus_per_site=0)
    with pytest.raises(ConfigError, match="memory_per_site"):
        RayChannel(nodes, memory_per_site=-1)


def test_whole_buffer_decoding_refuses_a_tampered_record():
    model = {"w": np.arange(4, dtype=np.float32)}
    message = Message(MessageKind.FIT, RunId("r"), 1, SiteId("a"), Payload(arrays={"model": model}))
    header, records = message_parts(message)
    assert message_from_parts(header, records, where="t").payload.arrays["model"]["w"].tolist() == [0, 1, 2, 3]
    tampered = bytearray(records[0])
    tampered[-1] ^= 1
    with pytest.raises(ProtocolError, match="does not match its declared BLAKE3 digest"):
        message_from_parts(header, [bytes(tampered)], where="t")
    with pytest.raises(ProtocolError, match="declares 1 record"):
        message_from_parts(header, [], where="t")
