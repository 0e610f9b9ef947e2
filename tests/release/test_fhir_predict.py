"""`fedcare predict` on FHIR bundles: read by the FHIR connector with the study's mapping kept in the bundle."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
from tests.study.test_fhir_study import BUNDLES, STUDY
from typer.testing import CliRunner

import fedcare.cli.clinic  # noqa: F401  (registers predict)
from fedcare.cli.app import app
from fedcare.data.fhir import FhirMapping, read_bundles
from fedcare.data.schema import CheckReport
from fedcare.release.bundle import build_bundle, load_bundle
from fedcare.release.predict import encode_rows, predict_fhir
from fedcare.simulate import simulate_study
from fedcare.store import SqlStore
from fedcare.study.site import parse_site
from fedcare.study.spec import parse_study

BMI = "39156-5"


@pytest.fixture(scope="module")
def fhir_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("fhir-release")
    raw = copy.deepcopy(STUDY)
    raw["federation"]["rounds"] = 1
    study = parse_study(raw, where="synthea study (test)")
    specs = []
    for i, name in enumerate(("north", "south")):
        folder = root / name
        folder.mkdir()
        for bundle in BUNDLES[i::2]:
            shutil.copy(bundle, folder / bundle.name)
        specs.append(parse_site({"site": {"id": name}, "data": {"kind": "fhir", "path": str(folder)}}))
    store = SqlStore(f"sqlite:///{root / 's.db'}")
    try:
        simulate_study(study, specs, recorder=store, experiment_id="fhir", settings=("federated",))
        build_bundle(store, "fhir", root / "bundle")
    finally:
        store.close()
    return root / "bundle"


def _with_bmi(path, value):
    bundle = json.loads(path.read_text())
    for entry in bundle["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Observation" and any(c.get("code") == BMI for c in res["code"]["coding"]):
            res["valueQuantity"]["value"] = value
    path.write_text(json.dumps(bundle))
    return next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")


def test_fhir_patients_are_scored_and_bad_ones_named_with_bundle_field_and_reason(fhir_bundle, tmp_path):
    clinic = tmp_path / "clinic"
    clinic.mkdir()
    for b in BUNDLES[:5]:
        shutil.copy(b, clinic / b.name)
    victim = clinic / BUNDLES[1].name
    patient = _with_bmi(victim, 500.0)  # outside the study's [10, 80]
    (clinic / "broken.json").write_text("{not json")
    out = tmp_path / "p.json"
    result = CliRunner().invoke(
        app, ["predict", "--bundle", str(fhir_bundle), "--input", str(clinic), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert len(doc["predictions"]) == 4  # five bundles, one patient each: one refused
    refused = {(p["row"], p["field"]) for p in doc["problems"]}
    assert (f"{victim.name} (Patient {patient})", "bmi") in refused
    assert any(row == "broken.json" for row, _ in refused)
    reason = next(p["reason"] for p in doc["problems"] if p["field"] == "bmi")
    assert reason == "500 is outside the study's range [10, 80]"
    assert "broken.json" in result.output and "bmi" in result.output
    # the scored risks are the model's on the connector's rows, encoded with the training preprocessing
    bundle = load_bundle(fhir_bundle)
    one = predict_fhir(bundle, clinic / BUNDLES[0].name)  # a single bundle file works too
    assert len(one.predictions) == 1 and not one.problems
    first = next(p for p in doc["predictions"] if p["row"].startswith(BUNDLES[0].name))
    assert first["risk"] == pytest.approx(one.predictions[0]["risk"], abs=1e-12)
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(BUNDLES[0], single / BUNDLES[0].name)
    table = read_bundles(single, FhirMapping.from_mapping(STUDY["data"]["fhir"]), CheckReport(), needs=frozenset())
    x, good, _ = encode_rows(table, bundle.preprocessing)
    assert good == [0]
    want = float(np.asarray(bundle.task.predict(bundle.model, x)).ravel()[0])
    assert one.predictions[0]["risk"] == pytest.approx(want, abs=1e-9)
