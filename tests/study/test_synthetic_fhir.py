"""Synthetic FHIR R4 sites (carebundle): `fedcare data synth-fhir` writes bundles that pass `data check` and train.

A few dozen patients keep this fast; benchmarks/fhir_study.py trains on thousands.
"""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
from typer.testing import CliRunner

import fedcare.cli.data  # noqa: F401  (registers data synth-fhir, data check)
import fedcare.cli.study  # noqa: F401  (registers simulate)
from fedcare.cli.app import app
from fedcare.study.synthetic_fhir import write_synthetic_fhir

pytest.importorskip("carebundle")  # the `synth` extra (in `dev`, so CI has it)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "fhir"
    result = CliRunner().invoke(
        app,
        ["data", "synth-fhir", "--patients", "30", "--sites", "3", "--out", str(out), "--seed", "1", "--rounds", "1"],
    )
    assert result.exit_code == 0, result.output
    return out, result.output


def test_generated_sites_pass_data_check_and_differ_as_planned(synth):
    out, output = synth
    assert "next: fedcare simulate --study" in output
    for name, ages in (("site-a", (30, 55)), ("site-b", (45, 70)), ("site-c", (60, 85))):
        assert len(list((out / name).glob("*.json"))) == 10
        assert f"{name}: 10 patients, age {ages[0]}-{ages[1]}" in output
    # one site through `data check` here; simulate checks every site's data before it trains
    checked = CliRunner().invoke(
        app, ["data", "check", "--config", str(out / "site-c.toml"), "--study", str(out / "study.toml")]
    )
    assert checked.exit_code == 0, checked.output
    assert "10 row(s)" in checked.output and "ok: the data fits the study schema" in checked.output


def test_generated_sites_train_one_round_in_simulation(synth, tmp_path):
    out, _ = synth
    sites = [a for name in ("site-a", "site-b", "site-c") for a in ("--site", str(out / f"{name}.toml"))]
    run = tmp_path / "run"
    args = ["simulate", "--study", str(out / "study.toml"), *sites, "--out", str(run)]
    result = CliRunner().invoke(app, [*args, "--db", f"sqlite:///{tmp_path / 's.db'}"])
    assert result.exit_code == 0, result.output
    summary = json.loads((run / "summary.json").read_text())
    per_site = summary["settings"]["fedavg"]["per_site"]
    assert set(per_site) == {"site-a", "site-b", "site-c"}
    assert sum(s["n_test"] for s in per_site.values()) >= 6  # about 30 % of 30 patients held out for testing


def test_the_same_seed_writes_the_same_bundles_and_another_seed_other_patients(tmp_path):
    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.json"))}

    first = write_synthetic_fhir(tmp_path / "a", patients=10, sites=1, seed=5)
    again = write_synthetic_fhir(tmp_path / "b", patients=10, sites=1, seed=5)
    other = write_synthetic_fhir(tmp_path / "c", patients=10, sites=1, seed=6)
    assert digest(first.out / "site-a") == digest(again.out / "site-a")
    assert not set(digest(first.out / "site-a").values()) & set(digest(other.out / "site-a").values())


def test_bad_requests_are_one_line_errors_and_write_nothing(tmp_path, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "out"
    few = runner.invoke(app, ["data", "synth-fhir", "--patients", "15", "--sites", "2", "--out", str(out)])
    assert few.exit_code == 2 and "--patients 15 is too few for 2 site(s): at least 10 per site" in few.output
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    busy = runner.invoke(app, ["data", "synth-fhir", "--patients", "10", "--sites", "1", "--out", str(out)])
    assert busy.exit_code == 2 and "exists and is not an empty folder" in busy.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    monkeypatch.setitem(sys.modules, "carebundle", None)  # as if the extra were not installed
    missing = runner.invoke(
        app, ["data", "synth-fhir", "--patients", "10", "--sites", "1", "--out", str(tmp_path / "n")]
    )
    assert missing.exit_code == 2, missing.output
    assert "need the 'carebundle' package: pip install 'fedcare[synth]'" in missing.output
    assert not (tmp_path / "n").exists()
