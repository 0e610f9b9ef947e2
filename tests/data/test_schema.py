"""Tabular connector (CSV, Parquet) and the schema check: every problem at once, sources untouched."""

from __future__ import annotations

import pandas as pd
import pytest
from datahelpers import tree_hashes

from fedcare.data.config import load_site_config
from fedcare.data.connect import check_site, federated_tabular, load_site
from fedcare.data.schema import ColumnSpec, ColumnType
from fedcare.errors import ConfigError, DataError

SCHEMA = """
[schema]
target = "disease"
[schema.columns.age]
type = "number"
min = 0
max = 120
[schema.columns.sex]
type = "category"
codes = ["F", "M"]
[schema.columns.visits]
type = "integer"
min = 0
[schema.columns.smoker]
type = "boolean"
[schema.columns.disease]
type = "category"
codes = [0, 1]
"""

GOOD = "age,sex,visits,smoker,disease,extra\n34,F,2,yes,0,a\n51.5,M,0,no,1,b\n,F,1,,0,c\n70,M,3,true,1,d\n"
BAD = (
    "age,sex,visits,smoker,disease\n"
    "34,F,2,yes,0\n"
    "forty,M,1,no,1\n"  # text in a numeric column
    "150,X,2.5,maybe,1\n"  # out of range, unknown code, non-integer, non-boolean
    "40,F,-1,no,\n"  # below min, missing target
    "22,M,1,no,7\n"  # unknown target code
)


def config(write_config, tmp_path, text: str | None, kind: str = "csv", name: str = "patients.csv") -> object:
    if text is not None:
        (tmp_path / name).write_text(text)
    return load_site_config(write_config(f'[site]\nid = "a"\n[source]\nkind = "{kind}"\npath = "{name}"\n{SCHEMA}'))


def test_clean_csv_is_typed_and_extra_columns_are_dropped(write_config, tmp_path):
    site = load_site(config(write_config, tmp_path, GOOD))
    assert list(site.frame.columns) == ["age", "sex", "visits", "smoker", "disease"]
    assert site.frame["age"].tolist()[:2] == [34.0, 51.5] and pd.isna(site.frame["age"][2])
    assert site.frame["smoker"].tolist()[:2] == [1.0, 0.0]
    assert site.frame["sex"].tolist() == ["F", "M", "F", "M"]
    assert site.target.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_every_problem_is_reported_at_once_with_rows_and_the_csv_is_unchanged(write_config, tmp_path):
    cfg = config(write_config, tmp_path, BAD)
    before = tree_hashes(tmp_path / "patients.csv")
    report = check_site(cfg).report
    text = "\n".join(map(str, report.problems))
    assert "patients.csv: column 'age': 1 non-numeric value(s) (row 2: 'forty')" in text
    assert "column 'age': 1 value(s) outside [0.0, 120.0] (row 3: '150')" in text
    assert "column 'sex': 1 unknown code(s), allowed ['F', 'M'] (row 3: 'X')" in text
    assert "column 'visits': 1 non-integer value(s) (row 3: '2.5')" in text
    assert "column 'visits': 1 value(s) outside [0.0, None] (row 4: '-1')" in text
    assert "column 'smoker': 1 non-boolean value(s) (row 3: 'maybe')" in text
    assert "column 'disease': 1 unknown code(s), allowed [0, 1] (row 5: '7')" in text
    assert "column 'disease': 1 missing value(s), not allowed here (row 4)" in text
    assert len(report.problems) == 8
    assert tree_hashes(tmp_path / "patients.csv") == before
    with pytest.raises(DataError, match=r"site a .*: 8 problem\(s\)"):
        load_site(cfg)


def test_missing_column_and_unreadable_file_are_named(write_config, tmp_path):
    report = check_site(config(write_config, tmp_path, "age,sex,disease\n30,F,0\n")).report
    assert {str(p) for p in report.problems} >= {
        "patients.csv: column 'visits': is missing (columns present: ['age', 'sex', 'disease'])",
    }
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage\x00\xff")
    report = check_site(config(write_config, tmp_path, None, name="nothere.csv")).report
    assert [p.source for p in report.problems] == ["nothere.csv"] and "does not exist" in report.problems[0].message
    cfg = load_site_config(write_config(f'[site]\nid = "a"\n[source]\nkind = "csv"\npath = "bin.csv"\n{SCHEMA}'))
    problems = check_site(cfg).report.problems
    assert problems[0].source == "bin.csv" and "cannot be read as CSV" in problems[0].message


def test_parquet_keeps_types_and_is_checked_the_same_way(write_config, tmp_path):
    frame = pd.DataFrame(
        {"age": [30.0, 200.0], "sex": ["F", "M"], "visits": [1, 2], "smoker": [True, False], "disease": ["0", "1"]}
    )
    frame.to_parquet(tmp_path / "p.parquet")
    before = tree_hashes(tmp_path / "p.parquet")
    site = check_site(config(write_config, tmp_path, None, kind="parquet", name="p.parquet"))
    assert [str(p) for p in site.report.problems] == [
        "p.parquet: column 'age': 1 value(s) outside [0.0, 120.0] (row 2: 200.0)"
    ]
    assert site.frame["smoker"].tolist() == [1.0, 0.0] and site.frame["disease"].tolist() == [0.0, 1.0]
    assert tree_hashes(tmp_path / "p.parquet") == before
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    problems = check_site(config(write_config, tmp_path, None, kind="parquet", name="broken.parquet")).report.problems
    assert problems[0].source == "broken.parquet" and "cannot be read as Parquet" in problems[0].message


def test_two_csv_sites_become_a_federated_dataset(write_config, tmp_path):
    rows = "age,sex,visits,smoker,disease\n" + "".join(
        f"{20 + i},{'FM'[i % 2]},{i % 4},no,{i % 2}\n" for i in range(12)
    )
    sites = {}
    for sid in ("a", "b"):
        (tmp_path / f"{sid}.csv").write_text(rows)
        path = write_config(
            f'[site]\nid = "{sid}"\n[source]\nkind = "csv"\npath = "{sid}.csv"\n{SCHEMA}', f"{sid}.toml"
        )
        sites[sid] = load_site(load_site_config(path))
    fed = federated_tabular(sites, test_fraction=0.25, seed=1)
    assert fed.feature_names == ("age", "visits", "smoker", "sex_M")
    assert len(fed.sites["a"].train) == 9 and len(fed.sites["b"].test) == 3
    assert sites["a"].site_data(test_fraction=0.25, seed=1).train.x.shape == (9, 4)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[site]\nid = "a"\n[source]\nkind = "xls"\npath = "x"\n' + SCHEMA, "kind 'xls' is not one of"),
        (
            '[site]\nid = "a"\n[source]\nkind = "csv"\npath = "x"\n[schema]\ntarget = "y"\n[schema.columns.x]\n',
            "target 'y'",
        ),
        ('[source]\nkind = "csv"\npath = "x"\n' + SCHEMA, r"\[site\] needs id"),
        (
            '[site]\nid = "a"\n[source]\nkind = "csv"\npath = "x"\n' + SCHEMA.replace('"boolean"', '"bool"'),
            "type 'bool'",
        ),
    ],
)
def test_bad_config_is_a_one_line_config_error(write_config, text, match):
    with pytest.raises(ConfigError, match=match):
        load_site_config(write_config(text))


def test_category_needs_codes():
    with pytest.raises(ConfigError, match="needs a non-empty 'codes'"):
        ColumnSpec("sex", ColumnType.CATEGORY)
