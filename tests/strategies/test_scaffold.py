import numpy as np
import pytest

from fedcare.datasets.heart_disease import load_heart_disease
from fedcare.errors import ConfigError
from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.node import SiteNode
from fedcare.runtime.recorder import RunSpec
from fedcare.runtime.simulation import build_nodes
from fedcare.strategies import FedAvg, Scaffold, make_strategy
from fedcare.task import ArrayDataset, FitContext, SiteData, task_hash
from fedcare.tasks import make_task
from fedcare.transport.inprocess import InProcessChannel
from fedcare.types import FitResult, Message, MessageKind, Payload, RoundInfo, RunId, SiteId

INFO = RoundInfo(run_id=RunId("r"), round_no=1, total_rounds=1)


def test_server_update_matches_hand_computation():
    # Prepare: x = [1, 1], c = [0.5, -0.5], eta_g = 0.5, N = 4 sites, 2 of them report
    strategy = Scaffold(server_lr=0.5, num_sites=4)
    state = strategy.init({"w": np.ones(2, np.float32)})
    state = type(state)(model=state.model, extras={"scaffold_c": {"w": np.array([0.5, -0.5], np.float32)}})
    fold = strategy.new_fold(state, INFO)
    fold.add(
        SiteId("a"),
        FitResult(
            {"w": np.array([3.0, 1.0], np.float32)},
            1,
            extras={"scaffold_delta_c": {"w": np.array([1.0, 0.0], np.float32)}},
        ),
    )
    fold.add(
        SiteId("b"),
        FitResult(
            {"w": np.array([1.0, 5.0], np.float32)},
            3,
            extras={"scaffold_delta_c": {"w": np.array([0.0, 2.0], np.float32)}},
        ),
    )
    # Execute
    new, metrics = strategy.finish_round(state, fold)
    # Assert: mean y = [1.5, 4]; x + 0.5 (mean y - x) = [1.25, 2.5]
    np.testing.assert_allclose(new.model["w"], [1.25, 2.5])
    # mean delta c = [0.25, 1.5]; c + 2/4 * that = [0.625, 0.25]
    np.testing.assert_allclose(new.extras["scaffold_c"]["w"], [0.625, 0.25])
    assert metrics["num_examples"] == 4


def test_fold_rejects_a_reply_without_a_matching_delta():
    strategy = Scaffold()
    state = strategy.init({"w": np.zeros(2, np.float32)})
    fold = strategy.new_fold(state, INFO)
    with pytest.raises(ValueError, match="carries no 'scaffold_delta_c'"):
        fold.add(SiteId("a"), FitResult({"w": np.ones(2, np.float32)}, 1))
    with pytest.raises(ValueError, match=r"has shape \(3,\), expected \(2,\)"):
        fold.add(
            SiteId("a"),
            FitResult({"w": np.ones(2, np.float32)}, 1, extras={"scaffold_delta_c": {"w": np.ones(3, np.float32)}}),
        )
    assert fold.count == 0  # nothing half-folded


def _bce_grad(w, b, x, y):
    p = 1 / (1 + np.exp(-(x @ w + b)))
    return x.T @ (p - y) / len(y), np.array([np.mean(p - y)])


def test_site_correction_and_control_variate_update_match_numpy():
    # Prepare: one feature, full-batch SGD so the shuffle does not matter
    task = make_task("logreg", n_features=1)
    x = np.array([[1.0], [-2.0], [0.5]], np.float32)
    y = np.array([1.0, 0.0, 0.0], np.float32)
    data = ArrayDataset(x=x, y=y)
    model = {"weight": np.array([[0.3]], np.float32), "bias": np.array([-0.1], np.float32)}
    c = {"weight": np.array([[0.2]], np.float32), "bias": np.array([-0.4], np.float32)}
    cfg = {"optimizer": "sgd", "lr": 0.1, "batch_size": 3, "local_steps": 2}
    site_state: dict = {}

    # numpy reference: y <- y - lr (g(y) - c_i + c), c_i = 0 then c_i+ = c_i - c + (x - y)/(K lr)
    def reference(c_i):
        w, b = model["weight"].astype(np.float64).T, model["bias"].astype(np.float64)
        for _ in range(2):
            gw, gb = _bce_grad(w, b, x.astype(np.float64), y[:, None].astype(np.float64))
            w = w - 0.1 * (gw + c["weight"].T - c_i["weight"].T)
            b = b - 0.1 * (gb.ravel() + c["bias"] - c_i["bias"])
        new_ci = {
            "weight": c_i["weight"] - c["weight"] + (model["weight"] - w.T) / (2 * 0.1),
            "bias": c_i["bias"] - c["bias"] + (model["bias"] - b) / (2 * 0.1),
        }
        return w.T, b, new_ci

    # Execute: two rounds at the same site (c_i persists in site_state)
    r1 = task.fit(
        model, data, cfg, np.random.default_rng(0), context=FitContext(inputs={"scaffold_c": c}, state=site_state)
    )
    zero = {k: np.zeros_like(v, dtype=np.float64) for k, v in c.items()}
    w1, b1, ci1 = reference(zero)
    np.testing.assert_allclose(r1.state["weight"], w1, rtol=1e-5)
    np.testing.assert_allclose(r1.state["bias"], b1, rtol=1e-5)
    for k in c:
        np.testing.assert_allclose(site_state["scaffold_c_i"][k], ci1[k], rtol=1e-4)
        np.testing.assert_allclose(r1.extras["scaffold_delta_c"][k], ci1[k], rtol=1e-4)
    r2 = task.fit(
        model, data, cfg, np.random.default_rng(1), context=FitContext(inputs={"scaffold_c": c}, state=site_state)
    )
    w2, _, ci2 = reference(ci1)
    np.testing.assert_allclose(r2.state["weight"], w2, rtol=1e-5)
    for k in c:
        np.testing.assert_allclose(r2.extras["scaffold_delta_c"][k], ci2[k] - ci1[k], rtol=1e-4, atol=1e-6)


