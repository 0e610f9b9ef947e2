"""The one exchange: rounds, SecAgg stages and queries are all recorded the same way in the store."""

import numpy as np
from tests.conftest import ShiftTask, shift_sites

from fedcare.data.moments_query import query_moments
from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.recorder import RunSpec
from fedcare.runtime.simulation import build_nodes
from fedcare.secure import FixedPointCodec, SecAggPlusWorkflow
from fedcare.store.sql import SqlStore
from fedcare.strategies import FedAvg
from fedcare.task import task_hash
from fedcare.transport import InProcessChannel
from fedcare.types import RunId, SiteId


def test_rounds_secagg_stages_and_a_moments_query_are_exchanges_in_the_store(tmp_path):
    task, sites = ShiftTask(), shift_sites(3)
    nodes = build_nodes(sites, task)
    channel = InProcessChannel({s: n.handle for s, n in nodes.items()}, max_workers=2)
    store = SqlStore(f"sqlite:///{tmp_path / 'run.db'}")
    try:
        coordinator = Coordinator(
            channel=channel,
            strategy=FedAvg(),
            task_name=task.name,
            task_hash=task_hash(task),
            rounds=1,
            min_sites=2,
            recorder=store,
            fit_workflow=SecAggPlusWorkflow(codec=FixedPointCodec(clip_range=0.05), seed=0),
        )
        run = RunId("run")
        # federated standardisation first, through the coordinator's own exchange (before the run row exists)
        asked = [*sorted(sites), SiteId("ghost")]
        combined, per_site, failures = query_moments(
            coordinator.exchanger, run_id=run, task_name=task.name, task_hash=task_hash(task), sites=asked
        )
        assert sorted(per_site) == sorted(sites) and failures == {"ghost": "unknown site 'ghost'"}
        np.testing.assert_array_equal(combined.count, [6.0])
        spec = RunSpec(run, "t", "synthetic", "fedavg", task.name, task_hash(task), 0, 1)
        coordinator.run(task.init_model(np.random.default_rng(0)), spec=spec)
        rows = store.exchanges(run)
    finally:
        channel.close()
        store.close()
    assert [(r.kind, r.name) for r in rows] == [
        ("query", "moments"),
        ("secagg", "advertise_keys"),
        ("secagg", "share_keys"),
        ("secagg", "masked_input"),
        ("secagg", "unmask"),
        ("evaluate", ""),
    ]
    assert rows[0].sent == ["ghost", *sorted(sites)] and rows[0].answered == sorted(sites)
    assert rows[0].failures == {"ghost": "unknown site 'ghost'"}
    assert all(r.sent == sorted(sites) and r.answered == sorted(sites) for r in rows[1:])
    assert rows[0].details["task_hash"] == task_hash(task) and rows[0].round_no == 0
    assert all(r.round_no == 1 and r.duration_s >= 0 for r in rows[1:])
