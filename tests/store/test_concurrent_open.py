"""Several processes opening one new SQLite store at once (nodes started side by side)."""

from __future__ import annotations

import multiprocessing as mp


def _open(url: str, barrier: mp.synchronize.Barrier) -> None:
    from fedcare.store.sql import SqlStore

    barrier.wait()
    SqlStore(url).close()


def test_processes_creating_the_same_new_store_all_succeed(tmp_path):
    ctx = mp.get_context("fork")
    for trial in range(3):
        url = f"sqlite:///{tmp_path / f'shared-{trial}.db'}"
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open, args=(url, barrier)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
