"""Partitioners: disjoint covers, seeded, skewed as asked."""

from __future__ import annotations

import numpy as np
import pytest

from fedcare.data.partition import dirichlet_label_partition, natural_partition, quantity_skew_partition
from fedcare.errors import ConfigError, DataError


def assert_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n


def test_natural_partition_groups_by_site_column():
    parts = natural_partition(["b", "a", "b", "c", "a"])
    assert {k: v.tolist() for k, v in parts.items()} == {"a": [1, 4], "b": [0, 2], "c": [3]}
    with pytest.raises(DataError, match="1 empty value"):
        natural_partition(["a", None])


def test_dirichlet_is_seeded_and_small_alpha_skews_labels():
    y = np.repeat([0, 1, 2, 3], 250)
    a = dirichlet_label_partition(y, 5, 0.1, np.random.default_rng(3))
    b = dirichlet_label_partition(y, 5, 0.1, np.random.default_rng(3))
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert_cover(a, len(y))

    def mean_dominant_share(parts):
        return np.mean([np.bincount(y[p], minlength=4).max() / len(p) for p in parts])

    iid = dirichlet_label_partition(y, 5, 1000.0, np.random.default_rng(3))
    assert mean_dominant_share(a) > 0.6 > 0.3 > mean_dominant_share(iid)


def test_quantity_skew_sizes_vary_but_cover():
    parts = quantity_skew_partition(1000, 4, 0.5, np.random.default_rng(0))
    assert_cover(parts, 1000)
    sizes = sorted(len(p) for p in parts)
    assert sizes[0] >= 1 and sizes[-1] > 2 * sizes[0]
    assert [len(p) for p in quantity_skew_partition(1000, 4, 0.5, np.random.default_rng(0))] == [len(p) for p in parts]


def test_bad_arguments_are_named():
    with pytest.raises(ConfigError, match="alpha must be a positive number, got 0"):
        quantity_skew_partition(10, 2, 0, np.random.default_rng(0))
    with pytest.raises(DataError, match="cannot split 3 rows into 5"):
        dirichlet_label_partition([0, 1, 0], 5, 1.0, np.random.default_rng(0))
