"""Reports rebuilt from the store equal what the run itself wrote."""

from dataclasses import replace

import numpy as np
import pytest

from fedcare.data.federated import concat
from fedcare.demos import get_demo
from fedcare.errors import StoreError
from fedcare.evaluation.uncertainty import wilson_interval
from fedcare.experiment import run_experiment
from fedcare.report.from_store import summary_from_store
from fedcare.report.html import render_report
from fedcare.report.output import _clean
from fedcare.runtime.simulation import run_simulation
from fedcare.store import SqlStore
from fedcare.strategies.registry import make_strategy
from fedcare.tasks.logreg import binary_metrics
from fedcare.types import RunId


@pytest.fixture(scope="module")
def heart():
    recipe = get_demo("heart-disease")
    data = recipe.load()
    return recipe, data, recipe.make_task(data)


def test_demo_report_from_store_equals_the_demo_summary(heart, tmp_path):
    recipe, data, task = heart
    cfg = replace(recipe.config, rounds=3, baseline_config={**recipe.config.baseline_config, "local_epochs": 2})
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    summary = run_experiment(data, task, cfg, recorder=store, experiment_id="exp-1")
    summary["store"] = store.url.split("@")[-1]
    rebuilt = summary_from_store(store, "exp-1")
    assert _clean(rebuilt) == _clean(summary)
    assert list(rebuilt["settings"]) == ["local", "pooled", "fedavg"]
    assert list(rebuilt["settings"]["fedavg"]["per_site"]) == list(summary["sites"])
    unc = rebuilt["settings"]["fedavg"]["uncertainty"]
    assert unc["per_site"]["cleveland"]["auc"]["method"] == "delong" and 0 < unc["meta"]["auc"]["i2"] + 1e-9 <= 1 + 1e-9
    html = render_report(rebuilt)
    assert "Forest plots" in html and "I²" in html
    one = summary_from_store(store, "exp-1-fedavg")  # one run of the experiment
    assert list(one["settings"]) == ["fedavg"] and _clean(one["settings"]) == _clean(
        {"fedavg": summary["settings"]["fedavg"]}
    )
    with pytest.raises(StoreError, match="no run or experiment 'nope'.*exp-1"):
        summary_from_store(store, "nope")
    store.close()


def test_private_demo_report_from_store_has_the_same_privacy_section(heart, tmp_path):
    recipe, data, task = heart
    privacy = {"level": "record", "epsilon": 3.0, "delta": 1e-5, "site_max_epsilon": 5.0, "seeded_noise": True}
    cfg = replace(
        recipe.config, rounds=2, privacy=privacy, baseline_config={**recipe.config.baseline_config, "local_epochs": 1}
    )
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    summary = run_experiment(data, task, cfg, recorder=store, experiment_id="exp-dp", settings=("federated",))
    rebuilt = summary_from_store(store, "exp-dp")
    assert "privacy" in summary and rebuilt["privacy"] == summary["privacy"]
    rebuilt.pop("store")
    assert _clean(rebuilt) == _clean(summary)
    store.close()


def test_deployed_style_run_report_holds_the_final_models_numbers(heart, tmp_path):
    """A run the Coordinator recorded (no experiment): per-site = the last round, pooled accuracy exact."""
    _, data, task = heart
    store = SqlStore(f"sqlite:///{tmp_path / 's.db'}")
    strategy = make_strategy("fedavg", fit_config={"optimizer": "sgd", "lr": 0.05, "batch_size": 4, "local_epochs": 1})
    run_simulation(
        sites=data.sites,
        task=task,
        strategy=strategy,
        rounds=2,
        seed=0,
        run_id=RunId("dep-1"),
        name="heart-study",
        dataset="heart-disease",
        recorder=store,
    )
    summary = summary_from_store(store, "dep-1")
    _, state = store.latest_checkpoint(RunId("dep-1"))
    setting = summary["settings"]["heart-study"]
    for site, d in data.sites.items():
        want = binary_metrics(d.test.y, task.predict(state.model, d.test.x))
        got = setting["per_site"][site]
        assert got["n_test"] == len(d.test)
        for k in ("accuracy", "auc"):
            assert got[k] == pytest.approx(want[k], abs=1e-12), (site, k)
    pooled = concat([d.test for d in data.sites.values()])
    want = binary_metrics(pooled.y, task.predict(state.model, pooled.x))
    assert setting["pooled_test"]["accuracy"] == pytest.approx(want["accuracy"], abs=1e-12)
    assert "auc" not in setting["pooled_test"]  # not a mean over rows: never faked from per-site AUCs
    assert setting["site_mean"]["accuracy"] == pytest.approx(
        np.mean([m["accuracy"] for m in setting["per_site"].values()])
    )
    assert [h["round"] for h in setting["history"]] == [1, 2]
    iv = setting["uncertainty"]["per_site"]["cleveland"]["accuracy"]
    n = len(data.sites["cleveland"].test)
    assert iv == wilson_interval(round(setting["per_site"]["cleveland"]["accuracy"] * n), n).as_dict()
    assert "auc" not in setting["uncertainty"]["per_site"]["cleveland"]  # no variance recorded: no guessed CI
    html = render_report(summary)  # what `fedcare server` writes at the end of a run
    assert "Univ. Hospital" not in html and "switzerland" in html and "<svg" in html
    store.close()
