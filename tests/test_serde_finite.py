import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.errors import SerdeError
from fedcare.serde import all_finite, check_state


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    size=st.integers(0, 300),
    bad=st.sampled_from([None, np.nan, np.inf, -np.inf]),
    big=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_all_finite_is_exact_even_when_the_fast_check_overflows(dtype, size, bad, big, seed):
    # Prepare: values near the dtype's maximum make a . a overflow (the slow path decides)
    rng = np.random.default_rng(seed)
    scale = float(np.finfo(dtype).max) / 2 if big else 1.0
    arr = (rng.uniform(-1, 1, size) * scale).astype(dtype)
    if bad is not None and size:
        arr[rng.integers(size)] = bad
    # Execute / Assert: the same answer as the elementwise definition
    assert all_finite(arr) == bool(np.isfinite(arr).all())
    assert all_finite(arr.reshape(-1, 1)[::2]) == bool(np.isfinite(arr[::2]).all())


def test_reuse_frozen_skips_only_the_same_frozen_array():
    arr = np.ones(10, np.float32)
    arr.flags.writeable = False
    check_state({"w": arr}, reuse_frozen=True)  # scanned and remembered
    # The same object again: not rescanned (it cannot have changed: read-only, owns its memory)
    check_state({"w": arr}, reuse_frozen=True)
    # A writable array with NaN is always scanned
    bad = np.ones(10, np.float32)
    bad[3] = np.nan
    with pytest.raises(SerdeError, match="contains NaN or Inf"):
        check_state({"w": bad}, reuse_frozen=True)
    # A frozen view whose base is writable is not trusted either
    base = np.ones(10, np.float32)
    view = base[:]
    view.flags.writeable = False
    check_state({"w": view}, reuse_frozen=True)
    base[0] = np.inf
    with pytest.raises(SerdeError, match="contains NaN or Inf"):
        check_state({"w": view}, reuse_frozen=True)
