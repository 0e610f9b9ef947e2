import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedcare.errors import SerdeError
from fedcare.serde import decode_state, encode_state, spec_of

_shapes = hnp.array_shapes(min_dims=0, max_dims=3, max_side=5)
finite_arrays = st.one_of(
    hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64]),
        shape=_shapes,
        elements={"allow_nan": False, "allow_infinity": False, "min_value": -1024.0, "max_value": 1024.0},
    ),
    hnp.arrays(dtype=st.sampled_from([np.int64, np.uint8, np.bool_]), shape=_shapes),
)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.]{0,10}", fullmatch=True), finite_arrays, min_size=1, max_size=5))
def test_round_trip_is_lossless_and_keeps_order(state):
    decoded = decode_state(encode_state(state), spec_of(state))
    assert list(decoded) == list(state)
    for k in state:
        assert decoded[k].dtype == state[k].dtype
        np.testing.assert_array_equal(decoded[k], state[k])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_non_finite_values(bad):
    data = encode_state({"w": np.array([1.0, bad], dtype=np.float32)})
    with pytest.raises(SerdeError, match=r"fit reply from a: entry 'w' contains NaN or Inf"):
        decode_state(data, where="fit reply from a")


def test_rejects_wrong_shape_dtype_and_names():
    spec = spec_of({"w": np.zeros((2, 3), np.float32)})
    with pytest.raises(SerdeError, match=r"entry 'w' has shape \(3, 2\), expected \(2, 3\)"):
        decode_state(encode_state({"w": np.zeros((3, 2), np.float32)}), spec)
    with pytest.raises(SerdeError, match="has dtype float64, expected float32"):
        decode_state(encode_state({"w": np.zeros((2, 3), np.float64)}), spec)
    with pytest.raises(SerdeError, match=r"missing \['w'\], unexpected \['v'\]"):
        decode_state(encode_state({"v": np.zeros((2, 3), np.float32)}), spec)


def test_rejects_oversized_payload_before_parsing():
    data = encode_state({"w": np.zeros(1000, np.float32)})
    with pytest.raises(SerdeError, match=f"payload of {len(data)} bytes exceeds the limit of 100"):
        decode_state(data, max_bytes=100)


@pytest.mark.parametrize("blob", [b"", b"\x05", b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00{x"])
def test_rejects_garbage(blob):
    with pytest.raises(SerdeError):
        decode_state(blob)


def test_truncated_payload_is_rejected():
    data = encode_state({"w": np.arange(10, dtype=np.float32)})
    with pytest.raises(SerdeError):
        decode_state(data[:-7])
