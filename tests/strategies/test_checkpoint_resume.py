"""A FedAdam run's state (moments included) survives SqlStore checkpoints; resuming is exact."""

import numpy as np

from fedcare.datasets.heart_disease import load_heart_disease
from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.recorder import RunSpec
from fedcare.runtime.simulation import build_nodes
from fedcare.store import SqlStore
from fedcare.strategies import make_strategy
from fedcare.task import task_hash
from fedcare.tasks import make_task
from fedcare.transport.inprocess import InProcessChannel
from fedcare.types import RunId

FIT = {"optimizer": "sgd", "lr": 0.05, "batch_size": 16, "local_epochs": 1}


def _coordinator(task, data, rounds, recorder=None):
    nodes = build_nodes(data.sites, task)
    channel = InProcessChannel({s: n.handle for s, n in nodes.items()}, max_workers=2)
    strategy = make_strategy("fedadam", fit_config=FIT, server_lr=0.05, tau=1e-3)
    coord = Coordinator(
        channel=channel,
        strategy=strategy,
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=rounds,
        seed=11,
        evaluate=False,
        recorder=recorder,
    )
    return coord, channel


def test_resumed_fedadam_run_equals_uninterrupted_run(tmp_path):
    data = load_heart_disease()
    task = make_task("logreg", n_features=data.n_features)
    init = task.init_model(np.random.default_rng(11))

    def spec(run_id):
        return RunSpec(
            run_id=RunId(run_id),
            name=run_id,
            dataset="heart",
            strategy="fedadam",
            task=task.name,
            task_hash=task_hash(task),
            seed=11,
            rounds=4,
            config={},
        )

    # uninterrupted: 4 rounds
    coord, channel = _coordinator(task, data, 4)
    full = coord.run(init, spec=spec("full")).state
    channel.close()
    # interrupted after round 2 (the process "dies"), state checkpointed by the store
    store = SqlStore(f"sqlite:///{tmp_path / 'runs.db'}")
    coord, channel = _coordinator(task, data, 2, recorder=store)
    coord.run(init, spec=spec("resumed"))
    channel.close()
    store.close()
    # a new process: reopen the store, load the checkpoint, resume rounds 3..4
    store = SqlStore(f"sqlite:///{tmp_path / 'runs.db'}")
    round_no, state = store.latest_checkpoint(RunId("resumed"))
    assert round_no == 2
    assert set(state.extras) == {"fedopt_m", "fedopt_v"}
    assert np.abs(state.extras["fedopt_m"]["weight"]).max() > 0
    coord, channel = _coordinator(task, data, 4, recorder=store)
    resumed = coord.run(init, spec=spec("resumed"), state=state, start_round=3).state
    channel.close()
    # Assert: same model and same moments as the uninterrupted run
    for k in full.model:
        np.testing.assert_array_equal(resumed.model[k], full.model[k])
    for rec in ("fedopt_m", "fedopt_v"):
        for k in full.extras[rec]:
            np.testing.assert_array_equal(resumed.extras[rec][k], full.extras[rec][k])
    assert [r.round_no for r in store.rounds("resumed")] == [1, 2, 3, 4]
    assert store.get_run("resumed").status == "completed"
    store.close()
