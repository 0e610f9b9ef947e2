"""``fedcare data check`` and ``fedcare stats`` from the command line."""

from __future__ import annotations

import json

from datahelpers import HEART_SCHEMA, SYNTHEA, tree_hashes, write_heart_csvs
from typer.testing import CliRunner

from fedcare.cli import data as _data  # noqa: F401  (registers the commands)
from fedcare.cli.app import app

runner = CliRunner()


def test_check_passes_on_the_synthea_bundles(write_config):
    cfg = write_config(
        f'[site]\nid = "synthea"\n[source]\nkind = "fhir"\npath = "{SYNTHEA}"\n'
        '[fhir]\nreference_date = "2021-06-01"\n[fhir.observations]\nbmi = "39156-5"\n'
        '[schema]\ntarget = "sex"\n[schema.columns.age]\nmin = 0\nmax = 120\n'
        "[schema.columns.bmi]\nmin = 10\nmax = 80\n"
        '[schema.columns.sex]\ntype = "category"\ncodes = ["female", "male"]\n'
    )
    result = runner.invoke(app, ["data", "check", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "10 file(s) read · 10 row(s)" in result.output and "ok: the data fits the study schema" in result.output


def test_check_lists_every_problem_and_exits_non_zero_without_touching_the_file(tmp_path, write_config):
    csv = tmp_path / "heart.csv"
    csv.write_text(
        "age,sex,cp,trestbps,chol,fbs,thalach,oldpeak,num\n63,1,1,145,233,1,150,2.3,0\nold,1,9,145,233,1,150,2.3,\n"
    )
    before = tree_hashes(csv)
    cfg = write_config(f'[site]\nid = "a"\n[source]\nkind = "csv"\npath = "heart.csv"\n{HEART_SCHEMA}')
    result = runner.invoke(app, ["data", "check", "--config", str(cfg)])
    assert result.exit_code == 3
    assert result.stderr.splitlines() == [
        "  heart.csv: column 'age': 1 non-numeric value(s) (row 2: 'old')",
        "  heart.csv: column 'cp': 1 unknown code(s), allowed [1, 2, 3, 4] (row 2: '9')",
        "  heart.csv: column 'num': 1 missing value(s), not allowed here (row 2)",
        "3 problem(s) found; nothing was changed",
    ]
    assert tree_hashes(csv) == before


def test_check_bad_config_is_one_line_exit_2(write_config):
    cfg = write_config('[site]\nid = "a"\n[source]\nkind = "csv"\n')
    result = runner.invoke(app, ["data", "check", "--config", str(cfg)])
    assert result.exit_code == 2 and "data.kind = 'csv' needs data.path" in result.output


def test_stats_by_site_column_and_per_site_configs_agree(tmp_path):
    paths = write_heart_csvs(tmp_path)
    pooled = tmp_path / "pooled.toml"
    pooled.write_text(f'[site]\nid = "pooled"\n[source]\nkind = "csv"\npath = "pooled.csv"\n{HEART_SCHEMA}')
    configs = []
    for site in ("cleveland", "hungary", "switzerland", "va-long-beach"):
        toml = tmp_path / f"{site}.toml"
        toml.write_text(f'[site]\nid = "{site}"\n[source]\nkind = "csv"\npath = "{site}.csv"\n{HEART_SCHEMA}')
        configs += ["--config", str(toml)]
    before = tree_hashes(paths["pooled"])
    a = runner.invoke(app, ["stats", "--config", str(pooled), "--by", "hospital", "--json", str(tmp_path / "a.json")])
    b = runner.invoke(app, ["stats", *configs, "--json", str(tmp_path / "b.json")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    doc_a, doc_b = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    assert doc_a == doc_b
    assert doc_a["combined"]["n"] == 920 and set(doc_a["sites"]) == {
        "cleveland",
        "hungary",
        "switzerland",
        "va-long-beach",
    }
    assert doc_a["min_count"] == 5
    # a held-back cell is null in the JSON and shown as <5* in the table
    held = [
        c for s in doc_a["sites"].values() for col in s["columns"].values() for c in col["cells"].values() if c is None
    ]
    assert held and "<5*" in a.output and "combined" in a.output
    assert tree_hashes(paths["pooled"]) == before


def test_stats_refuses_a_missing_by_column(tmp_path):
    write_heart_csvs(tmp_path)
    pooled = tmp_path / "pooled.toml"
    pooled.write_text(f'[site]\nid = "p"\n[source]\nkind = "csv"\npath = "pooled.csv"\n{HEART_SCHEMA}')
    result = runner.invoke(app, ["stats", "--config", str(pooled), "--by", "ward"])
    assert result.exit_code == 3 and "--by column 'ward' is not in the data" in result.output


def test_stats_names_a_site_whose_own_rules_differ(tmp_path):
    write_heart_csvs(tmp_path)
    configs = []
    for site, k in (("cleveland", 5), ("hungary", 10)):
        toml = tmp_path / f"{site}.toml"
        toml.write_text(
            f'[site]\nid = "{site}"\n[source]\nkind = "csv"\npath = "{site}.csv"\n'
            f"{HEART_SCHEMA}[stats]\nmin_count = {k}\n"
        )
        configs += ["--config", str(toml)]
    result = runner.invoke(app, ["stats", *configs, "--json", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    assert "site hungary: refused: statistics spec" in result.stderr
    doc = json.loads((tmp_path / "s.json").read_text())
    assert set(doc["sites"]) == {"cleveland"} and doc["combined"]["n"] == 303
