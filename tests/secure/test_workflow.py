import numpy as np
import pytest
from tests.conftest import ShiftTask, shift_sites

from fedcare.datasets.heart_disease import load_heart_disease
from fedcare.errors import ConfigError, NotEnoughSitesError
from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.policy import SitePolicy
from fedcare.runtime.recorder import RoundReport, RunSpec
from fedcare.runtime.simulation import build_nodes, run_simulation
from fedcare.secure import DistributedDp, FixedPointCodec, SecAggPlusWorkflow
from fedcare.secure.dp import DistributedDpLedger, effective_noise_multiplier
from fedcare.strategies import CoordinateMedian, FedAdam, FedAvg, FedProx, Scaffold
from fedcare.task import task_hash
from fedcare.tasks.logreg import LogisticRegressionTask
from fedcare.transport import InProcessChannel
from fedcare.types import Message, MessageKind, RunId


def _run(n=6, rounds=2, workflow=None, policies=None, size=16, **kw):
    return run_simulation(
        sites=shift_sites(n),
        task=ShiftTask(size=size),
        strategy=FedAvg(),
        rounds=rounds,
        seed=0,
        run_id=RunId("r"),
        fit_workflow=workflow,
        policies=policies,
        max_workers=2,
        **kw,
    )


def test_secagg_fedavg_matches_plain_fedavg_within_quantisation():
    codec = FixedPointCodec(clip_range=0.05, bits=16)
    plain = _run(n=10, rounds=3)
    secure = _run(n=10, rounds=3, workflow=SecAggPlusWorkflow(codec=codec, degree=4, seed=1))
    # mean error per round <= half a step; 3 rounds
    np.testing.assert_allclose(secure.state.model["w"], plain.state.model["w"], atol=3 * codec.step / 2 + 1e-6)
    r = secure.rounds[-1]
    assert r.fit_metrics["secagg_survivors"] == 10 and not r.failures
    assert r.fit_metrics["num_examples"] == sum(range(1, 11))  # total weight, never one site's
    assert all("num_examples" not in m for m in r.site_fit.values())


def test_site_crash_in_a_stage_is_recorded_and_the_rest_is_summed():
    plain = _run(n=6, rounds=1)
    sites = shift_sites(6)
    crash = sorted(sites)[2]

    task = ShiftTask(size=16)
    nodes = build_nodes(sites, task)
    handlers = {s: n.handle for s, n in nodes.items()}

    def drops_after_masking(msg: Message) -> Message:
        if msg.kind is MessageKind.SECAGG and msg.payload.config.get("secagg.stage") == "unmask":
            raise RuntimeError("link down")
        return nodes[crash].handle(msg)

    handlers[crash] = drops_after_masking
    channel = InProcessChannel(handlers, max_workers=2)
    coord = Coordinator(
        channel=channel,
        strategy=FedAvg(),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=1,
        fit_workflow=SecAggPlusWorkflow(codec=FixedPointCodec(clip_range=0.05), degree=5, threshold=3, seed=0),
        evaluate=False,
    )
    spec = RunSpec(RunId("x"), "x", "synthetic", "fedavg", task.name, task_hash(task), 0, 1)
    try:
        result = coord.run(task.init_model(np.random.default_rng(0)), spec=spec)
    finally:
        channel.close()
    report = result.rounds[0]
    assert "unmask" in report.failures[crash]
    assert report.fit_metrics["secagg_survivors"] == 6  # its masked input is in the sum
    np.testing.assert_allclose(result.state.model["w"], plain.state.model["w"], atol=0.05 / 65535 * 2)


