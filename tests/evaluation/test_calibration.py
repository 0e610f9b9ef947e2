import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from fedcare.errors import DataError
from fedcare.evaluation import calibration_report, expected_calibration_error, reliability_curve


def crafted():
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.random(200), [0.0, 0.1, 0.5, 0.9, 1.0]])  # edges included
    y = (rng.random(len(p)) < p**2).astype(float)  # over-confident model: true risk is p^2
    return y, p


@pytest.mark.parametrize("n_bins", [1, 5, 10])
def test_reliability_curve_matches_sklearn(n_bins):
    y, p = crafted()
    frac, mean, count = reliability_curve(y, p, n_bins)
    sk_frac, sk_mean = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    np.testing.assert_allclose(frac, sk_frac)
    np.testing.assert_allclose(mean, sk_mean)
    assert count.sum() == len(y)


def test_brier_and_ece_on_crafted_inputs():
    y, p = crafted()
    report = calibration_report(y, p)
    assert report["brier"] == pytest.approx(brier_score_loss(y, p))
    frac, mean = calibration_curve(y, p, n_bins=10)
    edges = np.linspace(0, 1, 11)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=10)
    counts = counts[counts > 0]
    assert report["ece"] == pytest.approx(np.sum(counts * np.abs(frac - mean)) / len(y))
    assert report["ece"] > 0.1  # the p^2 truth makes this model visibly mis-calibrated


def test_perfect_and_hand_computed_ece():
    # two bins: predictions 0.2 (observed 1 of 5 = 0.2) and 0.9 (observed 3 of 5 = 0.6)
    p = np.array([0.2] * 5 + [0.9] * 5)
    y = np.array([1, 0, 0, 0, 0, 1, 1, 1, 0, 0], dtype=float)
    assert expected_calibration_error(y, p, n_bins=10) == pytest.approx(0.5 * 0.0 + 0.5 * 0.3)


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(DataError, match="probabilities"):
        calibration_report(np.array([0, 1]), np.array([0.5, 1.5]))
    with pytest.raises(DataError, match="0 or 1"):
        calibration_report(np.array([0, 2]), np.array([0.5, 0.5]))
    with pytest.raises(DataError, match="2 labels but 3"):
        calibration_report(np.array([0, 1]), np.array([0.5, 0.5, 0.5]))
