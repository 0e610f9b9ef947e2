import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.errors import ConfigError
from fedcare.strategies import FedAvg, available_strategies, make_strategy, register_strategy
from fedcare.types import FitResult, RoundInfo, RunId, SiteId

INFO = RoundInfo(run_id=RunId("r"), round_no=1, total_rounds=1)


def _fold(updates, weights, order):
    strategy = FedAvg()
    state = strategy.init({"a": updates[0]["a"] * 0, "b": updates[0]["b"] * 0})
    fold = strategy.new_fold(state, INFO)
    for i in order:
        fold.add(SiteId(f"s{i}"), FitResult(state=updates[i], num_examples=weights[i]))
    new_state, metrics = strategy.finish_round(state, fold)
    return new_state.model, metrics


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_fedavg_equals_numpy_weighted_mean_and_is_permutation_invariant(n, seed):
    # Prepare
    rng = np.random.default_rng(seed)
    updates = [
        {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)} for _ in range(n)
    ]
    weights = [int(w) for w in rng.integers(1, 1000, size=n)]
    # Execute
    forward, metrics = _fold(updates, weights, range(n))
    shuffled, _ = _fold(updates, weights, rng.permutation(n))
    # Assert
    w = np.asarray(weights, dtype=np.float64)
    for key in ("a", "b"):
        stacked = np.stack([u[key].astype(np.float64) for u in updates])
        expected = np.tensordot(w / w.sum(), stacked, axes=1)
        np.testing.assert_allclose(forward[key], expected, rtol=1e-6, atol=1e-6)
        assert forward[key].dtype == np.float32
        np.testing.assert_array_equal(forward[key], shuffled[key])
        assert (forward[key] <= stacked.max(axis=0) + 1e-6).all()
        assert (forward[key] >= stacked.min(axis=0) - 1e-6).all()
    assert metrics["num_examples"] == w.sum()


def test_fold_rejects_non_positive_weight():
    strategy = FedAvg()
    fold = strategy.new_fold(strategy.init({"a": np.zeros(2, np.float32)}), INFO)
    with pytest.raises(ValueError, match="num_examples must be positive"):
        fold.add(SiteId("s"), FitResult(state={"a": np.ones(2, np.float32)}, num_examples=0))


def test_registry_resolves_by_name_and_refuses_duplicates():
    assert "fedavg" in available_strategies()
    assert isinstance(make_strategy("fedavg", fit_config={"lr": 0.1}), FedAvg)
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        make_strategy("nope")

    class Impostor:
        name = "fedavg"

    with pytest.raises(ValueError, match="already registered"):
        register_strategy(Impostor)


def test_fit_config_must_hold_scalars():
    with pytest.raises(ConfigError, match=r"fit_config\['lr'\] must be a scalar"):
        FedAvg(fit_config={"lr": [0.1]})
