import threading

import numpy as np
import pytest
from tests.conftest import ShiftTask, shift_sites

from fedcare.errors import ConfigError, NotEnoughSitesError
from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.recorder import RunSpec
from fedcare.runtime.simulation import build_nodes, run_simulation
from fedcare.strategies import FedAvg
from fedcare.task import task_hash
from fedcare.transport import InProcessChannel
from fedcare.types import FitResult, Message, MessageKind, Payload, RunId, SiteId


def _spec(task, rounds=3):
    return RunSpec(
        run_id=RunId("run"),
        name="t",
        dataset="synthetic",
        strategy="fedavg",
        task=task.name,
        task_hash=task_hash(task),
        seed=0,
        rounds=rounds,
    )


def _coordinator(handlers, task, rounds=3, **kw):
    channel = InProcessChannel(handlers)
    return channel, Coordinator(
        channel=channel, strategy=FedAvg(), task_name=task.name, task_hash=task_hash(task), rounds=rounds, **kw
    )


def test_fedavg_over_in_process_sites_matches_closed_form():
    # Prepare: workload 1 of BENCHMARKS.md with N=10 sites, R=3 rounds
    task, n, rounds = ShiftTask(size=16), 10, 3
    # Execute
    result = run_simulation(
        sites=shift_sites(n), task=task, strategy=FedAvg(), rounds=rounds, seed=0, run_id=RunId("r")
    )
    # Assert: x_R = x0 + R * 1e-3 * (2N+1)/3
    x0 = np.linspace(-1, 1, 16, dtype=np.float32)
    np.testing.assert_allclose(result.state.model["w"], x0 + rounds * 1e-3 * (2 * n + 1) / 3, atol=1e-5)
    assert [r.round_no for r in result.rounds] == [1, 2, 3]
    assert all(not r.failures for r in result.rounds)
    assert set(result.rounds[-1].site_eval) == set(shift_sites(n))


def test_failed_refusing_and_invalid_sites_are_reported_as_data():
    task = ShiftTask()
    nodes = build_nodes(shift_sites(4), task)
    handlers = {s: n.handle for s, n in nodes.items()}

    def crashes(msg):
        raise RuntimeError("disk on fire")

    def sends_nan(msg):
        reply = nodes[SiteId("site-02")].handle(msg)
        if msg.kind is MessageKind.FIT:
            return msg.reply(
                Payload(arrays={"model": {"w": np.full(8, np.nan, np.float32)}}, metrics={"num_examples": 3.0})
            )
        return reply

    handlers[SiteId("site-01")] = crashes
    handlers[SiteId("site-02")] = sends_nan
    channel, coord = _coordinator(handlers, task, rounds=1)
    result = coord.run(task.init_model(np.random.default_rng(0)), spec=_spec(task, 1))
    channel.close()
    report = result.rounds[0]
    assert "RuntimeError: disk on fire" in report.failures[SiteId("site-01")]
    assert "contains NaN or Inf" in report.failures[SiteId("site-02")]
    assert set(report.site_fit) == {SiteId("site-00"), SiteId("site-03")}
    # The aggregate only holds the two valid sites: weights 1 and 4, offsets 1e-3 and 4e-3
    x0 = np.linspace(-1, 1, 8, dtype=np.float32)
    np.testing.assert_allclose(result.state.model["w"], x0 + (1 * 1e-3 + 4 * 4e-3) / 5, atol=1e-6)


def test_site_missing_the_deadline_is_dropped_and_round_completes():
    task = ShiftTask()
    nodes = build_nodes(shift_sites(3), task)
    handlers = {s: n.handle for s, n in nodes.items()}
    answered = threading.Event()
    release = threading.Event()

    def slow(msg):
        # Answers only after the test has seen the round finish: the deadline, not the
        # machine's speed, decides whether site-02 is dropped.
        release.wait(timeout=30)
        answered.set()
        return nodes[SiteId("site-02")].handle(msg)

    handlers[SiteId("site-02")] = slow
    channel, coord = _coordinator(handlers, task, rounds=1, round_timeout_s=0.5, evaluate=False)
    result = coord.run(task.init_model(np.random.default_rng(0)), spec=_spec(task, 1))
    assert not answered.is_set()  # the round closed without waiting for the slow site
    release.set()
    channel.close()
    assert result.rounds[0].failures[SiteId("site-02")] == "no fit reply within 0.5 s"
    assert len(result.rounds[0].site_fit) == 2