def test_too_many_dropouts_abort_the_run_with_no_aggregate():
    crash = {"site-00", "site-01", "site-02", "site-03"}
    reports: list[RoundReport] = []

    task = ShiftTask(size=16)
    nodes = build_nodes(shift_sites(6), task)
    handlers = {}
    for s, node in nodes.items():
        if s in crash:
            handlers[s] = lambda m, node=node: (
                m.reply(error="gone") if m.payload.config.get("secagg.stage") == "masked_input" else node.handle(m)
            )
        else:
            handlers[s] = node.handle
    channel = InProcessChannel(handlers, max_workers=2)
    coord = Coordinator(
        channel=channel,
        strategy=FedAvg(),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=2,
        fit_workflow=SecAggPlusWorkflow(degree=5, threshold=3, seed=0),
        on_round=reports.append,
    )
    spec = RunSpec(RunId("x"), "x", "synthetic", "fedavg", task.name, task_hash(task), 0, 2)
    try:
        with pytest.raises(NotEnoughSitesError, match="secure aggregation aborted"):
            coord.run(task.init_model(np.random.default_rng(0)), spec=spec)
    finally:
        channel.close()
    assert reports == []  # no round completed, nothing folded


def test_policy_require_secure_aggregation_refuses_plain_fit_but_joins_secagg():
    strict = {s: SitePolicy(require_secure_aggregation=True) for s in shift_sites(4)}
    with pytest.raises(NotEnoughSitesError, match="only under secure aggregation"):
        _run(n=4, rounds=1, policies=strict)
    result = _run(
        n=4, rounds=1, policies=strict, workflow=SecAggPlusWorkflow(codec=FixedPointCodec(clip_range=0.05), seed=0)
    )
    assert result.rounds[0].fit_metrics["secagg_survivors"] == 4


def test_policy_min_peers_refuses_a_sum_of_too_few_sites():
    picky = {s: SitePolicy(min_peers=5) for s in shift_sites(4)}
    with pytest.raises(NotEnoughSitesError):
        _run(n=4, rounds=1, policies=picky, workflow=SecAggPlusWorkflow(seed=0))
    ok = {s: SitePolicy(min_peers=4) for s in shift_sites(4)}
    result = _run(
        n=4, rounds=1, policies=ok, workflow=SecAggPlusWorkflow(codec=FixedPointCodec(clip_range=0.05), seed=0)
    )
    assert result.rounds[0].fit_metrics["secagg_survivors"] == 4


def test_heart_disease_fedavg_with_secagg_reaches_the_plain_accuracy():
    data = load_heart_disease()
    task = LogisticRegressionTask(n_features=data.n_features)
    fit = {"optimizer": "sgd", "lr": 0.05, "batch_size": 4, "local_epochs": 1}
    kw = {"sites": data.sites, "task": task, "rounds": 5, "seed": 0, "run_id": RunId("hd"), "max_workers": 2}
    plain = run_simulation(strategy=FedAvg(fit_config=fit), **kw)
    wf = SecAggPlusWorkflow(codec=FixedPointCodec(clip_range=4.0, bits=20, modulus_bits=64), seed=0)
    secure = run_simulation(strategy=FedAvg(fit_config=fit), fit_workflow=wf, **kw)
    for name in plain.state.model:
        np.testing.assert_allclose(secure.state.model[name], plain.state.model[name], atol=5 * 4.0 / (2**20 - 1) + 1e-5)
    acc_plain = plain.rounds[-1].eval_metrics["accuracy"]
    acc_secure = secure.rounds[-1].eval_metrics["accuracy"]
    assert acc_plain > 0.7
    assert abs(acc_secure - acc_plain) <= 0.01


