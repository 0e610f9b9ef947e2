import math

import pytest

from fedcare.errors import PolicyError
from fedcare.privacy.accounting import Mechanism, PrivacyCost, epsilon_of
from fedcare.privacy.ledger import BudgetExceededError, MemoryLedgerBackend, PrivacyLedger
from fedcare.store import SqlStore
from fedcare.store.ledger import sql_ledger

COST = PrivacyCost(mechanism=Mechanism.DPSGD, noise_multiplier=2.0, sample_rate=0.1, steps=10)


def test_charges_record_round_run_and_study_epsilon_recomputable_from_parameters():
    ledger = PrivacyLedger(MemoryLedgerBackend(), site="a", study="s")
    for r in (1, 2, 3):
        ledger.charge(run_id="run1", round_no=r, costs=[COST])
    ledger.charge(run_id="run2", round_no=1, costs=[COST])
    entries = ledger.entries()
    assert [e.round_no for e in entries] == [1, 2, 3, 1]
    # anyone can recompute every figure from the stored parameters
    assert math.isclose(entries[0].epsilon_round, epsilon_of([entries[0].cost], delta=1e-5))
    assert math.isclose(entries[2].epsilon_run, epsilon_of([COST] * 3, delta=1e-5))
    assert math.isclose(entries[3].epsilon_run, epsilon_of([COST], delta=1e-5))  # new run
    assert math.isclose(entries[3].epsilon_total, epsilon_of([COST] * 4, delta=1e-5))  # same study
    assert entries[0].accountant_version.startswith("opacus ")
    assert math.isclose(ledger.spent(), entries[3].epsilon_total)
    assert math.isclose(ledger.spent("run1"), entries[2].epsilon_run)


def test_a_charge_past_the_budget_raises_a_refusal_and_writes_nothing():
    ledger = PrivacyLedger(MemoryLedgerBackend(), site="a")
    ledger.charge(run_id="r", round_no=1, costs=[COST])
    cap = ledger.spent() * 1.05  # the next equal charge would pass it
    with pytest.raises(BudgetExceededError, match="^refused: round 2 would bring site a to epsilon=") as info:
        ledger.charge(run_id="r", round_no=2, costs=[COST], max_epsilon=cap)
    assert isinstance(info.value, PolicyError)
    assert len(ledger.entries()) == 1


def test_ledger_survives_a_restart_of_the_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'site.db'}"
    store = SqlStore(url)
    ledger = sql_ledger(store, site="hospital-a", study="study-1", delta=1e-5)
    ledger.charge(run_id="r1", round_no=1, costs=[COST], details={"clip": 1.0})
    ledger.charge(run_id="r1", round_no=2, costs=[COST])
    spent = ledger.spent()
    store.close()
    # a new process: a new SqlStore on the same file
    store2 = SqlStore(url)
    again = sql_ledger(store2, site="hospital-a", study="study-1", delta=1e-5)
    entries = again.entries()
    assert [e.round_no for e in entries] == [1, 2]
    assert entries[0].details == {"clip": 1.0}
    assert entries[0].cost == COST
    assert math.isclose(again.spent(), spent)
    # other sites and studies are separate accounts
    assert sql_ledger(store2, site="hospital-b", study="study-1").spent() == 0.0
    assert sql_ledger(store2, site="hospital-a", study="other").spent() == 0.0
    store2.close()
