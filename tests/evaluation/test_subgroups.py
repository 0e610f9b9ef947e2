import numpy as np
import pytest

from fedcare.errors import DataError
from fedcare.evaluation import subgroup_metrics


def test_a_model_wrong_for_women_shows_in_the_subgroup_table():
    # 10 men all classified right; 4 women all classified wrong: overall accuracy 10/14
    y = np.array([1, 0] * 5 + [1, 1, 0, 0], dtype=float)
    p = np.array([0.9, 0.1] * 5 + [0.2, 0.3, 0.8, 0.7])
    sex = np.array(["male"] * 10 + ["female"] * 4)
    band = np.array(["<50", "65+"] * 7)
    out = subgroup_metrics(y, p, {"sex": sex, "age_band": band}, kind="binary")
    assert out["sex"]["male"]["accuracy"] == 1.0
    assert out["sex"]["female"]["accuracy"] == 0.0
    assert out["sex"]["female"]["n"] == 4 and out["sex"]["female"]["positives"] == 2
    assert out["sex"]["female"]["sensitivity"] == 0.0 and out["sex"]["female"]["auc"] == 0.0
    assert out["sex"]["male"]["brier"] == pytest.approx(0.01)
    assert set(out["age_band"]) == {"<50", "65+"}
    assert out["age_band"]["<50"]["n"] == 7


def test_survival_subgroups_use_the_c_index():
    y = np.array([[1, 1], [2, 1], [3, 0], [4, 1], [5, 1], [6, 0]], dtype=float)
    risk = np.array([3.0, 2.0, 1.0, 0.0, 1.0, 2.0])
    out = subgroup_metrics(y, risk, {"age_band": np.array(["a"] * 3 + ["b"] * 3)}, kind="survival")
    assert out["age_band"]["a"]["c_index"] == 1.0  # risk falls with time
    assert out["age_band"]["b"]["c_index"] == 0.0  # risk rises with time
    assert out["age_band"]["b"]["events"] == 2


def test_length_mismatch_is_an_error():
    with pytest.raises(DataError, match="'sex' has 2 values for 3 rows"):
        subgroup_metrics(np.zeros(3), np.zeros(3), {"sex": np.array(["a", "b"])}, kind="binary")
