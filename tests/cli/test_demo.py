import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from fedcare.cli.app import app
from fedcare.store import SqlStore


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from fedcare.cli import demo  # noqa: F401

    out = tmp_path_factory.mktemp("demo") / "run"
    db = f"sqlite:///{out.parent / 'store.db'}"
    result = CliRunner().invoke(app, ["demo", "--rounds", "3", "--out", str(out), "--db", db])
    return result, out, db


def test_demo_writes_summary_and_report_with_sane_values(demo_run):
    result, out, _ = demo_run
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "heart-disease" and summary["seed"] == 0
    assert set(summary["settings"]) == {"local", "pooled", "fedavg"}
    for name, setting in summary["settings"].items():
        assert set(setting["per_site"]) == {"cleveland", "hungary", "switzerland", "va-long-beach"}
        for site in setting["per_site"].values():
            assert 0.0 <= site["accuracy"] <= 1.0 and site["n_test"] > 0
        assert 0.5 < setting["pooled_test"]["accuracy"] <= 1.0, name
        assert 0.5 < setting["pooled_test"]["auc"] <= 1.0, name
    assert summary["settings"]["pooled"]["pooled_test"]["accuracy"] > 0.75
    assert summary["config"]["rounds"] == 3
    assert len(summary["settings"]["fedavg"]["history"]) == 3
    html = (out / "report.html").read_text()
    assert html.count("<svg") >= 3
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "report must open offline"
    assert "test accuracy" in result.output and "fedavg" in result.output
    # CliRunner's 80 columns, as in a CI log: the interval cells leave the site names readable
    assert "Cleveland Clinic" in result.output and "VA Long Beach" in result.output
    assert "heterogeneity I²" in result.output


def test_demo_run_is_recorded_in_the_store(demo_run):
    _, out, db = demo_run
    store = SqlStore(db)
    runs = {r.name: r for r in store.list_runs()}
    assert {"local", "pooled", "fedavg"} <= set(runs)
    assert runs["fedavg"].status == "completed"
    assert [r.round_no for r in store.rounds(runs["fedavg"].id)] == [1, 2, 3]
    eval_rows = store.site_metrics(runs["fedavg"].id, phase="eval")
    assert {r.site for r in eval_rows} == {"cleveland", "hungary", "switzerland", "va-long-beach"}
    round_no, state = store.latest_checkpoint(runs["fedavg"].id)
    assert round_no == 3 and state.model["weight"].shape == (1, 13)
    store.close()


def test_report_from_the_store_writes_the_demo_summary_again(demo_run, tmp_path):
    import fedcare.cli.report  # noqa: F401

    result, out, db = demo_run
    assert result.exit_code == 0, result.output
    written = json.loads((out / "summary.json").read_text())
    res = CliRunner().invoke(app, ["report", written["experiment"], "--db", db, "--out", str(tmp_path / "again")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "again" / "summary.json").read_text()) == written
    assert (tmp_path / "again" / "report.html").read_text().count("<svg") >= 3
    res = CliRunner().invoke(app, ["report", "missing", "--db", db, "--out", str(tmp_path / "x")])
    assert res.exit_code == 7 and "no run or experiment 'missing'" in res.output
    assert not (tmp_path / "x").exists()


def test_unknown_dataset_is_a_one_line_error_and_writes_nothing(tmp_path):
    out = tmp_path / "x"
    proc = subprocess.run(
        [sys.executable, "-m", "fedcare", "demo", "--dataset", "nope", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown demo dataset 'nope'; available: heart-disease, pneumonia, tcga-brca"
    ]
    assert not out.exists()


def test_help_lists_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output
