import json

import pytest
from typer.testing import CliRunner

from fedcare.cli import strategies  # noqa: F401  (registers the command group)
from fedcare.cli.app import app
from fedcare.cli.strategies import parse_assignments
from fedcare.errors import ConfigError


def test_list_shows_every_strategy_with_its_parameters():
    result = CliRunner().invoke(app, ["strategies", "list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold", "cyclic", "median", "krum"):
        assert name in result.output
    assert "server_lr=0.01" in result.output


def test_run_trains_the_named_strategy_with_its_params(tmp_path):
    out = tmp_path / "run"
    args = ["strategies", "run", "fedadam", "-p", "server_lr=0.05", "-p", "tau=0.001", "-f", "lr=0.05"]
    args += ["--rounds", "2", "--out", str(out), "--db", f"sqlite:///{tmp_path / 's.db'}"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["strategy"] == "fedadam"
    assert summary["config"]["strategy_params"] == {"server_lr": 0.05, "tau": 0.001}
    assert summary["config"]["fit_config"]["lr"] == 0.05
    assert 0.5 < summary["settings"]["fedadam"]["site_mean"]["accuracy"] <= 1.0


def test_run_reports_an_unknown_parameter_in_one_line(tmp_path):
    args = ["strategies", "run", "krum", "-p", "g=1", "--rounds", "1", "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "strategy 'krum'" in result.output and "'g'" in result.output
    assert not (tmp_path / "x").exists()


def test_parse_assignments_types_values_and_rejects_garbage():
    assert parse_assignments(["a=1", "b=0.5", "c=true", "d=sgd"], "--fit") == {"a": 1, "b": 0.5, "c": True, "d": "sgd"}
    with pytest.raises(ConfigError, match="--param 'oops' must look like key=value"):
        parse_assignments(["oops"], "--param")
