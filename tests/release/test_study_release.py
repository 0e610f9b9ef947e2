"""A study file's run, released: lineage names the study's hash, the card says what travelled each round."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

import fedcare.cli.clinic  # noqa: F401  (registers release, predict, validate)
from fedcare.cli.app import app
from fedcare.errors import ConfigError
from fedcare.evaluation.recalibration import apply_platt, newton_platt, platt_terms, risk_logit
from fedcare.evaluation.validation import HIST_EDGES, feature_histograms, population_stability
from fedcare.release.bundle import build_bundle, load_bundle
from fedcare.release.predict import encode_rows, predict_rows
from fedcare.release.sharing import what_was_shared
from fedcare.simulate import load_study_sites, simulate_study, study_dataset
from fedcare.store import SqlStore
from fedcare.study.site import load_site
from fedcare.study.spec import parse_study
from fedcare.tasks.torch_adapter import TorchTask

ROOT = Path(__file__).resolve().parents[2]
HEART = ROOT / "examples" / "heart-study"
SITES = ("cleveland", "hungary", "switzerland")


def heart_study(**changes):
    raw = tomllib.loads((HEART / "study.toml").read_text())
    raw["federation"]["rounds"] = 2
    for table, values in changes.items():
        raw.setdefault(table, {}).update(copy.deepcopy(values))
    return parse_study(raw, where="heart study (test)")


@pytest.fixture(scope="module")
def secagg_release(tmp_path_factory):
    root = tmp_path_factory.mktemp("study-release")
    study = heart_study(secure_aggregation={"enabled": True}, evaluation={"calibration": "platt"})
    store = SqlStore(f"sqlite:///{root / 's.db'}")
    specs = [load_site(HEART / "sites" / f"{s}.toml") for s in SITES]
    simulate_study(study, specs, recorder=store, experiment_id="exp", settings=("federated",))
    manifest = build_bundle(store, "exp", root / "bundle")
    yield study, store, root / "bundle", manifest
    store.close()


def test_the_card_names_the_study_hash_and_each_rounds_protection(secagg_release):
    study, store, path, _ = secagg_release
    bundle = load_bundle(path)
    lineage = bundle.card["lineage"]
    assert (lineage["study"], lineage["study_hash"]) == ("heart-csv", study.hash)
    assert bundle.meta["study"]["spec"] == study.describe()  # the study itself travels in the bundle
    sharing = bundle.card["sharing"]
    assert [r["round"] for r in sharing["rounds"]] == [1, 2]
    for r in sharing["rounds"]:
        assert r["secure_aggregation"] and r["protection"] == "secagg+" and r["sites"] == list(SITES)
    assert all(r["differential_privacy"] == {} for r in sharing["rounds"])
    assert sharing["summary"] == {"secure_aggregation": "every round", "differential_privacy": "none"}
    assert sharing["parameters"]["shared"]["entries"] == ["weight", "bias"]
    assert sharing["parameters"]["local"]["entries"] == [] and bundle.card["privacy"]["secure_aggregation"]
    html = (path / "model_card.html").read_text()
    assert study.hash in html and "sum only (SecAgg+)" in html
    # the preprocessing of a schema study is in the bundle: raw rows can be scored
    assert bundle.preprocessing["target"] == "num" and "cp_2" in bundle.preprocessing["encoded"]


def test_federated_platt_scaling_equals_the_pooled_fit_and_predict_shows_it(secagg_release):
    study, store, path, _ = secagg_release
    bundle = load_bundle(path)
    recal = bundle.meta["calibration"]
    assert recal["method"] == "platt" and recal["sites"] == list(SITES) and recal["failures"] == {}
    # the pooled fit: the same training rows in one place, the same Newton loop
    by_id, inputs = load_study_sites(study, [load_site(HEART / "sites" / f"{s}.toml") for s in SITES])
    data = study_dataset(study, by_id, inputs)
    x = np.concatenate([data.sites[s].train.x for s in SITES])
    y = np.concatenate([data.sites[s].train.y for s in SITES])
    scores = risk_logit(bundle.task.predict(bundle.model, x))
    pooled = newton_platt(lambda a, b: platt_terms(scores, y, a, b))
    assert recal["n"] == len(y) == pooled.n
    assert recal["a"] == pytest.approx(pooled.a, rel=1e-9)
    assert recal["b"] == pytest.approx(pooled.b, rel=1e-9, abs=1e-12)
    # and it is the maximum-likelihood logistic regression of the outcome on the score (independent solver)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(scores[:, None], y)
    assert lr.coef_[0, 0] == pytest.approx(pooled.a, abs=1e-5) and lr.intercept_[0] == pytest.approx(pooled.b, abs=1e-5)
    # each Newton step was one recorded query exchange to every site
    (run,) = [r for r in store.list_runs("exp") if r.rounds > 0]
    steps = [e for e in store.exchanges(run.id, kind="query") if e.name == "platt"]
    assert len(steps) >= recal["iterations"] and all(e.answered == list(SITES) for e in steps)
    # predict: the risk and the calibrated probability side by side
    raw = pd.read_csv(HEART / "cleveland.csv", dtype=str, keep_default_na=False).head(5)
    report = predict_rows(bundle, raw)
    risks = np.array([p["risk"] for p in report.predictions])
    np.testing.assert_allclose(
        [p["calibrated_risk"] for p in report.predictions], apply_platt(risks, recal["a"], recal["b"]), atol=1e-12
    )
    assert "Recalibrated (platt" in (path / "model_card.html").read_text()


def test_validate_gives_psi_for_numeric_inputs_against_the_training_cohorts_histograms(secagg_release, tmp_path):
    study, _, path, _ = secagg_release
    bundle = load_bundle(path)
    ref = bundle.meta["reference"]
    pre = bundle.preprocessing
    # the reference: each site's standardised training rows binned (small cells suppressed there), summed
    by_id, inputs = load_study_sites(study, [load_site(HEART / "sites" / f"{s}.toml") for s in SITES])
    data = study_dataset(study, by_id, inputs)
    direct = np.sum([feature_histograms(data.sites[s].train.x, min_cell=5)[0] for s in SITES], axis=0)
    assert ref["histograms"] == dict(zip(pre["encoded"], direct.tolist(), strict=True))
    assert ref["sites"] == list(SITES) and ref["edges"] == list(HIST_EDGES)
    # a new hospital (VA Long Beach) validates: PSI of each numeric input against that reference
    out = tmp_path / "v.json"
    va = HEART / "va-long-beach.csv"
    args = ["validate", "--bundle", str(path), "--site", f"va={va}", "--outcome", "num>0", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    drift = json.loads(out.read_text())["per_site"]["va"]["drift"]
    x, _, _ = encode_rows(pd.read_csv(va, dtype=str, keep_default_na=False), pre)
    hist, _ = feature_histograms(x, min_cell=5)
    numeric = [f for f in pre["features"] if f not in pre["categorical"]]
    assert numeric == pre["encoded"][: len(numeric)] and "chol" in numeric
    for j, name in enumerate(numeric):
        assert drift["psi"][name] == pytest.approx(population_stability(ref["histograms"][name], hist[j]), abs=1e-12)
    flagged = {flag.split(":")[0] for flag in drift["flagged"] if "PSI" in flag}
    assert {"age", "thalach"} <= flagged and "trestbps" not in flagged  # VA's patients are older (SMD +0.9)
    assert "cp" in drift["psi"]  # categorical inputs keep their PSI


def test_a_bad_calibration_method_is_named():
    want = r"evaluation.calibration must be true, false or one of 'platt', got 'isotonic'"
    with pytest.raises(ConfigError, match=want):
        heart_study(evaluation={"calibration": "isotonic"})
    assert heart_study(evaluation={"calibration": "platt"}).describe()["evaluation"]["calibration"] == "platt"
    assert heart_study().hash == heart_study(evaluation={"calibration": True}).hash


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(13, 4)
        self.head = torch.nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x))).squeeze(-1)


def test_a_trainable_subset_is_what_the_card_says_travelled(tmp_path):
    task = TorchTask(name="head-only", model=_Net, loss=torch.nn.BCEWithLogitsLoss(), trainable=("head.",))
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    try:
        sharing = what_was_shared(store, "no-run", task, task.init_model(np.random.default_rng(0)), None)
    finally:
        store.close()
    params = sharing["parameters"]
    assert params["shared"]["entries"] == ["head.weight", "head.bias"] and params["shared"]["values"] == 5
    assert params["frozen"]["entries"] == ["body.weight", "body.bias"] and params["frozen"]["values"] == 56
    assert params["local"]["entries"] == []
    kept = TorchTask(name="kept", model=_Net, loss=torch.nn.BCEWithLogitsLoss(), local=("head.",))
    store = SqlStore(f"sqlite:///{tmp_path / 't.db'}")
    try:
        params = what_was_shared(store, "no-run", kept, kept.init_model(np.random.default_rng(0)), None)["parameters"]
    finally:
        store.close()
    assert params["local"]["entries"] == ["head.bias", "head.weight"] and params["frozen"]["entries"] == []
    assert params["shared"]["entries"] == ["body.weight", "body.bias"]


def test_each_rounds_dp_is_read_from_the_sites_ledgers(tmp_path):
    study = heart_study(privacy={"level": "client", "epsilon": 5.0, "delta": 1e-5, "clip_norm": 1.0})
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    try:
        specs = [load_site(HEART / "sites" / f"{s}.toml") for s in SITES[:2]]
        simulate_study(study, specs, recorder=store, experiment_id="e", settings=("federated",))
        manifest = build_bundle(store, "e", tmp_path / "bundle")
        card = load_bundle(tmp_path / "bundle").card
    finally:
        store.close()
    assert manifest["digest"]
    sharing = card["sharing"]
    assert [r["round"] for r in sharing["rounds"]] == [1, 2]
    for r in sharing["rounds"]:
        assert not r["secure_aggregation"] and sorted(r["differential_privacy"]) == list(SITES[:2])
        assert all(d["epsilon_round"] > 0 and d["noise_multiplier"] > 0 for d in r["differential_privacy"].values())
    assert sharing["summary"] == {"secure_aggregation": "none", "differential_privacy": "client: every round"}
