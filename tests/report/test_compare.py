"""`fedcare report RUN --compare REF`: other runs of the store beside the report, per run and per task over seeds."""

from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

import fedcare.cli.report  # noqa: F401  (registers the command)
from fedcare.cli.app import app
from fedcare.demos import get_demo
from fedcare.experiment import run_experiment
from fedcare.store import SqlStore
from fedcare.tasks import make_task


@pytest.fixture(scope="module")
def store_of_three(tmp_path_factory):
    """logreg with seeds 0 and 1, an MLP with seed 0: three experiments of 2 rounds in one store."""
    recipe = get_demo("heart-disease")
    data = recipe.load()
    db = f"sqlite:///{tmp_path_factory.mktemp('store') / 's.db'}"
    store = SqlStore(db)
    pooled = {}
    for exp, task, seed in [
        ("logreg-s0", recipe.make_task(data), 0),
        ("logreg-s1", recipe.make_task(data), 1),
        ("mlp-s0", make_task("mlp", n_features=data.n_features), 0),
    ]:
        cfg = replace(recipe.config, rounds=2, seed=seed)
        summary = run_experiment(data, task, cfg, recorder=store, experiment_id=exp, settings=("federated",))
        pooled[exp] = summary["settings"]["fedavg"]["pooled_test"]
    store.close()
    return db, pooled


def test_report_shows_the_compared_runs_and_their_mean_over_seeds(store_of_three, tmp_path):
    db, pooled = store_of_three
    res = CliRunner().invoke(
        app, ["report", "mlp-s0", "--db", db, "--out", str(tmp_path), "--compare", "logreg-s*", "--compare", "mlp-s0"]
    )
    assert res.exit_code == 0, res.output
    html = (tmp_path / "report.html").read_text()
    assert "Compared with other runs" in html and "mlp-s0 (this report)" in html
    for exp in ("logreg-s0", "logreg-s1"):
        assert f"<td>{exp}</td>" in html and f"<td>{pooled[exp]['accuracy']:.3f}</td>" in html
    acc = [pooled["logreg-s0"]["accuracy"], pooled["logreg-s1"]["accuracy"]]
    assert f"<td>{np.mean(acc):.3f} ± {np.std(acc, ddof=1):.3f}</td>" in html  # logreg over its two seeds
    assert f"<td>{pooled['mlp-s0']['accuracy']:.3f} ± 0.000</td>" in html
    assert "compared runs" in res.output


def test_a_compare_pattern_that_matches_nothing_is_one_line(store_of_three, tmp_path):
    db, _ = store_of_three
    res = CliRunner().invoke(app, ["report", "mlp-s0", "--db", db, "--out", str(tmp_path), "--compare", "cnn-*"])
    assert res.exit_code != 0
    assert "--compare 'cnn-*' matches no experiment or run in the store; recent: mlp-s0, logreg-s1" in res.output
    assert not (tmp_path / "report.html").exists()


def test_fit_config_that_differs_between_the_compared_runs_is_shown(tmp_path):
    """Two seeds of one task with one local epoch, one with two: the rows say which trained longer."""
    recipe = get_demo("heart-disease")
    data = recipe.load()
    db = f"sqlite:///{tmp_path / 's.db'}"
    store = SqlStore(db)
    for exp, epochs, seed in [("a-s0", 1, 0), ("a-s1", 1, 1), ("b-s0", 2, 0)]:
        cfg = replace(
            recipe.config, rounds=1, seed=seed, fit_config={**recipe.config.fit_config, "local_epochs": epochs}
        )
        run_experiment(data, recipe.make_task(data), cfg, recorder=store, experiment_id=exp, settings=("federated",))
    store.close()
    res = CliRunner().invoke(app, ["report", "b-s0", "--db", db, "--out", str(tmp_path / "b"), "--compare", "a-s*"])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "b" / "report.html").read_text()
    assert "<th>fit, where runs differ</th>" in html
    assert html.count("<td>local_epochs 1</td>") == 2 and html.count("<td>local_epochs 2</td>") == 1
    same = CliRunner().invoke(app, ["report", "a-s0", "--db", db, "--out", str(tmp_path / "a"), "--compare", "a-s1"])
    assert same.exit_code == 0, same.output
    assert "where runs differ" not in (tmp_path / "a" / "report.html").read_text()
