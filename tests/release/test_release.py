"""Release bundles: verified, predictions equal the in-memory model's, the card's figures equal the store's."""

import json
from dataclasses import replace

import numpy as np
import pytest

from fedcare.datasets.heart_disease import RECIPE, load_raw
from fedcare.demos import get_demo
from fedcare.experiment import run_experiment
from fedcare.release.bundle import BundleError, build_bundle, load_bundle
from fedcare.release.predict import encode_rows, predict_rows
from fedcare.report.from_store import summary_from_store
from fedcare.store import SqlStore
from fedcare.types import RunId


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    recipe = get_demo("heart-disease")
    data = recipe.load()
    cfg = replace(recipe.config, rounds=3)
    store = SqlStore(f"sqlite:///{root / 's.db'}")
    run_experiment(data, recipe.make_task(data), cfg, recorder=store, experiment_id="exp", settings=("federated",))
    manifest = build_bundle(store, "exp", root / "bundle")
    yield store, root / "bundle", manifest, data
    store.close()


def test_bundle_model_and_card_figures_equal_the_store(released):
    store, path, manifest, _ = released
    bundle = load_bundle(path)
    assert bundle.digest == manifest["digest"]
    _, state = store.latest_checkpoint(RunId("exp-fedavg"))
    for name, array in state.model.items():
        np.testing.assert_array_equal(bundle.model[name], array)
    summary = summary_from_store(store, "exp")
    fed = summary["settings"]["fedavg"]
    card = bundle.card
    for site, metrics in fed["per_site"].items():
        assert card["performance"]["per_site"][site]["auc"]["value"] == metrics["auc"]
        iv = fed["uncertainty"]["per_site"][site]["auc"]
        assert (
            card["performance"]["per_site"][site]["auc"]["lo"],
            card["performance"]["per_site"][site]["auc"]["hi"],
        ) == (
            iv["lo"],
            iv["hi"],
        )
        assert card["calibration"][site]["ece"] == fed["calibration"][site]["ece"]
    assert card["performance"]["pooled_test"]["auc"]["value"] == fed["pooled_test"]["auc"]
    assert card["lineage"]["task_hash"] == summary["task"]["hash"] and card["lineage"]["rounds"] == 3
    assert card["data"]["predictors"] == list(RECIPE.features)
    assert {s["id"]: s["n_test"] for s in card["data"]["sites"]} == {
        s: int(m["n_test"]) for s, m in fed["per_site"].items()
    }
    assert "Model card" in (path / "model_card.html").read_text()


def test_predictions_from_raw_rows_equal_the_trained_models_on_the_same_patients(released):
    _, path, _, data = released
    bundle = load_bundle(path)
    raw = load_raw()["cleveland"].head(40)
    report = predict_rows(bundle, raw.astype(str), top=13)
    assert not report.problems and len(report.predictions) == 40
    x, good, _ = encode_rows(raw, bundle.preprocessing)
    want = bundle.task.predict(bundle.model, x)
    got = np.array([p["risk"] for p in report.predictions])
    np.testing.assert_allclose(got, want, atol=1e-6)
    # the bundle's preprocessing is the training one: the same encoded rows as the data set's
    train_x = data.sites["cleveland"]
    all_x, _, _ = encode_rows(load_raw()["cleveland"], bundle.preprocessing)
    rows = np.concatenate([train_x.train.x, train_x.test.x])
    assert all(np.isclose(all_x, r, atol=1e-5).all(axis=1).any() for r in rows[:20])
    # linear contributions sum, with the bias, to the logit
    for p, risk in zip(report.predictions, got, strict=True):
        assert p["bias"] + sum(p["contributions"].values()) == pytest.approx(np.log(risk / (1 - risk)), abs=1e-5)


def test_malformed_rows_are_named_and_skipped_the_rest_scored(released):
    _, path, _, _ = released
    bundle = load_bundle(path)
    frame = load_raw()["hungary"].head(5).astype(str)
    frame.loc[1, "age"] = "sixty"
    frame.loc[3, "cp"] = "7"
    frame.loc[4, "chol"] = ""
    report = predict_rows(bundle, frame)
    assert [p["row"] for p in report.predictions] == [1, 3]
    assert [(q.row, q.field) for q in report.problems] == [(2, "age"), (4, "cp"), (5, "chol")]
    assert "not a number" in report.problems[0].reason and "not one of 1.0, 2.0, 3.0, 4.0" in report.problems[1].reason
    assert report.problems[2].reason == "missing value"


