"""Big and wide input: CSV checked in chunks reports exactly what a whole-table check does,
high-cardinality categoricals are warned about, and a configuration error needs neither
torch nor pandas (so it appears before the training stack is imported)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedcare.data.byo import CsvSource, TableSpec, load_table
from fedcare.data.check import check_frame
from fedcare.data.schema import CheckReport, StudySchema
from fedcare.data.table import read_csv_checked
from fedcare.types import SiteId

ROOT = Path(__file__).resolve().parents[2]
HEART = ROOT / "examples" / "heart-study"
HEART_STUDY = HEART / "study.toml"

SCHEMA = StudySchema.from_mapping(
    {
        "target": "y",
        "columns": {
            "age": {"type": "number", "min": 0, "max": 120},
            "n": {"type": "integer"},
            "sex": {"type": "category", "codes": ["female", "male"]},
            "cp": {"type": "category", "codes": [1, 2, 3]},
            "smoker": {"type": "boolean"},
            "y": {"type": "boolean"},
        },
    }
)


def _table(path: Path, rows: int = 1000, *, problems: bool = True) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "hospital": rng.choice(["north", "south"], rows),
            "age": rng.uniform(20, 90, rows).round(1).astype(str),
            "n": rng.integers(0, 9, rows).astype(str),
            "sex": rng.choice(["female", "male"], rows),
            "cp": rng.integers(1, 4, rows).astype(str),
            "smoker": rng.choice(["yes", "no", ""], rows),
            "y": rng.choice(["0", "1"], rows),
        }
    )
    if not problems:
        frame.to_csv(path, index=False)
        return
    # problems spread over many chunks, each kind in more than one chunk
    frame.loc[[3, 420, 977], "age"] = ["forty", "200", "1e308"]
    frame.loc[[5, 610], "n"] = ["2.5", "x"]
    frame.loc[[7, 333, 999], "sex"] = ["other", "F", "other"]
    frame.loc[[8, 700], "cp"] = ["9", "one"]
    frame.loc[[11, 512], "smoker"] = ["maybe", "2"]
    frame.loc[[13, 14, 15, 16, 850], "y"] = ""
    frame.to_csv(path, index=False)


def test_a_csv_checked_in_chunks_reports_and_returns_what_a_whole_table_check_does(tmp_path):
    path = tmp_path / "site.csv"
    _table(path)
    whole = CheckReport()
    text = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    expected = check_frame(text, SCHEMA, source="site.csv", report=whole)

    chunked = CheckReport()
    checked = read_csv_checked(path, SCHEMA, chunked, chunk_cells=7 * 37)  # 37 rows a chunk: 28 chunks
    assert checked is not None
    frame, extra = checked
    assert [str(p) for p in chunked.problems] == [str(p) for p in whole.problems]
    assert len(chunked.problems) == 10  # one line per column and kind, counted over the whole file
    assert "site.csv: column 'age': 1 non-numeric value(s) (row 4: 'forty')" in [str(p) for p in chunked.problems]
    assert any(
        "column 'y': 5 missing value(s), not allowed here (row 14, row 15, row 16 and 2 more)" in str(p)
        for p in chunked.problems
    )
    pd.testing.assert_frame_equal(frame, expected)
    assert list(extra.columns) == ["hospital"] and len(extra) == len(frame)
    assert extra["hospital"].tolist() == text["hospital"].tolist()
    assert chunked.sources == {"site.csv": 1000}


def test_a_header_only_csv_has_no_rows_and_a_broken_one_is_named(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("age,n,sex,cp,smoker,y\n")
    report = CheckReport()
    frame, _ = read_csv_checked(empty, SCHEMA, report)
    assert len(frame) == 0 and [str(p) for p in report.problems] == ["empty.csv: has no rows"]
    short = tmp_path / "short.csv"
    short.write_text("age,n,sex,cp,smoker,y\n40,1,male,1,no,1\n41,1\n")
    report = CheckReport()
    assert read_csv_checked(short, SCHEMA, report) is None
    assert str(report.problems[0]) == "short.csv: cannot be read as CSV: line 3: 2 fields, the header has 6"


def test_data_check_by_a_column_the_schema_does_not_declare_still_splits(tmp_path):
    """`fedcare stats --by hospital`: a CSV's undeclared columns stay available, row-aligned."""
    from fedcare.cli.data import _sites

    path = tmp_path / "site.csv"
    _table(path, rows=60, problems=False)
    frame = pd.read_csv(path, dtype=str)
    site = tmp_path / "site.toml"
    site.write_text(
        '[site]\nid = "pooled"\n[data]\nkind = "csv"\npath = "site.csv"\n'
        "[schema]\ntarget = 'y'\n[schema.columns]\nage = {}\ny = { type = 'boolean' }\n"
    )
    sites = _sites([site], "hospital", None)
    assert set(sites) == {"north", "south"}
    assert sum(len(s.frame) for s in sites.values()) == len(frame)
    north = frame[frame["hospital"] == "north"]["age"].astype(float).to_numpy()
    np.testing.assert_allclose(sites[SiteId("north")].frame["age"].to_numpy(), north)


