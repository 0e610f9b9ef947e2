import numpy as np
import pytest

from fedcare.strategies import WeightedMeanFold
from fedcare.types import FitResult, SiteId


def test_add_sum_equals_adding_the_updates_one_by_one():
    rng = np.random.default_rng(0)
    template = {"w": np.zeros((3, 4), np.float32), "b": np.zeros(2, np.float32)}
    updates = [({k: rng.normal(size=v.shape).astype(np.float32) for k, v in template.items()}, n) for n in (3, 5, 7)]
    one_by_one = WeightedMeanFold(template)
    for i, (state, n) in enumerate(updates):
        one_by_one.add(SiteId(f"s{i}"), FitResult(state=state, num_examples=n, metrics={"loss": float(i)}))
    summed = WeightedMeanFold(template)
    sums = {k: sum(n * s[k].astype(np.float64) for s, n in updates) for k in template}
    summed.add_sum(sums, 15.0, count=3, metrics={"loss": 1.0})
    assert summed.count == 3 and summed.total_weight == 15.0
    a, b = one_by_one.mean(), summed.mean()
    for k in template:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6)
        assert b[k].dtype == np.float32


def test_add_sum_rejects_bad_input():
    fold = WeightedMeanFold({"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="positive total weight"):
        fold.add_sum({"w": np.zeros(3)}, 0.0, count=1)
    with pytest.raises(ValueError, match="wrong shape"):
        fold.add_sum({"w": np.zeros(4)}, 1.0, count=1)
