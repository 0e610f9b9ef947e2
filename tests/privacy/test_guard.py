import numpy as np
import pytest

from fedcare.errors import PolicyError
from fedcare.privacy.ledger import MemoryLedgerBackend, PrivacyLedger
from fedcare.privacy.plan import ClientDP, ClientDPMode, PrivacyPlan, RecordDP
from fedcare.runtime.node import SiteNode
from fedcare.runtime.policy import SitePolicy
from fedcare.task import ArrayDataset, SiteData, task_hash
from fedcare.tasks.logreg import LogisticRegressionTask
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId


def _site(n=24, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    return SiteData(train=ArrayDataset(x, y), test=ArrayDataset(x, y))


def _node(policy=None, ledger=None):
    task = LogisticRegressionTask(n_features=3)
    return SiteNode(site_id=SiteId("a"), task=task, data=_site(), policy=policy, ledger=ledger), task


def _fit(node, task, config, round_no=1):
    model = task.init_model(np.random.default_rng(0))
    msg = Message(
        kind=MessageKind.FIT,
        run_id=RunId("run"),
        round_no=round_no,
        site=SiteId("a"),
        payload=Payload(arrays={"model": model}, config={"task_hash": task_hash(task), "seed": 5, **config}),
    )
    return node.handle(msg)


RECORD = PrivacyPlan(record=RecordDP(epsilon=1.0, delta=1e-5, rounds=3, batch_size=8, seeded_noise=True)).to_config()


def _budgeted(max_epsilon):
    ledger = PrivacyLedger(MemoryLedgerBackend(), site="a", delta=1e-5)
    policy = SitePolicy(max_epsilon=max_epsilon, delta=1e-5, allow_seeded_noise=True)
    return ledger, policy


def test_a_site_with_a_budget_refuses_a_round_without_dp():
    ledger, policy = _budgeted(3.0)
    node, task = _node(policy, ledger)
    reply = _fit(node, task, {"lr": 0.1})
    assert reply.error.startswith("refused: site a has a privacy budget")
    assert "epsilon = inf" in reply.error
    assert ledger.entries() == []


def test_site_charges_before_release_and_refuses_at_its_budget_without_moving_the_ledger():
    # the plan spends 1.0 over 3 rounds; the site's budget is exactly that
    ledger, policy = _budgeted(1.0)
    node, task = _node(policy, ledger)
    for r in (1, 2, 3):
        reply = _fit(node, task, RECORD, round_no=r)
        assert reply.error is None, reply.error
        assert reply.payload.metrics["dp.epsilon_total"] == pytest.approx(ledger.spent())
        assert "train_loss" not in reply.payload.metrics  # not covered by DP: withheld
    assert 0.99 <= ledger.spent() <= 1.0
    before = ledger.entries()
    # Execute: a fourth round would pass the budget
    reply = _fit(node, task, RECORD, round_no=4)
    # Assert
    assert reply.error.startswith("refused: this round would bring site a to epsilon=")
    assert "above its budget max_epsilon=1" in reply.error
    assert not reply.payload.arrays
    assert ledger.entries() == before


def test_fail_closed_on_noise_the_site_does_not_control():
    ledger, _ = _budgeted(5.0)
    strict = SitePolicy(max_epsilon=5.0)  # allow_seeded_noise and trust_central_noise are off
    node, task = _node(strict, ledger)
    assert _fit(node, task, RECORD).error.startswith("refused: site a does not accept DP noise seeded")
    central = PrivacyPlan(
        client=ClientDP(mode=ClientDPMode.CENTRAL, noise_multiplier=5.0, clip_norm=1.0, delta=1e-5)
    ).to_config()
    assert _fit(node, task, central).error.startswith("refused: site a does not trust server-added noise")
    assert ledger.entries() == []


def test_distributed_share_without_secure_aggregation_is_accounted_at_the_sites_own_noise():
    ledger = PrivacyLedger(MemoryLedgerBackend(), site="a")
    node, task = _node(SitePolicy(), ledger)
    plan = ClientDP(mode=ClientDPMode.DISTRIBUTED, noise_multiplier=4.0, clip_norm=0.5, delta=1e-5, min_sites=4)
    reply = _fit(node, task, PrivacyPlan(client=plan).to_config())
    assert reply.error is None, reply.error
    (entry,) = ledger.entries()
    assert entry.cost.noise_multiplier == pytest.approx(2.0)  # z / sqrt(4): the server sees this update alone
    with_secagg = PrivacyPlan(client=ClientDP(**{**plan.__dict__, "secure_aggregation": True})).to_config()
    # a plan that counts on secure aggregation is refused as a plain fit (the update would be seen alone);
    # under SecAgg+ the site accounts the full z: tests/secure/test_privacy_integration.py
    refused = _fit(node, task, with_secagg, round_no=2)
    assert refused.error.startswith("refused: the DP plan counts on secure aggregation")
    assert len(ledger.entries()) == 1


def test_malformed_plan_is_an_error_reply_naming_the_key():
    node, task = _node()
    reply = _fit(node, task, {"dp.record": True, "dp.delta": 1e-5, "dp.rounds": 2})
    assert "missing config key 'dp.epsilon'" in reply.error


def test_policy_rejects_a_bad_budget():
    with pytest.raises(Exception, match="SitePolicy.max_epsilon must be positive"):
        SitePolicy(max_epsilon=-1.0)
    assert isinstance(PolicyError("x"), Exception)