def test_a_high_cardinality_categorical_is_warned_about_with_its_count(tmp_path, caplog):
    rng = np.random.default_rng(1)
    rows = 400
    path = tmp_path / "a.csv"
    pd.DataFrame(
        {
            "zip": [f"{z:05d}" for z in rng.integers(10000, 99999, rows)],
            "age": rng.uniform(20, 90, rows).round(1),
            "y": np.tile([0, 1], rows // 2),
        }
    ).to_csv(path, index=False)
    spec = TableSpec(
        name="t",
        sources=(CsvSource(path=path, label="a.csv", site=SiteId("a")),),
        target="y",
        positive=(1,),
        categorical=("zip",),
    )
    with caplog.at_level(logging.WARNING, logger="fedcare.data.byo"):
        load_table(spec)
    (warning,) = [r.getMessage() for r in caplog.records if "categories" in r.getMessage()]
    assert "column 'zip' has 300 categories -> 299 one-hot features" in warning
    assert "cap it" in warning

    with caplog.at_level(logging.WARNING, logger="fedcare.data.schema"):
        StudySchema.from_mapping(
            {"target": "y", "columns": {"icd": {"type": "category", "codes": list(range(80))}, "y": {}}}
        )
    assert any("column 'icd' has 80 categories -> 79 one-hot features" in r.getMessage() for r in caplog.records)


HEAVY = ("torch", "opacus", "sklearn", "pandas", "grpc", "pyarrow")


def _imported_heavy(code: str, cwd: Path) -> tuple[list[str], str]:
    probe = f"import sys\n{code}\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    lines = done.stdout.strip().splitlines()
    return eval(lines[-1]) if lines else ["<no output>"], done.stderr  # noqa: S307  (our own print of a list)


def test_reading_study_and_site_files_does_not_import_the_training_stack(tmp_path):
    code = (
        "from fedcare.study.builtin import resolve_study\n"
        "from fedcare.study.site import load_site\n"
        "from fedcare.deploy.config import load_server_config\n"
        f"resolve_study({str(HEART_STUDY)!r}); load_site({str(HEART / 'sites' / 'cleveland.toml')!r})"
    )
    heavy, err = _imported_heavy(code, tmp_path)
    assert heavy == [], err


def test_a_bad_study_is_reported_by_the_cli_before_any_heavy_import(tmp_path):
    bad = tmp_path / "study.toml"
    bad.write_text(HEART_STUDY.read_text().replace("rounds = 20", "rounds = 0"))
    code = (
        "from fedcare.cli.app import main\n"
        f"sys.argv = ['fedcare', 'simulate', '--study', {str(bad)!r}, '--site', "
        f"{str(HEART / 'sites' / 'cleveland.toml')!r}, '--out', {str(tmp_path / 'out')!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)"
    )
    heavy, err = _imported_heavy(code, tmp_path)
    assert "federation.rounds must be an integer >= 1, got 0" in err
    assert heavy == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", ["fedcare.data", "fedcare.data.schema", "fedcare.data.config", "fedcare.study.spec"])
def test_config_modules_import_without_pandas(module, tmp_path):
    heavy, err = _imported_heavy(f"import {module}", tmp_path)
    assert heavy == [], err
