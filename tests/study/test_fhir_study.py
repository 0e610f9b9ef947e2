"""A study over FHIR sites: the Synthea bundles as two hospitals, hypertension from age, sex, BMI, blood pressure.

Ten patients prove the path (connector → schema → preparation at the site → training →
report), not the model. A site whose bundles break the schema is refused before any
training, naming the bundle and the field.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fedcare.cli.study  # noqa: F401  (registers simulate, up)
from fedcare.cli.app import app
from fedcare.store import SqlStore
from fedcare.study.toml import dump_toml

ROOT = Path(__file__).resolve().parents[2]
BUNDLES = sorted((ROOT / "tests" / "fixtures" / "synthea").glob("*.json"))
STUDY = {
    "study": {"name": "synthea-htn", "seed": 0},
    "task": {"name": "logreg"},
    "data": {
        "target": "hypertension",
        "test_fraction": 0.34,
        "split_seed": 0,
        "columns": {
            "age": {"type": "number", "min": 0, "max": 120},
            "sex": {"type": "category", "codes": ["female", "male"]},
            "bmi": {"type": "number", "min": 10, "max": 80},
            "systolic_bp": {"type": "number", "min": 50, "max": 250},
            "hypertension": {"type": "boolean"},
        },
        "fhir": {
            "reference_date": "2021-06-01",
            "conditions": {
                "hypertension": ["http://snomed.info/sct|38341003", "http://hl7.org/fhir/sid/icd-10-cm|I10"]
            },
            "observations": {"bmi": {"code": "39156-5", "unit": "kg/m2"}, "systolic_bp": "8480-6"},
        },
    },
    "federation": {"rounds": 2, "min_sites": 2, "round_timeout_s": 120},
    "fit": {"optimizer": "sgd", "lr": 0.1, "batch_size": 2, "local_epochs": 1},
    "baseline": {"optimizer": "sgd", "lr": 0.1, "batch_size": 2, "local_epochs": 1},
}


def _sites(root: Path) -> tuple[Path, list[Path]]:
    study = root / "study.toml"
    study.write_text(dump_toml(STUDY))
    files = []
    for i, name in enumerate(("north", "south")):
        folder = root / name
        folder.mkdir()
        for bundle in BUNDLES[i::2]:
            shutil.copy(bundle, folder / bundle.name)
        site = root / f"{name}.toml"
        site.write_text(dump_toml({"site": {"id": name}, "data": {"kind": "fhir", "path": name}}))
        files.append(site)
    return study, files


def test_a_fhir_study_trains_in_simulation_and_writes_the_report(tmp_path):
    study, sites = _sites(tmp_path)
    out = tmp_path / "out"
    args = ["simulate", "--study", str(study), *[a for s in sites for a in ("--site", str(s))]]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--db", f"sqlite:///{tmp_path / 's.db'}"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["settings"]["fedavg"]["per_site"]) == {"north", "south"}
    assert sum(s["n_test"] for s in summary["settings"]["fedavg"]["per_site"].values()) >= 2
    assert (out / "report.html").stat().st_size > 0


def test_a_site_whose_bundles_break_the_schema_is_refused_before_training(tmp_path):
    study, sites = _sites(tmp_path)
    victim = sorted((tmp_path / "south").glob("*.json"))[0]
    bundle = json.loads(victim.read_text())
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] == "Observation" and resource["code"]["coding"][0].get("code") == "39156-5":
            resource["valueQuantity"]["value"] = 500.0  # a BMI of 500: outside the schema's [10, 80]
    victim.write_text(json.dumps(bundle))
    db = f"sqlite:///{tmp_path / 's.db'}"
    args = ["simulate", "--study", str(study), *[a for s in sites for a in ("--site", str(s))], "--db", db]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 3, result.output
    assert victim.name in result.output and "bmi" in result.output
    assert not (tmp_path / "out").exists()
    store = SqlStore(db)
    assert store.list_runs() == []  # nothing trained, nothing recorded
    store.close()


@pytest.mark.slow
@pytest.mark.grpc
def test_a_fhir_study_runs_in_a_local_rehearsal(tmp_path):
    study, sites = _sites(tmp_path)
    out = tmp_path / "up"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedcare", "up", "--study", str(study), *[a for s in sites for a in ("--site", str(s))]]
        + ["--out", str(out), "--db", f"sqlite:///{tmp_path / 'up.db'}", "--timeout", "600"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "completed" in proc.stdout
    assert (out / "report.html").exists() and (out / "summary.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert set(next(iter(summary["settings"].values()))["per_site"]) == {"north", "south"}
