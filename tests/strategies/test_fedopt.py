import numpy as np
import pytest

from fedcare.errors import ConfigError
from fedcare.strategies import FedAdagrad, FedAdam, FedYogi, make_strategy
from fedcare.types import FitResult, RoundInfo, RunId, SiteId


def _round(strategy, state, updates, weights, round_no):
    info = RoundInfo(run_id=RunId("r"), round_no=round_no, total_rounds=2)
    fold = strategy.new_fold(state, info)
    for i, (u, w) in enumerate(zip(updates, weights, strict=True)):
        fold.add(SiteId(f"s{i}"), FitResult(state={"w": u}, num_examples=w))
    return strategy.finish_round(state, fold)


def test_fedadam_moments_and_model_after_two_rounds_match_hand_computation():
    # Prepare: x0 = [1, -2]; two sites with weights 1 and 3
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    strategy = FedAdam(server_lr=eta, beta1=b1, beta2=b2, tau=tau)
    x0 = np.array([1.0, -2.0], np.float32)
    state = strategy.init({"w": x0})
    r1 = [np.array([2.0, -2.0], np.float32), np.array([1.0, 0.0], np.float32)]
    r2 = [np.array([0.0, 0.0], np.float32), np.array([4.0, 4.0], np.float32)]
    # Execute
    state, _ = _round(strategy, state, r1, [1, 3], 1)
    x1 = state.model["w"].astype(np.float64)
    state, metrics = _round(strategy, state, r2, [1, 3], 2)
    # Assert: Reddi et al. Algorithm 2 by hand, v_{-1} = tau^2
    d1 = (1 * np.array([2.0, -2.0]) + 3 * np.array([1.0, 0.0])) / 4 - np.array([1.0, -2.0])  # [0.25, 1.5]
    m1 = (1 - b1) * d1
    v1 = b2 * tau**2 + (1 - b2) * d1**2
    x1_ref = np.array([1.0, -2.0]) + eta * m1 / (np.sqrt(v1) + tau)
    np.testing.assert_allclose(x1, x1_ref, rtol=1e-6)
    d2 = (1 * np.array([0.0, 0.0]) + 3 * np.array([4.0, 4.0])) / 4 - x1_ref
    m2 = b1 * m1 + (1 - b1) * d2
    v2 = b2 * v1 + (1 - b2) * d2**2
    x2_ref = x1_ref + eta * m2 / (np.sqrt(v2) + tau)
    np.testing.assert_allclose(state.extras["fedopt_m"]["w"], m2, rtol=1e-6)
    np.testing.assert_allclose(state.extras["fedopt_v"]["w"], v2, rtol=1e-6)
    np.testing.assert_allclose(state.model["w"], x2_ref, rtol=1e-6)
    assert state.model["w"].dtype == np.float32
    assert metrics["num_examples"] == 4


@pytest.mark.parametrize(
    ("cls", "expected_v"),
    [
        (FedYogi, lambda v, d2, b2: v - (1 - b2) * d2 * np.sign(v - d2)),
        (FedAdagrad, lambda v, d2, b2: v + d2),
        (FedAdam, lambda v, d2, b2: b2 * v + (1 - b2) * d2),
    ],
)
def test_second_moment_rules(cls, expected_v):
    strategy = cls(server_lr=1.0, beta1=0.0, beta2=0.5, tau=0.5)
    state = strategy.init({"w": np.zeros(3, np.float32)})
    update = np.array([1.0, -0.1, 0.0], np.float32)
    new, _ = _round(strategy, state, [update], [1], 1)
    d = update.astype(np.float64)
    v = expected_v(np.full(3, 0.25), d * d, 0.5)
    np.testing.assert_allclose(new.extras["fedopt_v"]["w"], v, rtol=1e-6)
    # beta1 = 0: m is the pseudo-gradient itself
    np.testing.assert_allclose(new.model["w"], d / (np.sqrt(v) + 0.5), rtol=1e-6)


def test_integer_entries_take_the_plain_mean():
    strategy = FedAdam(server_lr=0.5)
    state = strategy.init({"w": np.zeros(2, np.float32), "steps": np.array([0], np.int64)})
    info = RoundInfo(run_id=RunId("r"), round_no=1, total_rounds=1)
    fold = strategy.new_fold(state, info)
    for i, n in enumerate((4, 8)):
        fold.add(
            SiteId(f"s{i}"), FitResult(state={"w": np.ones(2, np.float32), "steps": np.array([n])}, num_examples=1)
        )
    new, _ = strategy.finish_round(state, fold)
    assert new.model["steps"].tolist() == [6]
    assert "steps" not in new.extras["fedopt_m"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"server_lr": 0}, r"server_lr must be in \(0, inf\)"),
        ({"beta1": 1.0}, r"beta1 must be in \[0, 1\)"),
        ({"beta2": -0.1}, r"beta2 must be in \[0, 1\)"),
        ({"tau": "x"}, "tau must be a number"),
    ],
)
def test_fedopt_rejects_bad_hyperparameters_by_name(params, message):
    with pytest.raises(ConfigError, match=message):
        make_strategy("fedadam", **params)


def test_registry_builds_the_family_with_params():
    yogi = make_strategy("fedyogi", fit_config={"lr": 0.01}, server_lr=0.02, tau=1e-3)
    assert isinstance(yogi, FedYogi)
    assert (yogi.server_lr, yogi.tau, yogi.fit_config["lr"]) == (0.02, 1e-3, 0.01)
    with pytest.raises(ConfigError, match="strategy 'fedadagrad'.*unexpected keyword"):
        make_strategy("fedadagrad", momentum=0.9)
