import numpy as np
import pytest

from fedcare.strategies import fedavg
from fedcare.strategies.fedavg import WeightedMeanFold
from fedcare.types import FitResult, SiteId


def _one_at_a_time(updates, weights):
    """The reference fold: one update at a time, in order; float32 product, float64 sum."""
    acc = np.zeros(updates[0].shape, dtype=np.float64)
    for a, w in zip(updates, weights, strict=True):
        acc += (a * np.float32(w)).astype(np.float64)
    acc *= 1.0 / sum(weights)
    return acc.astype(np.float32)


@pytest.mark.parametrize("size", [7, fedavg.BLOCK + 3, fedavg.PARALLEL_MIN + 2 * fedavg.BLOCK + 5])
@pytest.mark.parametrize("batch", [1, 3, 4])
def test_blocked_batched_fold_is_bit_identical_to_the_one_at_a_time_fold(size, batch):
    # Prepare: sizes below one block, across blocks, and on the multi-threaded path
    rng = np.random.default_rng(size + batch)
    updates = [rng.normal(size=size).astype(np.float32) for _ in range(9)]
    weights = [int(w) for w in rng.integers(1, 500, size=9)]
    fold = WeightedMeanFold({"w": updates[0]}, batch=batch)
    # Execute
    for k, (a, w) in enumerate(zip(updates, weights, strict=True)):
        fold.add(SiteId(f"s{k}"), FitResult(state={"w": a}, num_examples=w))
    mean = fold.mean()["w"]
    # Assert: exactly the same float64 operations per element, so exactly the same result
    np.testing.assert_array_equal(mean, _one_at_a_time(updates, weights))
    assert mean.dtype == np.float32 and fold.count == 9 and fold.total_weight == sum(weights)


def test_fold_buffers_at_most_batch_updates():
    fold = WeightedMeanFold({"w": np.zeros(4, np.float32)}, batch=3)
    for k in range(7):
        fold.add(SiteId(f"s{k}"), FitResult(state={"w": np.ones(4, np.float32)}, num_examples=1))
        assert len(fold._pending) < 3
    np.testing.assert_array_equal(fold.mean()["w"], np.ones(4, np.float32))


def test_multi_dimensional_entries_keep_their_shape():
    fold = WeightedMeanFold({"m": np.zeros((3, 5), np.float32), "b": np.zeros((), np.float32)})
    fold.add(
        SiteId("a"),
        FitResult(
            state={"m": np.ones((3, 5), np.float32), "b": np.float32(2.0) * np.ones((), np.float32)}, num_examples=1
        ),
    )
    fold.add(
        SiteId("b"),
        FitResult(state={"m": 3 * np.ones((3, 5), np.float32), "b": np.zeros((), np.float32)}, num_examples=3),
    )
    out = fold.mean()
    assert out["m"].shape == (3, 5) and out["b"].shape == ()
    np.testing.assert_array_equal(out["m"], np.full((3, 5), 2.5, np.float32))
    assert float(out["b"]) == 0.5


def test_integer_entries_are_averaged_in_float64():
    fold = WeightedMeanFold({"n": np.zeros(3, np.int64)}, batch=2)
    fold.add(SiteId("a"), FitResult(state={"n": np.array([1, 2, 3])}, num_examples=1))
    fold.add(SiteId("b"), FitResult(state={"n": np.array([3, 4, 6])}, num_examples=3))
    np.testing.assert_array_equal(fold.mean()["n"], np.array([2, 3, 5]))
