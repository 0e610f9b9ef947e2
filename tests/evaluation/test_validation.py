"""External validation statistics: sites' sums combine to exactly the pooled computation."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fedcare.evaluation.calibration import expected_calibration_error
from fedcare.evaluation.uncertainty import delong_auc
from fedcare.evaluation.validation import combine_statistics, score_statistics, summarise_validation


def _std(d, freq):
    return (d - freq) / np.sqrt(freq * (1 - freq))


def _rows(n, rng, shift=0.0):
    x = rng.normal(shift, 1, (n, 3))
    d1, d2 = (rng.random(n) < 0.3).astype(float), (rng.random(n) < 0.2).astype(float)
    x = np.c_[x, _std(d1, 0.3), _std(d2, 0.2)]  # two dummies of one column, standardised as in training
    y = (rng.random(n) < 1 / (1 + np.exp(-(x[:, 0] - 0.5)))).astype(float)
    p = 1 / (1 + np.exp(-(0.9 * x[:, 0] - 0.4)))
    return x, y, p


def test_combined_site_statistics_equal_the_pooled_computation_on_the_same_rows():
    rng = np.random.default_rng(0)
    x, y, p = _rows(600, rng)
    cats = {"cp": [3, 4]}
    cuts = [0, 150, 380, 600]
    parts = [score_statistics(y[a:b], p[a:b], x[a:b], categorical=cats) for a, b in zip(cuts, cuts[1:], strict=False)]
    combined = combine_statistics(parts)
    pooled = score_statistics(y, p, x, categorical=cats)
    for key in ("pos_counts", "neg_counts", "cal_n", "cal_events", "categories", "n", "sum_y", "feat_n"):
        assert combined[key] == pooled[key], key
    for key in ("cal_sum_p", "feat_sum", "feat_sum2"):
        np.testing.assert_allclose(combined[key], pooled[key], rtol=1e-12)
    summary = summarise_validation(
        dict(zip("abc", parts, strict=True)), {"encoded": ["f0", "f1", "f2", "cp_2", "cp_3"]}
    )
    got = summary["pooled"]
    # the same numbers computed on the pooled rows directly
    binned = np.searchsorted(np.linspace(0, 1, 101)[1:-1], p)
    assert got["auc"]["value"] == pytest.approx(roc_auc_score(y, binned), abs=1e-12)
    auc, var = delong_auc(y, binned)
    assert got["auc"]["se"] == pytest.approx(np.sqrt(var), rel=1e-9)
    assert got["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=1e-12)
    assert got["ece"] == pytest.approx(expected_calibration_error(y, p), abs=1e-12)
    assert abs(got["auc"]["value"] - roc_auc_score(y, p)) < 0.005  # 100 bins cost little discrimination
    assert summary["meta"]["auc"]["k"] == 3


def test_small_cells_are_suppressed_at_the_site_and_listed():
    rng = np.random.default_rng(1)
    x, y, p = _rows(40, rng)
    stats = score_statistics(y, p, x, categorical={"cp": [3, 4]}, min_cell=5)
    assert all(c == 0 or c >= 5 for c in stats["pos_counts"] + stats["neg_counts"] + stats["cal_n"])
    assert stats["suppressed"] and all(c == 0 or c >= 5 for c in stats["categories"]["cp"])
    assert stats["bins"] < 100  # the score grid was coarsened before anything was zeroed
    summary = summarise_validation({"a": stats, "b": score_statistics(y, p, x, categorical={"cp": [3, 4]})}, {})
    assert np.isfinite(summary["per_site"]["a"]["auc"]["value"]) and summary["pooled"]["n"] == 80


def test_a_shifted_site_is_flagged_and_a_similar_one_is_not():
    rng = np.random.default_rng(2)
    pre = {"encoded": ["f0", "f1", "f2", "cp_2", "cp_3"], "mean": [0, 0, 0, 0.3, 0.2]}
    same = score_statistics(*_rows(2000, rng)[1:], _rows(2000, rng)[0], categorical={"cp": [3, 4]})
    x, y, p = _rows(2000, rng, shift=0.5)
    x[:, 3] = _std((rng.random(2000) < 0.7).astype(float), 0.3)
    x[:, 4] = _std(np.zeros(2000), 0.2)
    moved = score_statistics(y, p, x, categorical={"cp": [3, 4]})
    summary = summarise_validation({"same": same, "moved": moved}, pre)
    assert summary["per_site"]["same"]["drift"]["flagged"] == []
    flags = summary["per_site"]["moved"]["drift"]["flagged"]
    assert any(f.startswith("f0: SMD") for f in flags) and any(f.startswith("cp: PSI") for f in flags)
