"""Export to an MLflow file store and TensorBoard event files, read back with each library's own reader."""

from __future__ import annotations

import importlib.util

import pytest
from tests.dashboard.helpers import ROUNDS, RUN, SITES, build_store
from typer.testing import CliRunner

import fedcare.cli.dashboard as cli_dashboard
from fedcare.cli.app import app

LIVE_SITES = [s for s in SITES if s != "site-02"]  # site-02 refuses: it has no metrics


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    url, _ = build_store(root)
    (root / RUN).mkdir()
    (root / RUN / "model_card.md").write_text("# Model card\n\nshift model, 3 sites\n", encoding="utf-8")
    return root, url


def test_mlflow_file_store_holds_every_round_per_site_params_and_artifacts(exported, monkeypatch):
    root, url = exported
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file:{root / 'mlruns'}"
    r = CliRunner().invoke(app, ["export", RUN, "--db", url, "--to", "mlflow", "--tracking-uri", uri])
    assert r.exit_code == 0, r.output
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("fedcare/cardio-study")
    (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`fedcare.run_id` = '{RUN}'")
    assert run.info.status == "FINISHED"
    assert run.data.params["strategy"] == "fedavg" and run.data.params["config.fit_config.lr"] == "0.1"
    mlflow_id = run.info.run_id
    assert [m.step for m in client.get_metric_history(mlflow_id, "eval/loss")] == list(range(1, ROUNDS + 1))
    for site in LIVE_SITES:
        history = client.get_metric_history(mlflow_id, f"site/{site}/eval/loss")
        assert [m.step for m in history] == list(range(1, ROUNDS + 1))
        assert client.get_metric_history(mlflow_id, f"privacy/{site}/epsilon")[0].value > 0
    assert [m.value for m in client.get_metric_history(mlflow_id, "round/n_succeeded")] == [2.0] * ROUNDS
    assert {a.path for a in client.list_artifacts(mlflow_id)} == {"model_card.md"}


def test_tensorboard_event_file_holds_every_round_per_site(exported):
    root, url = exported
    logdir = root / "tb"
    r = CliRunner().invoke(app, ["export", RUN, "--db", url, "--to", "tensorboard", "--logdir", str(logdir)])
    assert r.exit_code == 0, r.output
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir / RUN))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"eval/loss", "fit/train_loss", "round/duration_s"} <= tags
    for site in LIVE_SITES:
        assert [e.step for e in acc.Scalars(f"site/{site}/eval/loss")] == list(range(1, ROUNDS + 1))
        assert [e.step for e in acc.Scalars(f"site/{site}/traffic/bytes_to_site")] == list(range(1, ROUNDS + 1))
    assert "fedcare/parameters/text_summary" in acc.Tags()["tensors"]
    assert (logdir / RUN / "artifacts" / "model_card.md").is_file()


def test_unknown_run_and_bad_target_are_one_line_errors(exported):
    root, url = exported
    r = CliRunner().invoke(app, ["export", "nope", "--db", url, "--to", "tensorboard", "--logdir", str(root / "x")])
    assert r.exit_code == 7 and "unknown run 'nope'" in r.output and RUN in r.output
    r = CliRunner().invoke(app, ["export", RUN, "--db", url, "--to", "wandb"])
    assert r.exit_code == 2 and "--to must be mlflow or tensorboard" in r.output
    r = CliRunner().invoke(app, ["export", RUN, "--db", url, "--to", "mlflow"])
    assert r.exit_code == 2 and "needs --tracking-uri" in r.output


@pytest.mark.parametrize("extra", ["mlflow", "tensorboard"])
def test_a_missing_extra_is_a_one_line_error_naming_it(exported, monkeypatch, extra):
    root, url = exported
    real = importlib.util.find_spec
    monkeypatch.setattr(cli_dashboard.importlib.util, "find_spec", lambda n, *a: None if n == extra else real(n, *a))
    args = ["--tracking-uri", f"file:{root / 'm2'}"] if extra == "mlflow" else ["--logdir", str(root / "t2")]
    r = CliRunner().invoke(app, ["export", RUN, "--db", url, "--to", extra, *args])
    assert r.exit_code == 2
    assert r.output.strip() == f"error: {extra} not installed: pip install 'fedcare[{extra}]'"