def test_a_modified_bundle_is_refused(released, tmp_path):
    _, path, _, _ = released
    copy = tmp_path / "b"
    copy.mkdir()
    for f in path.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    meta = json.loads((copy / "bundle.json").read_text())
    meta["preprocessing"]["mean"][0] += 1.0
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="bundle.json: sha256 differs"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not a release bundle"):
        load_bundle(tmp_path)


def test_predict_and_validate_from_the_command_line(released, tmp_path):
    from typer.testing import CliRunner

    import fedcare.cli.clinic  # noqa: F401
    from fedcare.cli.app import app
    from fedcare.evaluation.validation import score_statistics

    _, path, _, _ = released
    raw = load_raw()
    patients = raw["switzerland"].head(6).astype(str)
    patients.loc[2, "oldpeak"] = "n/a"
    patients.to_csv(tmp_path / "patients.csv", index=False)
    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--bundle",
            str(path),
            "--input",
            str(tmp_path / "patients.csv"),
            "--out",
            str(tmp_path / "p.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads((tmp_path / "p.json").read_text())
    assert [p["row"] for p in out["predictions"]] == [1, 2, 4, 5, 6]
    assert out["problems"] == [{"row": 3, "field": "oldpeak", "reason": "'n/a' is not a number"}]
    for site in ("hungary", "va-long-beach"):
        raw[site].to_csv(tmp_path / f"{site}.csv", index=False)
    args = [
        "validate",
        "--bundle",
        str(path),
        "--outcome",
        "num>0",
        "--min-cell",
        "0",
        "--out",
        str(tmp_path / "v.json"),
    ]
    args += ["--site", f"hungary={tmp_path / 'hungary.csv'}", "--site", f"va={tmp_path / 'va-long-beach.csv'}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "external validation" in res.output
    got = json.loads((tmp_path / "v.json").read_text())
    bundle = load_bundle(path)
    x, _, _ = encode_rows(raw["hungary"], bundle.preprocessing)
    y = (raw["hungary"]["num"].to_numpy() > 0).astype(float)
    p = bundle.task.predict(bundle.model, x)
    direct = score_statistics(y, p)
    assert got["per_site"]["hungary"]["n"] == len(y) and got["per_site"]["hungary"]["events"] == int(y.sum())
    assert got["per_site"]["hungary"]["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=1e-9)
    assert direct["n"] == got["per_site"]["hungary"]["n"]
    assert set(got["pooled"]["drift"]) == {"smd", "psi", "flagged"}


def test_serve_answers_one_patient_and_names_bad_fields(released):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fedcare.errors import ConfigError
    from fedcare.release.serve import create_serve_app

    _, path, _, _ = released
    bundle = load_bundle(path)
    row = load_raw()["cleveland"].iloc[0]
    patient = {k: float(row[k]) for k in RECIPE.features}
    want = predict_rows(bundle, load_raw()["cleveland"].head(1).astype(str)).predictions[0]["risk"]
    with TestClient(create_serve_app(bundle)) as client:
        got = client.post("/api/predict", json=patient)
        assert got.status_code == 200 and got.json()["prediction"]["risk"] == pytest.approx(want, abs=1e-12)
        bad = client.post("/api/predict", json={**patient, "cp": 9, "age": None})
        assert bad.status_code == 422
        assert {p["field"] for p in bad.json()["problems"]} == {"cp", "age"}
        assert client.get("/api/model").json()["digest"] == bundle.digest
    with TestClient(create_serve_app(bundle, token="s" * 24)) as client:
        assert client.post("/api/predict", json=patient).status_code == 401
        ok = client.post("/api/predict", json=patient, headers={"Authorization": "Bearer " + "s" * 24})
        assert ok.status_code == 200
    from fedcare.dashboard.web import check_bind

    with pytest.raises(ConfigError):
        check_bind("0.0.0.0", None)  # `fedcare serve --host 0.0.0.0` without a token is refused
