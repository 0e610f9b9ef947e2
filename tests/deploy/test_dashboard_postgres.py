"""The dashboard reads a PostgreSQL store in read-only transactions (a private server on 127.0.0.1)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from tests.conftest import ShiftTask, shift_sites

from fedcare.dashboard.readstore import RunReader
from fedcare.runtime.simulation import run_simulation
from fedcare.store import SqlStore
from fedcare.strategies import FedAvg
from fedcare.types import RunId

pytestmark = [pytest.mark.postgres]


def test_postgres_store_is_listed_and_cannot_be_written(postgres_url: str, tmp_path):
    store = SqlStore(postgres_url, checkpoint_dir=tmp_path)
    run_simulation(
        sites=shift_sites(2), task=ShiftTask(), strategy=FedAvg(), rounds=2, seed=0, run_id=RunId("pg-dash"),
        recorder=store,
    )  # fmt: skip
    store.close()
    reader = RunReader(postgres_url)
    try:
        runs = {r["id"]: r for r in reader.runs()}
        assert runs["pg-dash"]["rounds_done"] == 2 and runs["pg-dash"]["sites"] == ["site-00", "site-01"]
        assert [p[0] for p in reader.metrics("pg-dash")["per_site"]["eval"]["loss"]["site-00"]] == [1, 2]
        with pytest.raises(DBAPIError, match="read-only transaction"), reader.engine.begin() as conn:
            conn.execute(text("DELETE FROM site_metrics WHERE run_id = 'pg-dash'"))
    finally:
        reader.close()
