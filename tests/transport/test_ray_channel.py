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
from fedcare.transport.inprocess import InProcessChannel  # noqa: E402
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
    assert channel.folded_sites == 2 * len(data.sites)  # FedAvg: every update folded at its actor
    # Bit for bit: each actor folds its two sites in site order into float64 and the driver
    # adds the two partial sums (a + b == b + a exactly); the in-process fold adds the four
    # updates in arrival order. Both are float64 sums of the same float32 products, and
    # their last-bit differences vanish in the cast back to float32.
    for name, value in local.state.model.items():
        np.testing.assert_array_equal(result.state.model[name], value)
    for got, want in zip(result.rounds, local.rounds, strict=True):
        assert got.site_fit == want.site_fit  # each site's fit metrics, as in process
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
    assert channel.folded_sites == 2  # the surviving actor's sites, pre-folded
    assert report.fit_metrics["num_examples"] == sum(report.site_fit[s]["num_examples"] for s in report.site_fit)


def _shift_task():
    class ShiftTask:  # defined in a function so Ray ships it by value to the actors
        """Workload 1 of BENCHMARKS.md: a site returns ``x + its offset``; numpy only (no torch in the actors).

        A site whose offset is negative answers NaNs (an invalid update) and, when the fit
        config says so, a loss metric.
        """

        name = "shift"

        def params(self):
            return {}

        def init_model(self, rng):
            return {"x": np.linspace(-1, 1, 64, dtype=np.float32)}

        def fit(self, model, data, config, rng):
            from fedcare.types import FitResult

            offset = data.x[0, 0]
            state = {"x": model["x"] + offset if offset >= 0 else np.full_like(model["x"], np.nan)}
            return FitResult(state=state, num_examples=len(data), metrics={"loss": float(offset) * 2})

        def evaluate(self, model, data):
            from fedcare.types import EvalResult

            return EvalResult(loss=0.0, num_examples=len(data))

        def predict(self, model, x):
            return np.zeros(len(x))

    return ShiftTask()


def _shift_sites(n: int, bad: tuple[int, ...] = ()):
    from fedcare.task import ArrayDataset, SiteData

    sites = {}
    for k in range(n):
        offset = -1.0 if k in bad else 1e-3 * (k + 1)
        ds = ArrayDataset(x=np.full((k + 1, 1), offset, dtype=np.float32), y=np.zeros(k + 1))
        sites[SiteId(f"site-{k:03d}")] = SiteData(train=ds, test=ds)
    return sites


def _shift_run(channel, strategy: str, rounds: int):
    task = _shift_task()
    coordinator = Coordinator(
        channel=channel,
        strategy=make_strategy(strategy),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=rounds,
        evaluate=False,
        round_timeout_s=120.0,
    )
    spec = RunSpec(RunId("pool"), "pool", "", strategy, task.name, task_hash(task), 0, rounds)
    try:
        return coordinator.run(task.init_model(None), spec=spec)
    finally:
        channel.close()


def test_a_pre_folded_ray_round_equals_the_in_process_round(local_ray):
    sites, task = _shift_sites(41, bad=(7,)), _shift_task()
    local = _shift_run(InProcessChannel({s: n.handle for s, n in build_nodes(sites, task).items()}), "fedavg", 2)
    channel = RayChannel(build_nodes(sites, task))  # two actors of 21 and 20 sites
    result = _shift_run(channel, "fedavg", 2)
    assert channel.folded_sites == 2 * 40  # every valid update folded at its actor
    for got, want in zip(result.rounds, local.rounds, strict=True):
        # the NaN update came back whole and failed validation (at the wire decode, as over gRPC)
        assert set(got.failures) == set(want.failures) == {SiteId("site-007")}
        assert "contains NaN or Inf" in got.failures[SiteId("site-007")]
        assert got.site_fit == want.site_fit  # per-site fit metrics still reach the store
        assert got.fit_metrics["num_examples"] == want.fit_metrics["num_examples"]
        assert got.fit_metrics["loss"] == pytest.approx(want.fit_metrics["loss"], rel=1e-12)
        # traffic of the folded sites counted per site as their updates' bytes
        valid = {s: b for s, b in want.bytes_from_site.items() if s not in want.failures}
        assert {s: b for s, b in got.bytes_from_site.items() if b} == valid
        assert got.fit_metrics["bytes_up"] == sum(valid.values())
    np.testing.assert_array_equal(result.state.model["x"], local.state.model["x"])


def test_a_median_round_is_not_pre_folded(local_ray):
    sites, task = _shift_sites(9), _shift_task()
    local = _shift_run(InProcessChannel({s: n.handle for s, n in build_nodes(sites, task).items()}), "median", 1)
    channel = RayChannel(build_nodes(sites, task))
    result = _shift_run(channel, "median", 1)
    assert channel.folded_sites == 0  # every update arrived whole
    assert len(result.rounds[0].site_fit) == 9 and not result.rounds[0].failures
    np.testing.assert_array_equal(result.state.model["x"], local.state.model["x"])


def test_many_sites_share_a_pool_of_actors_and_every_update_is_folded(local_ray):
    n, rounds = 60, 2
    sites = _shift_sites(n)
    task = _shift_task()
    # small batches: each actor streams several batches per round, replies decoded one by one
    channel = RayChannel(build_nodes(sites, task), max_batch_bytes=2_000)
    assert channel.actors == 2  # one per CPU, not one per site
    x0 = task.init_model(None)["x"]
    result = _shift_run(channel, "fedavg", rounds)
    assert all(len(r.site_fit) == n and not r.failures for r in result.rounds)
    assert channel.folded_sites == n * rounds
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
