import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcare.errors import ConfigError
from fedcare.privacy.accounting import (
    Accountant,
    Mechanism,
    PrivacyCost,
    calibrate_noise_multiplier,
    epsilon_of,
)


@pytest.mark.parametrize(
    ("target", "q", "steps", "accountant"),
    [
        (0.5, 1.0, 20, Accountant.RDP),
        (1.0, 1.0, 20, Accountant.RDP),
        (3.0, 16 / 30, 40, Accountant.RDP),  # the 30-row Swiss site, batch 16, 20 rounds x 2 steps
        (8.0, 0.08, 260, Accountant.RDP),
        (3.0, 0.1, 100, Accountant.PRV),
    ],
)
def test_calibrated_noise_spends_the_target_within_one_percent(target, q, steps, accountant):
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps, accountant=accountant
    )
    cost = PrivacyCost(
        mechanism=Mechanism.DPSGD, noise_multiplier=sigma, sample_rate=q, steps=steps, accountant=accountant
    )
    spent = epsilon_of([cost], delta=1e-5, accountant=accountant)
    assert spent <= target * 1.0001  # never above the target
    assert spent >= target * 0.99  # and within 1% of it


def test_composition_of_rounds_equals_one_long_history():
    # 20 rounds of 13 steps, charged one by one, compose to the same ε as 260 steps at once
    one = PrivacyCost(mechanism=Mechanism.DPSGD, noise_multiplier=2.0, sample_rate=0.08, steps=13)
    whole = PrivacyCost(mechanism=Mechanism.DPSGD, noise_multiplier=2.0, sample_rate=0.08, steps=260)
    assert math.isclose(epsilon_of([one] * 20, delta=1e-5), epsilon_of([whole], delta=1e-5), rel_tol=1e-9)
    # and composition is tighter than adding the ε of each round
    assert epsilon_of([one] * 20, delta=1e-5) < 20 * epsilon_of([one], delta=1e-5)


@settings(max_examples=20, deadline=None)
@given(steps=st.integers(1, 200), extra=st.integers(1, 200), sigma=st.floats(0.6, 10.0), q=st.floats(0.01, 1.0))
def test_epsilon_is_monotone_in_steps(steps, extra, sigma, q):
    a = PrivacyCost(mechanism=Mechanism.DPSGD, noise_multiplier=sigma, sample_rate=q, steps=steps)
    b = PrivacyCost(mechanism=Mechanism.DPSGD, noise_multiplier=sigma, sample_rate=q, steps=steps + extra)
    assert epsilon_of([a], delta=1e-5) <= epsilon_of([b], delta=1e-5) + 1e-9


def test_empty_history_spends_nothing():
    assert epsilon_of([], delta=1e-5) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_epsilon": math.inf}, "target epsilon must be a positive finite number"),
        ({"target_epsilon": 0.0}, "target epsilon must be a positive finite number"),
        ({"delta": 0.0}, "delta must be in (0, 1)"),
        ({"sample_rate": 1.5}, "sample_rate must be in (0, 1]"),
        ({"steps": 0}, "steps must be at least 1"),
    ],
)
def test_calibration_rejects_bad_input_with_a_named_value(kwargs, message):
    args = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.1, "steps": 10, **kwargs}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        calibrate_noise_multiplier(**args)


def test_cost_rejects_a_zero_noise_multiplier():
    with pytest.raises(ConfigError, match="noise_multiplier must be a positive finite number"):
        PrivacyCost(mechanism=Mechanism.DPSGD, noise_multiplier=0.0, sample_rate=0.1, steps=1)


def test_statistics_releases_compose_with_training_in_one_history():
    from fedcare.privacy.accounting import Mechanism, PrivacyCost

    train = PrivacyCost(mechanism=Mechanism.DPSGD, noise_multiplier=1.1, sample_rate=0.05, steps=100)
    laplace = PrivacyCost(mechanism=Mechanism.STATS_LAPLACE, noise_multiplier=40.0, sample_rate=1.0, steps=20)
    # pure epsilon (20 components at 1/40 each) adds to what the accountant says for the rest
    assert epsilon_of([laplace], delta=1e-5) == pytest.approx(0.5)
    assert epsilon_of([train, laplace], delta=1e-5) == pytest.approx(epsilon_of([train], delta=1e-5) + 0.5)
    gaussian = PrivacyCost(mechanism=Mechanism.STATS_GAUSSIAN, noise_multiplier=50.0, sample_rate=1.0, steps=20)
    both = epsilon_of([train, gaussian], delta=1e-5)
    assert epsilon_of([train], delta=1e-5) < both < epsilon_of([train], delta=1e-5) + epsilon_of([gaussian], delta=1e-5)
    with pytest.raises(ConfigError, match="Laplace release is not sampled"):
        PrivacyCost(mechanism=Mechanism.STATS_LAPLACE, noise_multiplier=40.0, sample_rate=0.5, steps=1)
