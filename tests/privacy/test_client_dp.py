import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedcare.errors import ConfigError
from fedcare.privacy.client_dp import AdaptiveClipping, ClientLevelDP, clip_l2, l2_norm, privatize_update
from fedcare.privacy.plan import ClientDP, ClientDPMode
from fedcare.strategies import FedAvg


@settings(max_examples=50, deadline=None)
@given(
    a=arrays(np.float64, st.integers(1, 20), elements=st.floats(-1e3, 1e3)),
    b=arrays(np.float32, (2, 3), elements=st.floats(-1e3, 1e3, width=32)),
    clip=st.floats(1e-3, 1e3),
)
def test_clip_l2_bounds_the_norm_and_keeps_the_direction(a, b, clip):
    clipped, norm = clip_l2({"a": a, "b": b}, clip)
    assert l2_norm(clipped) <= clip * (1 + 1e-9) + 1e-12
    assert norm == pytest.approx(l2_norm({"a": a, "b": b}))
    if norm <= clip:
        np.testing.assert_allclose(clipped["a"], a)
    else:
        np.testing.assert_allclose(clipped["a"] * norm / clip, a, rtol=1e-9, atol=1e-9)


def test_distributed_shares_of_m_sites_sum_to_the_central_noise():
    plan = ClientDP(mode=ClientDPMode.DISTRIBUTED, noise_multiplier=2.0, clip_norm=0.5, delta=1e-5, min_sites=4)
    ref = {"w": np.zeros(20_000, np.float32)}
    rng = np.random.default_rng(0)
    shares = [privatize_update(ref, ref, plan, rng)[0]["w"].astype(np.float64) for _ in range(4)]
    assert np.std(np.sum(shares, axis=0)) == pytest.approx(2.0 * 0.5, rel=0.02)  # z * C


def test_adaptive_clipping_splits_the_budget_as_andrew_et_al():
    ad = AdaptiveClipping(count_budget_share=0.1)
    z = 3.0
    z_delta, sigma_b = ad.update_noise_multiplier(z), ad.count_noise_std(z)
    # Theorem 1: the pair (update with z_delta, count with sigma_b) is as private as one Gaussian with z
    assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2)


def test_wrapper_rejects_adaptive_distributed_and_bad_values():
    with pytest.raises(ConfigError, match="adaptive clipping needs central mode"):
        ClientLevelDP(
            FedAvg(),
            noise_multiplier=1.0,
            clip_norm=1.0,
            delta=1e-5,
            mode=ClientDPMode.DISTRIBUTED,
            adaptive=AdaptiveClipping(),
        )
    with pytest.raises(ConfigError, match="clip_norm must be a positive finite number"):
        ClientLevelDP(FedAvg(), noise_multiplier=1.0, clip_norm=-1.0, delta=1e-5)
    assert math.isfinite(ClientLevelDP.calibrate(target_epsilon=3.0, delta=1e-5, rounds=20))