def test_scaffold_refuses_a_non_sgd_site_optimizer():
    with pytest.raises(ConfigError, match="SCAFFOLD needs fit_config optimizer 'sgd', got 'adam'"):
        make_strategy("scaffold", fit_config={"optimizer": "adam"})
    task = make_task("logreg", n_features=1)
    data = ArrayDataset(x=np.ones((2, 1), np.float32), y=np.array([0.0, 1.0], np.float32))
    c = {"weight": np.zeros((1, 1), np.float32), "bias": np.zeros(1, np.float32)}
    with pytest.raises(ConfigError, match="plain SGD"):
        task.fit(
            task.init_model(np.random.default_rng(0)),
            data,
            {"optimizer": "adam"},
            np.random.default_rng(0),
            context=FitContext(inputs={"scaffold_c": c}, state={}),
        )


def test_node_refuses_records_a_task_cannot_use(shift_task):
    ds = ArrayDataset(x=np.ones((1, 1), np.float32), y=np.zeros(1))
    node = SiteNode(site_id=SiteId("a"), task=shift_task, data=SiteData(ds, ds))
    model = shift_task.init_model(np.random.default_rng(0))
    msg = Message(
        kind=MessageKind.FIT,
        run_id=RunId("r"),
        round_no=1,
        site=SiteId("a"),
        payload=Payload(arrays={"model": model, "scaffold_c": model}, config={"task_hash": task_hash(shift_task)}),
    )
    reply = node.handle(msg)
    assert reply.error == "task 'shift' cannot use instruction records ['scaffold_c']"


def _run(strategy, rounds=3):
    data = load_heart_disease()
    task = make_task("logreg", n_features=data.n_features)
    nodes = build_nodes(data.sites, task)
    channel = InProcessChannel({s: n.handle for s, n in nodes.items()}, max_workers=2)
    coord = Coordinator(
        channel=channel,
        strategy=strategy,
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=rounds,
        seed=3,
        evaluate=False,
    )
    spec = RunSpec(
        run_id=RunId("run"),
        name="t",
        dataset="heart",
        strategy=strategy.name,
        task=task.name,
        task_hash=task_hash(task),
        seed=3,
        rounds=rounds,
        config={},
    )
    try:
        result = coord.run(task.init_model(np.random.default_rng(3)), spec=spec)
    finally:
        channel.close()
    return result, nodes, {s: len(d.train) for s, d in data.sites.items()}


def test_sites_keep_c_i_across_rounds_and_server_c_is_their_weighted_mean():
    cfg = {"optimizer": "sgd", "lr": 0.05, "batch_size": 16, "local_steps": 10}
    result, nodes, sizes = _run(Scaffold(fit_config=cfg))
    total = sum(sizes.values())
    c = result.state.extras["scaffold_c"]
    for name in ("weight", "bias"):
        mean_ci = sum(sizes[s] / total * nodes[s].site_state[RunId("run")]["scaffold_c_i"][name] for s in nodes)
        np.testing.assert_allclose(c[name], mean_ci, rtol=1e-4, atol=1e-6)
        assert np.abs(c[name]).max() > 0
    fedavg, _, _ = _run(FedAvg(fit_config=cfg))
    assert not np.allclose(fedavg.state.model["weight"], result.state.model["weight"], atol=1e-4)


def test_node_keeps_site_state_per_run_and_forgets_the_oldest():
    task = make_task("logreg", n_features=1)
    ds = ArrayDataset(x=np.array([[1.0], [-1.0]], np.float32), y=np.array([1.0, 0.0], np.float32))
    node = SiteNode(site_id=SiteId("a"), task=task, data=SiteData(ds, ds))
    model = task.init_model(np.random.default_rng(0))
    c = {k: np.zeros_like(v) for k, v in model.items()}
    for run in range(6):
        msg = Message(
            kind=MessageKind.FIT,
            run_id=RunId(f"run-{run}"),
            round_no=1,
            site=SiteId("a"),
            payload=Payload(
                arrays={"model": model, "scaffold_c": c},
                config={"task_hash": task_hash(task), "seed": 1, "lr": 0.1, "local_steps": 1},
            ),
        )
        reply = node.handle(msg)
        assert reply.error is None, reply.error
        assert set(reply.payload.arrays) == {"model", "scaffold_delta_c"}
    assert list(node.site_state) == [RunId(f"run-{r}") for r in range(2, 6)]
    assert "scaffold_c_i" in node.site_state[RunId("run-5")]
