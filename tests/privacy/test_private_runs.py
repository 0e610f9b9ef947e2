import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedcare.errors import NotEnoughSitesError
from fedcare.privacy.client_dp import ClientLevelDP, noise_rng
from fedcare.privacy.ledger import PrivacyLedger
from fedcare.privacy.plan import ClientDPMode, PrivacyPlan, RecordDP
from fedcare.runtime.policy import SitePolicy
from fedcare.runtime.simulation import run_simulation
from fedcare.store import SqlStore
from fedcare.store.ledger import SqlLedgerBackend
from fedcare.strategies import FedAvg
from fedcare.task import ArrayDataset, SiteData
from fedcare.tasks.logreg import LogisticRegressionTask
from fedcare.types import RunId, SiteId


def _sites(k=3, n=20):
    out = {}
    for i in range(k):
        rng = np.random.default_rng(i)
        x = rng.normal(size=(n, 3)).astype(np.float32)
        y = (x[:, 0] > 0).astype(np.float32)
        out[SiteId(f"s{i}")] = SiteData(train=ArrayDataset(x, y), test=ArrayDataset(x, y))
    return out


PLAN = PrivacyPlan(
    record=RecordDP(epsilon=2.0, delta=1e-5, rounds=2, batch_size=10_000, local_steps=1, seeded_noise=True)
)


def _run(store, min_sites, budgets):
    sites = _sites()
    policies = {s: SitePolicy(max_epsilon=budgets.get(s), allow_seeded_noise=True) for s in sites}
    ledgers = {s: PrivacyLedger(SqlLedgerBackend(store), site=s, study="t") for s in sites}
    run_id = RunId(f"run-min{min_sites}")
    fit_config = {"lr": 0.5, **PLAN.to_config()}
    result = run_simulation(
        sites=sites,
        task=LogisticRegressionTask(n_features=3),
        strategy=FedAvg(fit_config=fit_config),
        rounds=2,
        seed=0,
        run_id=run_id,
        recorder=store,
        min_sites=min_sites,
        policies=policies,
        ledgers=ledgers,
        max_workers=1,
    )
    return result, ledgers, run_id


def test_refusing_site_is_recorded_and_the_run_continues_above_the_minimum(tmp_path):
    store = SqlStore(f"sqlite:///{tmp_path / 'run.db'}")
    # s0's budget is below one round of this plan; the other two have enough
    result, ledgers, run_id = _run(store, min_sites=2, budgets={SiteId("s0"): 0.5, SiteId("s1"): 2.0})
    assert len(result.rounds) == 2
    for report in result.rounds:
        assert set(report.site_fit) == {"s1", "s2"}
        assert report.failures["s0"].startswith("refused: this round would bring site s0")
    events = store.site_events(run_id)
    assert {(e.site, e.kind) for e in events} == {("s0", "refusal")}
    assert store.get_run(run_id).status == "completed"
    assert ledgers[SiteId("s0")].entries() == []
    assert ledgers[SiteId("s1")].spent() == pytest.approx(2.0, rel=0.01)
    assert len(ledgers[SiteId("s2")].entries()) == 2  # no budget, but its spending is still recorded


def test_run_stops_cleanly_when_refusals_leave_too_few_sites(tmp_path):
    store = SqlStore(f"sqlite:///{tmp_path / 'run.db'}")
    with pytest.raises(NotEnoughSitesError, match=r"round 1: 2 valid update\(s\), at least 3 required \(s0: refused"):
        _run(store, min_sites=3, budgets={SiteId("s0"): 0.5})
    run = store.get_run(RunId("run-min3"))
    assert run.status == "failed" and "refused" in run.message
    assert store.rounds(RunId("run-min3")) == []


def test_central_client_dp_wrapper_noises_the_mean_with_z_c_over_n():
    # Prepare: three sites whose updates all clip to the same point; the spread of the global model is noise only
    sites = _sites()
    task = LogisticRegressionTask(n_features=3)
    z, clip = 2.0, 0.1
    draws = []
    for seed in range(12):
        strategy = ClientLevelDP(
            FedAvg(fit_config={"lr": 1.0, "batch_size": 20}),
            noise_multiplier=z,
            clip_norm=clip,
            delta=1e-5,
            mode=ClientDPMode.CENTRAL,
            rng=noise_rng(seed),
        )
        r = run_simulation(
            sites=sites, task=task, strategy=strategy, rounds=1, seed=0, run_id=RunId("c"), max_workers=1
        )
        draws.append(np.concatenate([r.state.model["weight"].ravel(), r.state.model["bias"]]))
    spread = np.std(np.stack(draws), axis=0, ddof=1).mean()
    assert spread == pytest.approx(z * clip / 3, rel=0.35)
    assert r.rounds[0].fit_metrics["dp.noise_std_of_mean"] == pytest.approx(z * clip / 3)


def test_demo_cli_records_privacy_per_site_and_fails_in_one_line_when_sites_refuse(tmp_path, monkeypatch):
    from dataclasses import replace

    from fedcare.cli import demo  # noqa: F401
    from fedcare.cli.app import app
    from fedcare.study import builtin

    # keep the non-private baselines cheap: this test is about the federated setting's privacy
    shipped = builtin.resolve_study

    def fast(name):
        study = shipped(name)
        return replace(study, baseline={**study.baseline, "local_epochs": 1})

    monkeypatch.setattr(builtin, "resolve_study", fast)
    runner = CliRunner()
    out = tmp_path / "dp"
    db = f"sqlite:///{tmp_path / 'store.db'}"
    args = ["demo", "--rounds", "2", "--dp", "record", "--epsilon", "3", "--site-budget", "3", "--out", str(out)]
    ok = runner.invoke(app, [*args, "--db", db])
    assert ok.exit_code == 0, ok.output
    summary = json.loads((out / "summary.json").read_text())
    sites = summary["privacy"]["sites"]
    assert set(sites) == {"cleveland", "hungary", "switzerland", "va-long-beach"}
    for row in sites.values():
        assert 2.97 <= row["epsilon_run"] <= 3.0 and row["rounds_charged"] == 2 and row["mechanisms"] == ["dpsgd"]
    assert "Privacy spent per site" in (out / "report.html").read_text()
    # budgets without DP: every site refuses, the run stops with exit 6 and a one-line error
    bad = runner.invoke(app, ["demo", "--rounds", "1", "--site-budget", "1", "--out", str(tmp_path / "x"), "--db", db])
    assert bad.exit_code == 6
    lines = [line for line in bad.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "no DP guarantee (epsilon = inf)" in errors[0]
