import numpy as np
import pytest
from tests.conftest import ShiftTask, shift_sites

from fedcare.errors import ConfigError, NotEnoughSitesError
from fedcare.privacy.client_dp import ClientLevelDP
from fedcare.privacy.ledger import MemoryLedgerBackend, PrivacyLedger
from fedcare.privacy.plan import ClientDPMode
from fedcare.runtime.policy import SitePolicy
from fedcare.runtime.simulation import run_simulation
from fedcare.secure import FixedPointCodec, SecAggPlusWorkflow
from fedcare.strategies import FedAvg
from fedcare.types import RunId


def _dp(mode=ClientDPMode.DISTRIBUTED, secure=True):
    return ClientLevelDP(
        FedAvg(),
        noise_multiplier=1.0,
        clip_norm=0.01,
        delta=1e-5,
        mode=mode,
        secure_aggregation=secure,
        rng=np.random.default_rng(0),
    )


def _run(strategy, workflow, ledgers=None, policies=None, n=5):
    return run_simulation(
        sites=shift_sites(n),
        task=ShiftTask(size=64),
        strategy=strategy,
        rounds=2,
        seed=0,
        run_id=RunId("dp"),
        fit_workflow=workflow,
        ledgers=ledgers,
        policies=policies,
        max_workers=2,
    )


def test_distributed_dp_plan_runs_under_secagg_and_charges_every_site_ledger():
    backend = MemoryLedgerBackend()
    ledgers = {s: PrivacyLedger(backend, site=s) for s in shift_sites(5)}
    policies = {s: SitePolicy(max_epsilon=50.0, require_secure_aggregation=True) for s in shift_sites(5)}
    wf = SecAggPlusWorkflow(codec=FixedPointCodec(clip_range=0.5, bits=20, modulus_bits=64), seed=0)
    result = _run(_dp(), wf, ledgers=ledgers, policies=policies)
    assert all(r.fit_metrics["secagg_survivors"] == 5 for r in result.rounds)
    spent = {s: ledger.spent() for s, ledger in ledgers.items()}
    assert all(0 < e < 50 for e in spent.values()) and len(set(np.round(list(spent.values()), 9))) == 1
    assert all(len(ledger.entries()) == 2 for ledger in ledgers.values())
    # under secure aggregation each site accounts the full noise multiplier of the sum
    assert all(e.cost.noise_multiplier == pytest.approx(1.0) for ledger in ledgers.values() for e in ledger.entries())


def test_a_plan_that_counts_on_secagg_is_refused_as_a_plain_fit():
    with pytest.raises(NotEnoughSitesError, match="counts on secure aggregation"):
        _run(_dp(), None)


def test_central_client_dp_cannot_fold_a_secure_sum():
    wf = SecAggPlusWorkflow(codec=FixedPointCodec(clip_range=0.5), seed=0)
    with pytest.raises(ConfigError, match="central client-level DP"):
        _run(_dp(mode=ClientDPMode.CENTRAL, secure=False), wf)


def test_site_policy_rejects_a_bad_min_peers():
    with pytest.raises(ConfigError, match="min_peers must be an integer >= 1"):
        SitePolicy(min_peers=0)
