import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fedcare.cli import study  # noqa: F401  (registers the simulate command)
from fedcare.cli.app import app
from fedcare.store import SqlStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "heart-study"
SITES = ("cleveland", "hungary", "switzerland", "va-long-beach")

HEAD = """
name = "heart-byo"
rounds = {rounds}
[data]
target = "num"
positive = [1, 2, 3, 4]
exclude = ["slope", "ca", "thal"]
categorical = ["cp", "restecg"]
missing = ["?", ""]
test_fraction = 0.34
split_seed = 43
[federated]
strategy = "{strategy}"
fit = {{ optimizer = "sgd", lr = 0.05, batch_size = 8, local_epochs = 1 }}
[baseline]
optimizer = "adam"
lr = 0.01
batch_size = 8
local_epochs = 1
"""


def _config(
    root: Path, sites: dict[str, str], *, rounds: int = 2, strategy: str = "fedavg", extra: str = "", edit=("", "")
) -> Path:
    for name in SITES:
        if not (root / f"{name}.csv").exists():
            shutil.copy(EXAMPLE / f"{name}.csv", root / f"{name}.csv")
    table = "\n[sites]\n" + "".join(f'{site} = "{path}"\n' for site, path in sites.items())
    path = root / "run.toml"
    path.write_text(HEAD.format(rounds=rounds, strategy=strategy).replace(*edit) + extra + table)
    return path


def _invoke(config: Path, out: Path):
    db = f"sqlite:///{out.parent / 'store.db'}"
    return CliRunner().invoke(app, ["simulate", "--config", str(config), "--out", str(out), "--db", db])


@pytest.fixture(scope="module")
def happy(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo")
    config = _config(root, {s: f"{s}.csv" for s in SITES})
    out = root / "out"
    return _invoke(config, out), out


def test_simulate_runs_the_three_settings_end_to_end(happy):
    result, out = happy
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "heart-byo"
    assert set(summary["settings"]) == {"local", "pooled", "fedavg"}
    for name, setting in summary["settings"].items():
        assert set(setting["per_site"]) == set(SITES), name
        assert 0.5 < setting["pooled_test"]["accuracy"] <= 1.0, name
    assert summary["config"]["rounds"] == 2 and len(summary["settings"]["fedavg"]["history"]) == 2
    resolved = summary["config"]["data"]["resolved"]
    assert resolved["categories"] == {"cp": [1.0, 2.0, 3.0, 4.0], "restecg": [0.0, 1.0, 2.0]}
    assert len(resolved["encoded_features"]) == 13
    assert (out / "report.html").read_text().count("<svg") >= 3
    assert "test accuracy" in result.output


def test_simulate_records_the_runs_in_the_store(happy):
    _, out = happy
    store = SqlStore(f"sqlite:///{out.parent / 'store.db'}")
    runs = {r.name: r for r in store.list_runs()}
    store.close()
    assert {"local", "pooled", "fedavg"} <= set(runs)
    assert runs["fedavg"].status == "completed"


def _fails(config: Path, code: int, message: str) -> None:
    out = config.parent / "out"
    result = _invoke(config, out)
    assert result.exit_code == code, result.output
    assert result.stderr == f"error: {message}\n"
    assert not out.exists()
    assert not (config.parent / "store.db").exists()


def test_missing_file(tmp_path):
    config = _config(tmp_path, {"cleveland": "cleveland.csv", "north": "data/north.csv"})
    _fails(config, 3, f"data file not found: data/north.csv ({tmp_path / 'data' / 'north.csv'})")


def test_missing_column(tmp_path):
    frame = pd.read_csv(EXAMPLE / "hungary.csv", dtype=str).drop(columns=["chol"])
    frame.to_csv(tmp_path / "h.csv", index=False)
    config = _config(tmp_path, {"cleveland": "cleveland.csv", "hungary": "h.csv"})
    _fails(config, 3, "h.csv: missing column 'chol'")


def test_non_numeric_value_names_file_line_and_column(tmp_path):
    frame = pd.read_csv(EXAMPLE / "hungary.csv", dtype=str, keep_default_na=False)
    frame.loc[6, "trestbps"] = "120/80"
    frame.to_csv(tmp_path / "h.csv", index=False)
    config = _config(tmp_path, {"cleveland": "cleveland.csv", "hungary": "h.csv"})
    _fails(config, 3, "h.csv, line 8, column 'trestbps': '120/80' is not a number")


def test_empty_site(tmp_path):
    (tmp_path / "empty.csv").write_text((EXAMPLE / "hungary.csv").read_text().splitlines()[0] + "\n")
    config = _config(tmp_path, {"cleveland": "cleveland.csv", "hungary": "empty.csv"})
    _fails(config, 3, "site 'hungary' (empty.csv) has no data rows")


def test_site_with_one_class_in_training(tmp_path):
    frame = pd.read_csv(EXAMPLE / "hungary.csv", dtype=str, keep_default_na=False)
    frame[frame["num"] == "0"].head(20).to_csv(tmp_path / "h.csv", index=False)
    config = _config(tmp_path, {"cleveland": "cleveland.csv", "hungary": "h.csv"})
    _fails(
        config,
        3,
        "site 'hungary' (h.csv): the training split has one class only (13 negative rows); "
        "every site needs both classes",
    )


def test_unknown_keys(tmp_path):
    config = _config(tmp_path, {"cleveland": "cleveland.csv"}, extra="rouns = 3\n")
    _fails(config, 2, f"{config}: unknown key 'baseline.rouns' (did you mean 'rounds'?)")


def test_unknown_strategy(tmp_path):
    config = _config(tmp_path, {"cleveland": "cleveland.csv"}, strategy="fedavgg")
    result = _invoke(config, tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {config}: unknown strategy 'fedavgg' in federated.strategy; available: ")
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_bad_training_value_is_caught_before_anything_is_written(tmp_path):
    sites = {"cleveland": "cleveland.csv", "hungary": "hungary.csv"}
    config = _config(tmp_path, sites, edit=('optimizer = "adam"', 'optimizer = "adamw"'))
    _fails(config, 2, f"{config}: baseline: config 'optimizer' must be 'sgd' or 'adam', got 'adamw'")
