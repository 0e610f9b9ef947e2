import numpy as np
import pytest

from fedcare.errors import ConfigError, NotEnoughSitesError
from fedcare.strategies import CoordinateMedian, Krum, TrimmedMean, make_strategy
from fedcare.strategies.robust import krum_select, trimmed_mean
from fedcare.types import FitResult, RoundInfo, RunId, SiteId

INFO = RoundInfo(run_id=RunId("r"), round_no=1, total_rounds=1)

#: Five sites: four honest around (1, 2), one attacker far away.
CRAFTED = [
    np.array([1.0, 2.0], np.float32),
    np.array([1.2, 1.8], np.float32),
    np.array([0.8, 2.3], np.float32),
    np.array([1.1, 2.1], np.float32),
    np.array([-50.0, 90.0], np.float32),
]


def _aggregate(strategy, updates, weights=None, order=None):
    state = strategy.init({"w": np.zeros_like(updates[0])})
    fold = strategy.new_fold(state, INFO)
    weights = weights or [1] * len(updates)
    for i in order if order is not None else range(len(updates)):
        fold.add(SiteId(f"s{i}"), FitResult(state={"w": updates[i]}, num_examples=weights[i], metrics={"l": i}))
    return strategy.finish_round(state, fold)


def test_median_on_crafted_inputs():
    new, metrics = _aggregate(CoordinateMedian(), CRAFTED, weights=[1, 1, 1, 1, 1000])
    np.testing.assert_allclose(new.model["w"], [1.0, 2.1], rtol=1e-6)  # weights ignored
    assert metrics["num_examples"] == 1004


def test_trimmed_mean_on_crafted_inputs():
    new, metrics = _aggregate(TrimmedMean(beta=0.2), CRAFTED)
    # one value dropped per side: x: drop -50 and 1.2 -> mean(0.8, 1, 1.1); y: drop 1.8 and 90
    np.testing.assert_allclose(new.model["w"], [(0.8 + 1.0 + 1.1) / 3, (2.0 + 2.3 + 2.1) / 3], rtol=1e-6)
    assert metrics["trimmed_per_side"] == 1


def test_trimmed_mean_with_beta_zero_is_the_plain_mean():
    stack = np.stack(CRAFTED).astype(np.float64)
    np.testing.assert_allclose(trimmed_mean(stack, 0.0), stack.mean(axis=0))


def test_krum_picks_the_most_central_honest_update():
    new, _ = _aggregate(Krum(f=1, m=1), CRAFTED)
    # by hand: scores = sum of the n - f - 2 = 2 smallest squared distances
    pts = np.stack(CRAFTED).astype(np.float64)
    d = ((pts[:, None] - pts[None]) ** 2).sum(-1)
    scores = [np.sort(np.delete(d[i], i))[:2].sum() for i in range(5)]
    np.testing.assert_allclose(new.model["w"], CRAFTED[int(np.argmin(scores))])
    # site 0: its two nearest are site 3 (0.01 + 0.01) and site 1 (0.04 + 0.04) -> 0.10, the minimum
    np.testing.assert_allclose(scores[0], 0.10, rtol=1e-5)
    assert int(np.argmin(scores)) == 0


def test_multi_krum_averages_m_selected_and_excludes_attacker():
    chosen = krum_select(np.stack(CRAFTED).astype(np.float64), f=1, m=3)
    assert 4 not in chosen and len(chosen) == 3
    new, metrics = _aggregate(Krum(f=1, m=3), CRAFTED)
    np.testing.assert_allclose(new.model["w"], np.stack([CRAFTED[i] for i in chosen]).mean(axis=0), rtol=1e-6)
    assert metrics["krum_selected"] == 3


@pytest.mark.parametrize("strategy", [CoordinateMedian(), TrimmedMean(beta=0.2), Krum(f=1, m=2)])
def test_robust_rules_do_not_depend_on_arrival_order(strategy):
    a, _ = _aggregate(strategy, CRAFTED)
    b, _ = _aggregate(strategy, CRAFTED, order=[4, 2, 0, 3, 1])
    np.testing.assert_array_equal(a.model["w"], b.model["w"])


def test_krum_needs_enough_updates():
    with pytest.raises(NotEnoughSitesError, match="Krum with f=1 needs at least 5 updates, got 4"):
        _aggregate(Krum(f=1), CRAFTED[:4])


def test_fold_refuses_a_second_update_from_the_same_site():
    strategy = CoordinateMedian()
    fold = strategy.new_fold(strategy.init({"w": np.zeros(2, np.float32)}), INFO)
    fold.add(SiteId("a"), FitResult(state={"w": CRAFTED[0]}, num_examples=1))
    with pytest.raises(ValueError, match="second update"):
        fold.add(SiteId("a"), FitResult(state={"w": CRAFTED[1]}, num_examples=1))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("trimmed_mean", {"beta": 0.5}, r"beta must be in \[0, 0.5\)"),
        ("krum", {"f": -1}, "Krum f must be a non-negative integer"),
        ("krum", {"m": 0}, "Krum m must be a positive integer"),
    ],
)
def test_bad_parameters_are_named(name, params, message):
    with pytest.raises(ConfigError, match=message):
        make_strategy(name, **params)


@pytest.mark.parametrize("name,params", [("median", {}), ("trimmed_mean", {"beta": 0.2}), ("krum", {"f": 1})])
def test_robust_rules_keep_zero_dim_entries_as_arrays(name, params):
    # A BatchNorm step counter is a 0-d int64 entry; the aggregate must stay a 0-d array, not a scalar.
    strategy = make_strategy(name, **params)
    template = {"w": np.zeros(3, np.float32), "count": np.array(0, dtype=np.int64)}
    state = strategy.init(template)
    info = RoundInfo(run_id=RunId("r"), round_no=1, total_rounds=1)
    fold = strategy.new_fold(state, info)
    for k in range(5):
        fold.add(
            SiteId(f"s{k}"),
            FitResult(
                state={"w": np.full(3, k, np.float32), "count": np.array(10 + k, dtype=np.int64)}, num_examples=1
            ),
        )
    new_state, _ = strategy.finish_round(state, fold)
    assert isinstance(new_state.model["count"], np.ndarray) and new_state.model["count"].shape == ()
    assert new_state.model["count"].dtype == np.int64
    new_state.model["count"].flags.writeable = False  # what the in-process channel does to a broadcast
