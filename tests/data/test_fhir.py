"""FHIR R4 connector on the ten real Synthea bundles (tests/fixtures/synthea)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from datahelpers import SYNTHEA, tree_hashes

from fedcare.data.config import load_site_config
from fedcare.data.connect import check_site, load_site
from fedcare.data.partition import natural_partition
from fedcare.errors import ConfigError

STUDY = """
[fhir]
reference_date = "2021-06-01"
[fhir.conditions]
hypertension = ["http://snomed.info/sct|38341003", "http://hl7.org/fhir/sid/icd-10-cm|I10"]
obesity = ["162864005"]
[fhir.observations]
bmi = { code = "39156-5", unit = "kg/m2" }
systolic_bp = "8480-6"
weight = "29463-7"

[schema]
target = "hypertension"
[schema.columns.age]
type = "number"
min = 0
max = 120
[schema.columns.sex]
type = "category"
codes = ["female", "male"]
[schema.columns.bmi]
min = 10
max = 80
[schema.columns.systolic_bp]
min = 50
max = 250
[schema.columns.obesity]
type = "boolean"
[schema.columns.hypertension]
type = "boolean"
"""


def site_toml(path) -> str:
    return f'[site]\nid = "synthea"\n[source]\nkind = "fhir"\npath = "{path}"\n{STUDY}'


def test_synthea_bundles_become_one_row_per_patient(write_config):
    before = tree_hashes(SYNTHEA)
    site = load_site(load_site_config(write_config(site_toml(SYNTHEA))))
    raw = site.raw.set_index("patient_id")
    assert len(raw) == 10 and len(site.report.sources) == 10
    # Alfreda Wyman: born 1980-10-28, female, Lahey, hypertensive (values read from the bundle by hand)
    alfreda = raw.loc["6d23a95e-7e18-4201-90ec-9501fa89fbd2"]
    assert alfreda["age"] == 40 and alfreda["sex"] == "female" and alfreda["hypertension"] == 1
    assert alfreda["organization"] == "LAHEY HOSPITAL & MEDICAL CENTER, BURLINGTON"
    assert alfreda["systolic_bp"] == pytest.approx(167.891436, abs=1e-5)  # latest 55284-4 component 8480-6
    assert raw["hypertension"].sum() == 3 and raw["obesity"].sum() == 3  # SNOMED 38341003 / 162864005 in 3 bundles each
    assert raw["sex"].value_counts().to_dict() == {"female": 5, "male": 5}
    # the two babies (born 2020) have no BMI observation: missing, allowed
    assert int(np.isnan(raw["bmi"]).sum()) == 2
    assert raw["organization"].nunique() == 9
    assert sorted(len(v) for v in natural_partition(site.raw["organization"]).values()) == [1] * 8 + [2]
    assert site.frame.shape == (10, 6)
    assert tree_hashes(SYNTHEA) == before


def test_broken_bundles_are_each_named_and_the_rest_still_load(write_config, tmp_path):
    folder = tmp_path / "bundles"
    shutil.copytree(SYNTHEA, folder)
    liz = folder / "Liz_Conn_27c911c6-f045-4ffa-af5d-6eba57ac94b2.json"
    doc = json.loads(liz.read_text())
    obs = next(i for i, e in enumerate(doc["entry"]) if e["resource"]["resourceType"] == "Observation")
    del doc["entry"][obs]["resource"]["status"]  # Observation.status is 1..1 in FHIR R4
    liz.write_text(json.dumps(doc))
    ned = folder / "Ned_Hintz_e4b9259d-0f54-48d1-a35d-b526729a4dfe.json"
    doc = json.loads(ned.read_text())
    del doc["type"]  # Bundle.type is 1..1
    ned.write_text(json.dumps(doc))
    buster = folder / "Buster_Hoeger_ad2e3fc5-2b5d-4cb9-8d03-9ea0f4ac8423.json"
    doc = json.loads(buster.read_text())
    patient = next(e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == "Patient")
    del patient["birthDate"]
    patient["gender"] = "unknown"
    buster.write_text(json.dumps(doc))
    (folder / "truncated.json").write_text(liz.read_text()[:5000])
    before = tree_hashes(folder)

    site = check_site(load_site_config(write_config(site_toml(folder))))
    text = [str(p) for p in site.report.problems]
    assert (
        f"{liz.name}: entry.{obs}.resource.status: Value for the field 'status' is required. (FHIR R4 validation)"
        in text
    )
    assert f"{ned.name}: type: Value for the field 'type' is required. (FHIR R4 validation)" in text
    assert f"{buster.name}: Patient e4531916-b162-4f4b-90c2-ce37e132b8d4: has no birthDate (needed for 'age')" in text
    assert any(t.startswith("truncated.json: is not readable JSON") for t in text)
    assert "synthea_fhir_r4" not in " ".join(text)
    # Buster's row is kept but its missing age and unknown sex code are caught by the schema check
    assert any("column 'sex': 1 unknown code(s), allowed ['female', 'male']" in t for t in text)
    assert len(site.raw) == 8  # Liz and Ned unusable, truncated file unreadable
    assert tree_hashes(folder) == before


def test_unit_mismatch_is_reported(write_config):
    cfg = load_site_config(write_config(site_toml(SYNTHEA).replace('unit = "kg/m2"', 'unit = "lb/in2"')))
    problems = check_site(cfg).report.problems
    assert problems and all("'bmi' in unit 'kg/m2', the study expects 'lb/in2'" in p.message for p in problems)


def test_fhir_mapping_errors_are_config_errors(write_config):
    with pytest.raises(ConfigError, match="reference_date 'june' is not an ISO date"):
        load_site_config(write_config(site_toml(SYNTHEA).replace('"2021-06-01"', '"june"')))


# --- references resolved as FHIR R4 says (bundle.html#references), on small hand-written bundles ---

REFS_STUDY = """
[fhir]
reference_date = "2021-06-01"
[fhir.conditions]
hypertension = ["http://hl7.org/fhir/sid/icd-10-cm|I10"]
[fhir.observations]
systolic_bp = "8480-6"
[schema]
target = "hypertension"
[schema.columns.age]
[schema.columns.systolic_bp]
[schema.columns.hypertension]
type = "boolean"
"""


def _patient(pid=None, born="1960-01-01", gender="female"):
    res = {"resourceType": "Patient", "gender": gender, "birthDate": born}
    return res | ({"id": pid} if pid else {})


def _sbp(subject, value, when="2020-01-01"):
    return {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": subject},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": "mmHg", "code": "mm[Hg]"},
    }


def _htn(subject):
    return {
        "resourceType": "Condition",
        "subject": {"reference": subject},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"}]},
    }


def _bundle(folder, name, entries, kind="transaction"):
    folder.mkdir(exist_ok=True)
    body = []
    for url, res in entries:
        entry = {"resource": res} | ({"fullUrl": url} if url else {})
        if kind == "transaction":
            entry["request"] = {"method": "POST", "url": res["resourceType"]}
        body.append(entry)
    (folder / name).write_text(json.dumps({"resourceType": "Bundle", "type": kind, "entry": body}))


def _refs_site(tmp_path, folder):
    path = tmp_path / "refs.toml"
    path.write_text(f'[site]\nid = "refs"\n[source]\nkind = "fhir"\npath = "{folder}"\n{REFS_STUDY}')
    return check_site(load_site_config(path))


def test_transaction_bundles_without_ids_resolve_urn_uuid_full_urls(tmp_path):
    # the shape synthetic generators write: no resource ids, every reference is an entry's urn:uuid fullUrl
    folder = tmp_path / "tx"
    p1, p2 = "urn:uuid:0b1e6c52-0000-4000-8000-000000000001", "urn:uuid:0b1e6c52-0000-4000-8000-000000000002"
    org = {"resourceType": "Organization", "name": "North Clinic", "identifier": [{"system": "urn:h", "value": "N1"}]}
    enc = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": p2},
        "serviceProvider": {"reference": "Organization?identifier=urn:h|N1"},  # a conditional reference
    }
    entries = [
        ("urn:uuid:0b1e6c52-0000-4000-8000-00000000000a", {"resourceType": "Organization", "name": "Other"}),
        (p1, _patient()),
        (p2, _patient(born="1990-06-01", gender="male")),
        ("urn:uuid:0b1e6c52-0000-4000-8000-00000000000b", org),
        ("urn:uuid:0b1e6c52-0000-4000-8000-00000000000c", enc),
        ("urn:uuid:0b1e6c52-0000-4000-8000-00000000000d", _sbp(p1, 150.0)),
        ("urn:uuid:0b1e6c52-0000-4000-8000-00000000000e", _sbp(p2, 118.0)),
        ("urn:uuid:0b1e6c52-0000-4000-8000-00000000000f", _htn(p1)),
    ]
    _bundle(folder, "tx.json", entries)
    site = _refs_site(tmp_path, folder)
    assert site.report.problems == []
    raw = site.raw.set_index("patient_id")
    assert list(raw.index) == [p1.removeprefix("urn:uuid:"), p2.removeprefix("urn:uuid:")]
    assert raw["systolic_bp"].tolist() == [150.0, 118.0] and raw["hypertension"].tolist() == [1, 0]
    assert raw["age"].tolist() == [61, 31]
    assert raw["organization"].tolist() == ["Other", "North Clinic"]  # p2's encounter names North Clinic


def test_restful_full_urls_resolve_relative_absolute_and_versioned_references(tmp_path):
    folder = tmp_path / "rest"
    base = "http://hospital.example/fhir"
    entries = [
        (f"{base}/Patient/a", _patient("a")),
        (f"{base}/Patient/b", _patient("b", gender="male")),
        (f"{base}/Observation/1", _sbp("Patient/a", 141.0)),  # relative to the referring entry's base
        (f"{base}/Observation/2", _sbp(f"{base}/Patient/b", 122.0)),  # absolute, equal to a fullUrl
        (f"{base}/Condition/3", _htn("Patient/b/_history/2")),  # a version is ignored
    ]
    _bundle(folder, "rest.json", entries, kind="collection")
    # a collection without fullUrls: relative references by type and id
    _bundle(folder, "plain.json", [(None, _patient("c")), (None, _sbp("Patient/c", 133.0)), (None, _htn("Patient/c"))])
    site = _refs_site(tmp_path, folder)
    assert site.report.problems == []
    raw = site.raw.set_index("patient_id")
    assert raw.loc[["a", "b", "c"], "systolic_bp"].tolist() == [141.0, 122.0, 133.0]
    assert raw.loc[["a", "b", "c"], "hypertension"].tolist() == [0, 1, 1]


def test_references_outside_the_bundle_are_named_problems(tmp_path):
    folder = tmp_path / "bad"
    p1 = "urn:uuid:0b1e6c52-0000-4000-8000-000000000001"
    entries = [
        (p1, _patient()),
        (None, _patient("p2")),
        ("urn:uuid:0b1e6c52-0000-4000-8000-0000000000a1", _sbp("urn:uuid:0b1e6c52-0000-4000-8000-00000000dead", 1.0)),
        ("urn:uuid:0b1e6c52-0000-4000-8000-0000000000a2", _sbp("http://elsewhere.example/fhir/Patient/p2", 2.0)),
        ("urn:uuid:0b1e6c52-0000-4000-8000-0000000000a3", _htn("p2")),  # a bare id is no FHIR reference
        ("urn:uuid:0b1e6c52-0000-4000-8000-0000000000a4", _sbp("Patient/p2", 130.0)),
    ]
    _bundle(folder, "bad.json", entries)
    site = _refs_site(tmp_path, folder)
    text = [str(p) for p in site.report.problems]
    assert text == [
        "bad.json: entry.2 (Observation urn:uuid:0b1e6c52-0000-4000-8000-0000000000a1): refers to unknown patient "
        "'urn:uuid:0b1e6c52-0000-4000-8000-00000000dead'",
        "bad.json: entry.3 (Observation urn:uuid:0b1e6c52-0000-4000-8000-0000000000a2): refers to unknown patient "
        "'http://elsewhere.example/fhir/Patient/p2'",
        "bad.json: entry.4 (Condition urn:uuid:0b1e6c52-0000-4000-8000-0000000000a3): refers to unknown patient 'p2'",
    ]
    raw = site.raw.set_index("patient_id")
    assert raw.loc["p2", "systolic_bp"] == 130.0 and raw.loc["p2", "hypertension"] == 0
    assert np.isnan(raw.loc[p1.removeprefix("urn:uuid:"), "systolic_bp"])


def test_a_patient_without_id_exported_twice_counts_once_and_is_named(tmp_path):
    folder = tmp_path / "twice"
    p1 = "urn:uuid:0b1e6c52-0000-4000-8000-000000000001"
    for name in ("export-1.json", "export-2.json"):
        _bundle(folder, name, [(p1, _patient()), ("urn:uuid:0b1e6c52-0000-4000-8000-0000000000a1", _sbp(p1, 140.0))])
    site = _refs_site(tmp_path, folder)
    assert len(site.raw) == 1
    assert [str(p) for p in site.report.problems] == [
        "export-2.json: Patient 0b1e6c52-0000-4000-8000-000000000001: "
        "is also in bundle export-1.json: counted once only"
    ]
