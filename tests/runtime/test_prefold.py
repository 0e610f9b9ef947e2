"""The Coordinator alone decides when fit replies may be folded where the sites run."""

import numpy as np
import pytest

from fedcare.compression import Compression
from fedcare.protocols import FitPhase, PartialSum
from fedcare.runtime.coordinator import prefold_request
from fedcare.serde import spec_of
from fedcare.strategies import FedAvg, WeightedMeanFold, make_strategy
from fedcare.strategies.base import ServerState, broadcast
from fedcare.types import FitResult, Payload, RoundInfo, RunId, SiteId

SITES = [SiteId("a"), SiteId("b"), SiteId("c")]
MODEL = {"w": np.linspace(-1, 1, 10, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}


def _phase(strategy, payloads=None) -> FitPhase:
    state = strategy.init(MODEL)
    info = RoundInfo(run_id=RunId("r"), round_no=1, total_rounds=1)
    if payloads is None:
        payloads = strategy.configure_fit(state, info, SITES, np.random.default_rng(0))
    return FitPhase(RunId("r"), 1, state, payloads, strategy.new_fold(state, info), {}, {})


def _ignore(partial: PartialSum) -> None:
    pass


@pytest.mark.parametrize("name", ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"])
def test_a_weighted_linear_mean_is_pre_folded(name):
    request = prefold_request(make_strategy(name), _phase(make_strategy(name)), _ignore)
    assert request is not None
    assert dict(request.spec) == spec_of(MODEL)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum", "scaffold", "fedbuff"])
def test_a_strategy_that_needs_each_update_is_not_pre_folded(name):
    strategy = make_strategy(name)
    assert prefold_request(strategy, _phase(strategy), _ignore) is None


def test_compression_or_extra_records_keep_per_site_replies():
    strategy = FedAvg(fit_config=Compression(codec="q8").fit_config())
    assert prefold_request(strategy, _phase(strategy), _ignore) is None
    plain = FedAvg()
    state = ServerState(model=MODEL)
    extra = {s: Payload(arrays={"model": MODEL, "control": MODEL}) for s in SITES}
    assert prefold_request(plain, _phase(plain, extra), _ignore) is None
    client_dp = {s: Payload(arrays={"model": MODEL}, config={"dp.clip_norm": 1.0}) for s in SITES}
    assert prefold_request(plain, _phase(plain, client_dp), _ignore) is None
    assert prefold_request(plain, _phase(plain, broadcast(state, SITES, {})), _ignore) is not None


def test_a_partial_fold_added_to_the_driver_fold_gives_the_same_mean():
    rng = np.random.default_rng(0)
    updates = [({"w": rng.normal(size=1000).astype(np.float32)}, float(k + 1)) for k in range(9)]
    whole = WeightedMeanFold(updates[0][0])
    for k, (state, n) in enumerate(updates):
        whole.add(SiteId(f"s{k}"), FitResult(state=state, num_examples=int(n), metrics={"loss": n}))
    driver = WeightedMeanFold(updates[0][0])
    for part in (updates[:4], updates[4:]):  # two actors, each folding its sites in order
        actor = WeightedMeanFold(updates[0][0])
        for k, (state, n) in enumerate(part):
            actor.add(SiteId(f"s{k}"), FitResult(state=state, num_examples=int(n), metrics={"loss": n}))
        total, count = actor.total_weight, actor.count
        sums, metric_sums = actor.partial()
        driver.add_sum(sums, total, count=count, metric_sums=metric_sums)
    assert driver.count == whole.count and driver.total_weight == whole.total_weight
    assert driver.metrics() == pytest.approx(whole.metrics(), rel=1e-15)
    np.testing.assert_array_equal(driver.mean()["w"], whole.mean()["w"])


def test_a_client_dp_wrapper_around_fedavg_is_not_pre_folded():
    from fedcare.privacy.client_dp import ClientLevelDP

    strategy = ClientLevelDP(FedAvg(), noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
    assert prefold_request(strategy, _phase(strategy), _ignore) is None  # each update is clipped
    assert strategy.linear_fold is False  # its own flag, not the wrapped FedAvg's