def test_below_min_sites_stops_cleanly_with_a_clear_message():
    task = ShiftTask()
    nodes = build_nodes(shift_sites(3), task)
    handlers = {s: n.handle for s, n in nodes.items()}
    handlers[SiteId("site-00")] = lambda m: m.reply(error="refused: budget exhausted")
    channel, coord = _coordinator(handlers, task, rounds=2, min_sites=3)
    with pytest.raises(
        NotEnoughSitesError, match=r"round 1: 2 valid update\(s\), at least 3 required \(site-00: refused"
    ):
        coord.run(task.init_model(np.random.default_rng(0)), spec=_spec(task, 2))
    channel.close()


def test_unapproved_task_hash_is_refused_by_the_site():
    task = ShiftTask()
    handlers = {s: n.handle for s, n in build_nodes(shift_sites(2), task).items()}
    channel = InProcessChannel(handlers)
    coord = Coordinator(
        channel=channel, strategy=FedAvg(), task_name=task.name, task_hash="f" * 64, rounds=1, min_sites=1
    )
    with pytest.raises(NotEnoughSitesError, match=f"task hash {'f' * 64} is not approved"):
        coord.run(task.init_model(np.random.default_rng(0)), spec=_spec(task, 1))
    channel.close()


def test_stale_replies_are_ignored():
    task = ShiftTask()
    nodes = build_nodes(shift_sites(2), task)
    handlers = {s: n.handle for s, n in nodes.items()}

    def replays(msg):
        stale = Message(kind=msg.kind, run_id=msg.run_id, round_no=msg.round_no, site=msg.site)
        handlers_reply = nodes[msg.site].handle(msg)
        channel.send([])  # nothing
        channel._replies.put(stale.reply(Payload(metrics={"num_examples": 1.0})))  # answers nothing sent
        return handlers_reply

    handlers[SiteId("site-00")] = replays
    channel = InProcessChannel(handlers)
    coord = Coordinator(channel=channel, strategy=FedAvg(), task_name=task.name, task_hash=task_hash(task), rounds=2)
    result = coord.run(task.init_model(np.random.default_rng(0)), spec=_spec(task, 2))
    channel.close()
    assert all(not r.failures for r in result.rounds)


def test_sampling_fraction_and_minimum_are_seeded():
    task = ShiftTask()
    channel, coord = _coordinator(
        {SiteId(f"s{i}"): (lambda m: m) for i in range(10)}, task, fraction_fit=0.3, min_sites=2, seed=7
    )
    sites = channel.sites()
    picks = [coord.sample_sites(r, sites) for r in (1, 2, 3)]
    channel.close()
    assert all(len(p) == 3 for p in picks)
    assert picks == [coord.sample_sites(r, sites) for r in (1, 2, 3)]
    assert len({tuple(p) for p in picks}) > 1


def test_constructor_validates_arguments():
    task = ShiftTask()
    with pytest.raises(ConfigError, match=r"fraction_fit must be in \(0, 1\], got 1.5"):
        _coordinator({SiteId("a"): lambda m: m}, task, fraction_fit=1.5)
    with pytest.raises(ConfigError, match="rounds must be at least 1, got 0"):
        _coordinator({SiteId("a"): lambda m: m}, task, rounds=0)


def test_same_seed_same_result_whatever_the_thread_timing():
    task = ShiftTask()

    def run(workers):
        return run_simulation(
            sites=shift_sites(6), task=task, strategy=FedAvg(), rounds=3, seed=1, run_id=RunId("r"), max_workers=workers
        ).state.model["w"]

    np.testing.assert_array_equal(run(1), run(4))


def test_fit_result_carries_extras_through_validation():
    # A strategy-specific record travels next to the model and is validated too.
    task = ShiftTask()

    class WithExtras(ShiftTask):
        def fit(self, model, data, config, rng):
            r = super().fit(model, data, config, rng)
            return FitResult(state=r.state, num_examples=r.num_examples, extras={"delta": {"c": np.ones(2)}})

    seen = []

    class Spy(FedAvg):
        def new_fold(self, state, rnd):
            fold = super().new_fold(state, rnd)
            add = fold.add
            fold.add = lambda site, res: (seen.append(res.extras), add(site, res))
            return fold

    result = run_simulation(
        sites=shift_sites(2), task=WithExtras(), strategy=Spy(), rounds=1, seed=0, run_id=RunId("r")
    )
    assert result.rounds[0].site_fit and len(seen) == 2
    np.testing.assert_array_equal(seen[0]["delta"]["c"], np.ones(2))
    del task