def test_distributed_dp_noise_and_epsilon_account_for_dropped_sites():
    dp = DistributedDp(clip_norm=0.01, noise_multiplier=1.0)
    wf = SecAggPlusWorkflow(codec=FixedPointCodec(clip_range=0.5, bits=20, modulus_bits=64), dp=dp, seed=0)
    size = 4000
    result = _run(n=8, rounds=2, workflow=wf, size=size)
    # with weights 1 the new model is x0 + mean(clipped deltas) + N(0, (zC)^2)/n per round
    x0 = np.linspace(-1, 1, size, dtype=np.float32)
    # the deltas (1e-3*(k+1) on 4000 coordinates) all exceed C=0.01 in L2: clipped to C
    clipped_mean = 0.01 / np.sqrt(size)
    noise = result.state.model["w"].astype(np.float64) - x0 - 2 * clipped_mean
    expected_std = np.sqrt(2) * 1.0 * 0.01 / 8
    assert 0.85 < noise.std() / expected_std < 1.15
    eps = [r.fit_metrics["dp_epsilon"] for r in result.rounds]
    assert 0 < eps[0] < eps[1]
    # a missing noise share means less noise: the ledger charges a higher epsilon
    assert effective_noise_multiplier(1.0, 8, 6) == pytest.approx(np.sqrt(6 / 8))
    full = wf.ledger.entries[0]
    partial = DistributedDpLedger(dp).charge(1, planned=8, survived=6)
    assert partial.epsilon > full.epsilon


def test_site_node_refuses_replayed_and_out_of_order_stage_messages():
    from fedcare.secure.stages import AdvertiseKeysIns, RoundParams, ShareKeysIns

    task = ShiftTask(size=4)
    sites = shift_sites(3)
    nodes = build_nodes(sites, task)
    node = nodes["site-00"]
    session = bytes(range(16))
    params = RoundParams(
        neighbours=("site-01", "site-02"),
        threshold=2,
        num_sites=3,
        vector_size=4,
        clip_range=1.0,
        bits=16,
        modulus_bits=32,
        max_site_weight=100,
    )

    def msg(payload):
        config = {**payload.config, "task": task.name, "task_hash": task_hash(task)}
        return Message(
            kind=MessageKind.SECAGG,
            run_id=RunId("r"),
            round_no=1,
            site="site-00",
            payload=type(payload)(arrays=payload.arrays, config=config),
        )

    early = msg(ShareKeysIns(session=session, pk_enc={}, pk_mask={}).to_payload())
    assert "no secure-aggregation session" in node.handle(early).error
    first = msg(AdvertiseKeysIns(session=session, params=params).to_payload())
    reply = node.handle(first)
    assert reply.error is None and reply.payload.arrays["secagg"]["pk_enc"].size == 32
    assert "replayed instruction" in node.handle(first).error
    again = msg(AdvertiseKeysIns(session=session, params=params).to_payload())  # new id, same round
    assert "already has a session" in node.handle(again).error
    wrong_stage = msg(AdvertiseKeysIns(session=session, params=params).to_payload())
    bad = Message(
        kind=MessageKind.SECAGG,
        run_id=RunId("r"),
        round_no=1,
        site="site-00",
        payload=type(wrong_stage.payload)(config={**wrong_stage.payload.config, "secagg.stage": "bogus"}),
    )
    assert "unknown secagg.stage" in node.handle(bad).error


@pytest.mark.parametrize("make", [lambda: FedAdam(), lambda: FedProx(mu=0.1)], ids=["fedadam", "fedprox"])
def test_secagg_runs_weighted_sum_strategies_like_the_plain_path(make):
    codec = FixedPointCodec(clip_range=0.05, bits=16)
    kw = {"sites": shift_sites(5), "task": ShiftTask(size=16), "rounds": 2, "seed": 0, "max_workers": 2}
    plain = run_simulation(strategy=make(), run_id=RunId("p"), **kw)
    secure = run_simulation(
        strategy=make(), run_id=RunId("s"), fit_workflow=SecAggPlusWorkflow(codec=codec, seed=0), **kw
    )
    np.testing.assert_allclose(secure.state.model["w"], plain.state.model["w"], atol=1e-3)


@pytest.mark.parametrize("make", [lambda: CoordinateMedian(), lambda: Scaffold()], ids=["median", "scaffold"])
def test_secagg_refuses_strategies_that_need_individual_updates(make):
    with pytest.raises(ConfigError, match="needs individual updates"):
        run_simulation(
            sites=shift_sites(3),
            task=ShiftTask(size=4),
            strategy=make(),
            rounds=1,
            seed=0,
            run_id=RunId("x"),
            fit_workflow=SecAggPlusWorkflow(seed=0),
        )
