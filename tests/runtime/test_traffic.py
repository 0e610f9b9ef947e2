"""The coordinator counts the array bytes it sends to and receives from each site, and the store keeps them."""

import numpy as np
from tests.conftest import ShiftTask, shift_sites

from fedcare.runtime.simulation import run_simulation
from fedcare.store import SqlStore
from fedcare.strategies import FedAvg
from fedcare.types import RunId


def test_bytes_per_site_per_round_are_reported_and_stored(tmp_path):
    task, n = ShiftTask(size=16), 3
    store = SqlStore(f"sqlite:///{tmp_path / 'f.db'}")
    result = run_simulation(
        sites=shift_sites(n), task=task, strategy=FedAvg(), rounds=2, seed=0, run_id=RunId("r"), recorder=store
    )
    model_bytes = 16 * np.dtype(np.float32).itemsize
    for report in result.rounds:
        # fit sends the model, evaluate sends it again; only fit replies carry a model back
        assert report.bytes_to_site == dict.fromkeys(report.sampled, 2 * model_bytes)
        assert report.bytes_from_site == dict.fromkeys(report.sampled, model_bytes)
    rows = store.site_metrics("r", phase="traffic")
    store.close()
    assert len(rows) == 2 * n * 2  # rounds x sites x (to, from)
    assert {(r.name, r.value) for r in rows} == {("bytes_to_site", 2 * model_bytes), ("bytes_from_site", model_bytes)}
