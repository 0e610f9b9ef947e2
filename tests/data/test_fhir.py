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
