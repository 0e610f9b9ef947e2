"""Inputs that must be refused (or counted once), each named by file and line, row or patient."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedcare.cli import study  # noqa: F401  (registers the simulate command)
from fedcare.cli.app import app
from fedcare.data.config import load_site_config
from fedcare.data.connect import check_site
from fedcare.data.tabular import split_indices, split_sizes

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "heart-study"
PYDICOM_FILES = Path(__import__("pydicom").__file__).parent / "data" / "test_files"
runner = CliRunner()

HEADER = "age,sex,chol,num"
ROWS = [f"{40 + i % 30},{i % 2},{180 + i},{i % 2}" for i in range(40)]


def _simulate(tmp_path: Path, lines: list[str]) -> str:
    (tmp_path / "a.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.csv").write_text("\n".join([HEADER, *ROWS]) + "\n")
    (tmp_path / "run.toml").write_text(
        'name = "t"\nrounds = 1\n[sites]\na = "a.csv"\nb = "b.csv"\n[data]\ntarget = "num"\npositive = [1]\n'
        '[task]\nname = "logreg"\n[federated]\nstrategy = "fedavg"\n'
    )
    result = runner.invoke(app, ["simulate", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 3, result.output
    assert not (tmp_path / "o").exists()
    return " ".join(result.output.split())


def test_a_row_with_too_few_fields_is_refused_like_one_with_too_many(tmp_path):
    short = _simulate(tmp_path, [HEADER, *ROWS[:5], "52,1,201", *ROWS[5:]])  # line 7 lacks a field
    assert "a.csv: line 7: 3 fields, the header has 4" in short
    long = _simulate(tmp_path, [HEADER, *ROWS[:5], "52,1,201,1,9", *ROWS[5:]])
    assert "a.csv" in long and "line 7" in long


def test_duplicated_header_names_are_refused_not_renamed(tmp_path):
    text = _simulate(tmp_path, ["age,sex,age,num", *ROWS])
    assert "a.csv: the header repeats column name(s) 'age'" in text


def test_a_value_that_would_overflow_the_statistics_is_refused(tmp_path):
    text = _simulate(tmp_path, [HEADER, *ROWS[:3], "1e308,1,200,0", *ROWS[3:]])
    assert "a.csv, line 5, column 'age': '1e308'" in text and "overflow" in text


def test_the_site_connector_refuses_a_short_row_and_a_huge_value(tmp_path):
    (tmp_path / "a.csv").write_text("\n".join([HEADER, *ROWS[:3], "52,1", *ROWS[3:]]) + "\n")
    (tmp_path / "b.csv").write_text("\n".join([HEADER, *ROWS[:3], "1e308,1,200,0", *ROWS[3:]]) + "\n")
    schema = '[schema]\ntarget = "num"\n[schema.columns.age]\n[schema.columns.num]\ntype = "category"\ncodes = [0, 1]\n'
    for name, expected in (("a", "line 5: 2 fields, the header has 4"), ("b", "beyond ±1e+15")):
        (tmp_path / f"{name}.toml").write_text(
            f'[site]\nid = "{name}"\n[source]\nkind = "csv"\npath = "{name}.csv"\n{schema}'
        )
        problems = [str(p) for p in check_site(load_site_config(tmp_path / f"{name}.toml")).report.problems]
        assert any(expected in p and f"{name}.csv" in p for p in problems), problems


def test_the_same_fhir_patient_in_two_bundles_counts_once_and_is_named(tmp_path):
    synthea = Path(__file__).resolve().parents[1] / "fixtures" / "synthea"
    folder = tmp_path / "bundles"
    folder.mkdir()
    first = sorted(synthea.glob("*.json"))[0]
    shutil.copy(first, folder / "export-1.json")
    shutil.copy(first, folder / "export-2.json")  # the same person exported twice
    (tmp_path / "site.toml").write_text(
        '[site]\nid = "s"\n[source]\nkind = "fhir"\npath = "bundles"\n[fhir]\nreference_date = "2021-06-01"\n'
        '[schema]\ntarget = "sex"\n[schema.columns.age]\n[schema.columns.sex]\ntype = "category"\n'
        'codes = ["female", "male"]\n'
    )
    site = check_site(load_site_config(tmp_path / "site.toml"))
    assert len(site.raw) == 1
    pid = json.loads(first.read_text())["entry"][0]["resource"]["id"]
    assert any(
        f"export-2.json: Patient {pid}" in str(p) and "also in bundle export-1.json" in str(p)
        for p in site.report.problems
    ), site.report.problems


def test_a_dicom_label_table_cannot_point_outside_the_image_folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(PYDICOM_FILES / "MR_small.dcm", images / "in.dcm")
    shutil.copy(PYDICOM_FILES / "MR_small.dcm", tmp_path / "secret.dcm")  # a file beside, not inside, the folder
    (tmp_path / "labels.csv").write_text(f"file,label\nin.dcm,1\n../secret.dcm,0\n{tmp_path / 'secret.dcm'},0\n")
    (tmp_path / "site.toml").write_text(
        '[site]\nid = "r"\n[source]\nkind = "dicom"\npath = "images"\nlabels = "labels.csv"\nsize = [16, 16]\n'
        '[schema]\ntarget = "label"\n[schema.columns.label]\ntype = "category"\ncodes = [0, 1]\n'
    )
    site = check_site(load_site_config(tmp_path / "site.toml"))
    outside = [str(p) for p in site.report.problems if "outside the image folder" in str(p)]
    assert len(outside) == 2 and any("../secret.dcm" in p for p in outside)
    assert site.images is not None and len(site.images) == 1


@pytest.mark.parametrize("n", [40, 110])
def test_test_fraction_0_3_splits_sites_of_40_and_110_rows(n):
    n_test, n_train = split_sizes(n, 0.3)
    assert (n_test, n_train) == (round(0.3 * n), n - round(0.3 * n))
    train, test = split_indices(np.arange(n) % 2, test_fraction=0.3, seed=0)
    assert len(test) == n_test and len(train) == n_train and not set(train) & set(test)


def test_splits_that_already_worked_are_unchanged():
    # FLamby's VA Long Beach split (200 rows, test_fraction 0.34) keeps its 69 test rows
    assert split_sizes(200, 0.34) == (69, 131)
    assert split_sizes(303, 0.34) == (104, 199)
