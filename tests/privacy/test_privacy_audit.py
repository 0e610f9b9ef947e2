"""The one-run privacy audit (Steinke, Nasr & Jagielski 2023) catches a mechanism whose noise is off.

Each mechanism runs once on canaries included at random; with its noise the empirical
lower bound on ε stays below the accountant's ε, with the noise switched off (the
accountant still charging for it) the bound exceeds it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedcare.privacy import client_dp
from fedcare.privacy.accounting import calibrate_noise_multiplier, epsilon_of
from fedcare.privacy.audit import (
    audit_scores,
    client_dp_canary_scores,
    dpsgd_canary_scores,
    epsilon_lower_bound,
    p_value,
)
from fedcare.privacy.cost import Mechanism, PrivacyCost
from fedcare.privacy.plan import ClientDPMode

DELTA = 1e-5
CANARIES = 200
CLAIMED = 1.0


@pytest.fixture(scope="module")
def included():
    return np.random.default_rng(7).random(CANARIES) < 0.5


def test_the_bound_follows_the_binomial_test():
    # r guesses all correct: under pure ε-DP P[all correct] = q^r with q = e^ε / (1 + e^ε)
    eps = epsilon_lower_bound(1000, 100, 100, delta=0.0, beta=0.05)
    assert 0.05 ** (1 / 100) == pytest.approx(1 / (1 + math.exp(-eps)), rel=1e-6)
    assert epsilon_lower_bound(1000, 100, 55, delta=DELTA) == 0.0  # chance level proves nothing
    assert p_value(1000, 100, 100, eps, 0.0) == pytest.approx(0.05, rel=1e-4)
    assert p_value(1000, 100, 100, eps, DELTA) > p_value(1000, 100, 100, eps, 0.0)  # δ only weakens the test
    assert epsilon_lower_bound(1000, 500, 500, delta=DELTA) > epsilon_lower_bound(1000, 100, 100, delta=DELTA)


def test_scores_that_carry_no_information_bound_nothing(included):
    assert audit_scores(np.zeros(CANARIES), included, delta=DELTA).epsilon_lower == 0.0


def _dpsgd(included, *, noise_off: bool) -> tuple[float, float]:
    steps = 3
    sigma = calibrate_noise_multiplier(target_epsilon=CLAIMED, delta=DELTA, sample_rate=1.0, steps=steps)
    claimed = epsilon_of([PrivacyCost(Mechanism.DPSGD, sigma, 1.0, steps)], delta=DELTA)
    scores = dpsgd_canary_scores(
        included,
        noise_multiplier=0.0 if noise_off else sigma,
        max_grad_norm=1.0,
        sample_rate=1.0,
        steps=steps,
        filler=16,
        seed=3,
    )
    return audit_scores(scores, included, delta=DELTA).epsilon_lower, claimed


def test_dpsgd_with_its_noise_stays_below_the_accountant(included):
    bound, claimed = _dpsgd(included, noise_off=False)
    assert bound < claimed


def test_dpsgd_with_its_noise_switched_off_is_caught(included):
    bound, claimed = _dpsgd(included, noise_off=True)
    assert bound > claimed, f"audit lower bound {bound:.2f} should exceed the claimed {claimed:.2f}"


def _client(included, mode: ClientDPMode) -> tuple[float, float]:
    rounds = 3
    z = calibrate_noise_multiplier(target_epsilon=CLAIMED, delta=DELTA, sample_rate=1.0, steps=rounds)
    claimed = epsilon_of([PrivacyCost(Mechanism.CLIENT_CENTRAL, z, 1.0, rounds)], delta=DELTA)
    scores = client_dp_canary_scores(
        included, noise_multiplier=z, clip_norm=1.0, rounds=rounds, delta=DELTA, mode=mode, filler=4, seed=3
    )
    return audit_scores(scores, included, delta=DELTA).epsilon_lower, claimed


@pytest.mark.parametrize("mode", [ClientDPMode.CENTRAL, ClientDPMode.DISTRIBUTED])
def test_client_level_dp_with_its_noise_stays_below_the_accountant(included, mode):
    bound, claimed = _client(included, mode)
    assert bound < claimed


@pytest.mark.parametrize("mode", [ClientDPMode.CENTRAL, ClientDPMode.DISTRIBUTED])
def test_client_level_dp_with_its_noise_switched_off_is_caught(included, mode, monkeypatch):
    # the bug: the server forgets to noise the mean, the sites forget their shares; the ledger still charges
    monkeypatch.setattr(client_dp._NoisyMeanFold, "mean", lambda self: self._inner.mean())
    monkeypatch.setattr(client_dp.ClientDP, "share_std", property(lambda self: 0.0))
    bound, claimed = _client(included, mode)
    assert bound > claimed, f"audit lower bound {bound:.2f} should exceed the claimed {claimed:.2f}"


def test_clipping_switched_off_is_caught_too(included, monkeypatch):
    """Canary updates are 10 C long: without clipping their signal outgrows the calibrated noise."""
    monkeypatch.setattr(client_dp, "clip_l2", lambda update, clip_norm: (dict(update), client_dp.l2_norm(update)))
    bound, claimed = _client(included, ClientDPMode.CENTRAL)
    assert bound > claimed


def test_fedcare_privacy_audit_reports_the_bound_beside_the_accountant():
    from typer.testing import CliRunner

    import fedcare.cli.privacy  # noqa: F401  (registers the command)
    from fedcare.cli.app import app

    argv = ["privacy", "audit", "--epsilon", "1", "--level", "client-central", "--steps", "2"]
    result = CliRunner().invoke(app, [*argv, "--canaries", "100", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "client-central: noise multiplier" in result.output and "audit lower bound" in result.output
    assert "ok" in result.output
    bad = CliRunner().invoke(app, ["privacy", "audit", "--epsilon", "1", "--level", "sample"])
    assert bad.exit_code == 2 and "audit level must be one of" in bad.output
