import numpy as np
import pytest
import torch
from tests.conftest import shift_sites

from fedcare.errors import ConfigError
from fedcare.runtime.simulation import run_simulation
from fedcare.strategies import Cyclic, FedProx, make_strategy
from fedcare.strategies.cyclic import cyclic_order
from fedcare.tasks.torch_common import LocalCorrections
from fedcare.types import RunId, SiteId

SITES = [SiteId(s) for s in ("d", "b", "a", "c")]


def test_deterministic_cycle_visits_sorted_sites_in_turn():
    strategy = Cyclic(deterministic_cycle=True)
    picked = [strategy.site_for_round(r, SITES) for r in range(1, 9)]
    assert picked == ["a", "b", "c", "d", "a", "b", "c", "d"]


def test_random_cycles_are_seeded_permutations_that_change_per_cycle():
    strategy = Cyclic(seed=7)
    picked = [strategy.site_for_round(r, SITES) for r in range(1, 13)]
    cycles = [picked[i : i + 4] for i in range(0, 12, 4)]
    for cycle in cycles:
        assert sorted(cycle) == ["a", "b", "c", "d"]  # each cycle visits every site once
    expected = [["abcd"[i] for i in np.random.default_rng([7, k]).permutation(4)] for k in range(3)]
    assert cycles == expected
    assert len({tuple(c) for c in cycles}) > 1
    assert picked == [Cyclic(seed=7).site_for_round(r, SITES) for r in range(1, 13)]  # reproducible
    assert cyclic_order(4, 0, seed=8, deterministic_cycle=False) != cyclic_order(
        4, 0, seed=7, deterministic_cycle=False
    )


def test_coordinator_instructs_only_the_site_whose_turn_it_is(shift_task):
    # site k adds 1e-3 * (k + 1) to every weight: the final model tells who trained
    result = run_simulation(
        sites=shift_sites(3),
        task=shift_task,
        strategy=Cyclic(deterministic_cycle=True),
        rounds=4,
        seed=0,
        run_id=RunId("cyc"),
    )
    assert [r.sampled for r in result.rounds] == [("site-00",), ("site-01",), ("site-02",), ("site-00",)]
    assert [tuple(r.site_fit) for r in result.rounds] == [r.sampled for r in result.rounds]
    expected = np.linspace(-1, 1, 8, dtype=np.float32)
    for k in (0, 1, 2, 0):
        expected = expected + np.float32(1e-3 * (k + 1))
    np.testing.assert_allclose(result.state.model["w"], expected, rtol=1e-6)


def test_fedprox_sends_mu_and_rejects_contradictions():
    strategy = make_strategy("fedprox", mu=0.1, fit_config={"lr": 0.01})
    assert isinstance(strategy, FedProx)
    assert strategy.fit_config == {"lr": 0.01, "proximal_mu": 0.1}
    with pytest.raises(ConfigError, match="FedProx mu must be a positive number, got 0"):
        FedProx(mu=0)
    with pytest.raises(ConfigError, match="contradicts FedProx mu=0.1"):
        FedProx(mu=0.1, fit_config={"proximal_mu": 0.5})


def test_proximal_term_adds_mu_times_distance_to_the_gradient():
    module = torch.nn.Linear(3, 1)
    anchor = [p.detach().clone() for p in module.parameters()]
    corr = LocalCorrections(module, {"proximal_mu": 0.5})
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    corr.penalty().backward()
    for p, a in zip(module.parameters(), anchor, strict=True):
        torch.testing.assert_close(p.grad, 0.5 * (p.detach() - a))  # d/dw mu/2 ||w - a||^2
    assert LocalCorrections(module, {}).penalty() == 0.0
    with pytest.raises(ConfigError, match="proximal_mu' must be non-negative"):
        LocalCorrections(module, {"proximal_mu": -1.0})


def test_coordinator_refuses_a_strategy_that_instructs_an_unsampled_site(shift_task):
    class Rogue(Cyclic):
        def configure_fit(self, state, rnd, sites, rng):
            return {SiteId("site-99"): next(iter(super().configure_fit(state, rnd, sites, rng).values()))}

    with pytest.raises(ConfigError, match=r"strategy 'cyclic' instructed unsampled sites \['site-99'\]"):
        run_simulation(sites=shift_sites(2), task=shift_task, strategy=Rogue(), rounds=1, seed=0, run_id=RunId("x"))
