"""Stores the dashboard tests read: a finished simulated run with a refusing site and a privacy ledger."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ShiftTask, shift_sites

from fedcare.privacy.accounting import Mechanism, PrivacyCost
from fedcare.runtime.policy import SitePolicy
from fedcare.runtime.simulation import run_simulation
from fedcare.store import SqlStore
from fedcare.store.audit import AuditLog
from fedcare.store.ledger import sql_ledger
from fedcare.strategies import FedAvg
from fedcare.types import RunId, SiteId

RUN = "sim-1"
STUDY = "cardio-study"
SITES = ("site-00", "site-01", "site-02")
REFUSING = "site-02"
ROUNDS = 4
TOKEN = "s3cret-token-for-tests-0123"


def build_store(root: Path) -> tuple[str, Path]:
    """A SQLite store with one finished run (site-02 refuses every instruction) and its audit log."""
    url = f"sqlite:///{root / 'fedcare.db'}"
    store = SqlStore(url)
    # site-02 approved another task: it refuses, and says which hash it saw
    policies = {SiteId(REFUSING): SitePolicy(approved_task_hashes=frozenset({"0" * 64}))}
    run_simulation(
        sites=shift_sites(len(SITES)),
        task=ShiftTask(),
        strategy=FedAvg(),
        rounds=ROUNDS,
        seed=0,
        run_id=RunId(RUN),
        name="shift study",
        dataset="synthetic",
        recorder=store,
        policies=policies,
        config={"study": STUDY, "fit_config": {"lr": 0.1}},
    )
    for i, site in enumerate(SITES[:2]):  # two sites charged DP-SGD rounds through their real ledgers
        ledger = sql_ledger(store, site=site, study=STUDY)
        for round_no in range(1, ROUNDS + 1):
            cost = PrivacyCost(mechanism=Mechanism.DPSGD, noise_multiplier=1.0 + i, sample_rate=0.02, steps=50)
            ledger.charge(run_id=RUN, round_no=round_no, costs=[cost])
    store.close()
    audit_path = root / "audit.jsonl"
    log = AuditLog(audit_path, actor="server")
    log.append("listening", port=1)
    log.append("finished", run_id=RUN, rounds=ROUNDS)
    log.close()
    return url, audit_path


def add_heart_demo_run(url: str, rounds: int = 5) -> str:
    """The heart-disease demo's FedAvg setting (real data, logreg, the demo's fit config) into ``url``."""
    from fedcare.demos import DEMOS
    from fedcare.strategies.registry import make_strategy

    recipe = DEMOS["heart-disease"]
    data = recipe.load()
    store = SqlStore(url)
    run_id = "heart-demo-fedavg"
    run_simulation(
        sites=data.sites,
        task=recipe.make_task(data),
        strategy=make_strategy("fedavg", fit_config=dict(recipe.config.fit_config)),
        rounds=rounds,
        seed=0,
        run_id=RunId(run_id),
        name="fedavg",
        dataset="heart-disease",
        recorder=store,
        experiment="heart-demo",
        config={"fit_config": dict(recipe.config.fit_config)},
    )
    store.close()
    return run_id
