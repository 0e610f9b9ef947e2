"""Compressed updates reached from the command line: run file key, store, report."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcare.cli import study  # noqa: F401  (registers the simulate command)
from fedcare.cli.app import app
from fedcare.store import SqlStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "heart-study"
SITES = ("cleveland", "hungary", "switzerland", "va-long-beach")

RUN = """
rounds = 2
[data]
target = "num"
positive = [1, 2, 3, 4]
exclude = ["slope", "ca", "thal"]
categorical = ["cp", "restecg"]
missing = ["?", ""]
[federated]
fit = {{ optimizer = "sgd", lr = 0.05, batch_size = 8, local_epochs = 1 }}
compression = {compression}
[baseline]
local_epochs = 1
[sites]
""" + "".join(f'{s} = "{s}.csv"\n' for s in SITES)


def _run(root: Path, compression: str):
    for name in SITES:
        shutil.copy(EXAMPLE / f"{name}.csv", root / f"{name}.csv")
    (root / "run.toml").write_text(RUN.format(compression=compression))
    db = f"sqlite:///{root / 'store.db'}"
    args = ["simulate", "--config", str(root / "run.toml"), "--out", str(root / "out"), "--db", db]
    return CliRunner().invoke(app, args), db


@pytest.mark.slow
def test_simulate_with_q8_records_and_reports_bytes_per_round(tmp_path):
    result, db = _run(tmp_path, '"q8"')
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["config"]["fit_config"]["compression"] == "q8"
    store = SqlStore(db)
    run = next(r for r in store.list_runs() if r.name == "fedavg")
    rounds = store.rounds(run.id)
    store.close()
    assert len(rounds) == 2
    for r in rounds:  # 4 sites x (13 weights + 1 bias) as 1 byte each, plus lo and step per site
        assert r.fit_metrics["bytes_up"] == 4 * (14 + 8)
        assert r.fit_metrics["bytes_down"] == 4 * 14 * 4
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Traffic per round" in report and "update compression: q8" in report


def test_bad_compression_value_is_one_line_before_anything_runs(tmp_path):
    result, _ = _run(tmp_path, '{ codec = "topk", fraction = 2.0 }')
    assert result.exit_code == 2, result.output
    assert "federated.compression: compression_fraction must be in (0, 1], got 2.0" in result.stderr
    assert not (tmp_path / "out").exists()
