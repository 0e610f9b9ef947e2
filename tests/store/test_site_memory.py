"""A deployed node's per-run memory survives a restart; a damaged file is set aside, never trusted."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedcare.runtime.node import SiteNode
from fedcare.store.site_memory import SiteMemoryFiles
from fedcare.task import ArrayDataset, SiteData, task_hash
from fedcare.tasks import make_task
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

RUN = RunId("heart-2026/run-1")


def memory() -> dict[str, dict[str, np.ndarray]]:
    return {
        "scaffold_c_i": {"weight": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.float64(0.5) * np.ones(())},
        "ditto_personal_model": {"weight": np.full((2, 3), -1.25, np.float32), "steps": np.array([3], np.int64)},
    }


def test_memory_round_trips_with_names_dtypes_shapes_and_scalars(tmp_path):
    files = SiteMemoryFiles(tmp_path / "memory")
    files.save(RUN, memory())
    loaded = files.load(RUN)
    want = memory()
    assert list(loaded) == list(want)
    for record, state in want.items():
        assert list(loaded[record]) == list(state)
        for key, arr in state.items():
            got = loaded[record][key]
            assert got.dtype == arr.dtype and got.shape == arr.shape and np.array_equal(got, arr)
            assert got.flags.writeable  # the node updates it in place next round
    assert files.load(RunId("another-run")) == {}


def test_run_ids_cannot_escape_the_folder_or_collide(tmp_path):
    files = SiteMemoryFiles(tmp_path / "memory")
    a, b = files.path(RunId("../../etc/passwd")), files.path(RunId("..-..-etc-passwd"))
    assert a.parent == b.parent == tmp_path / "memory" and a != b
    files.save(RunId("../../etc/passwd"), memory())
    assert [p.name for p in (tmp_path / "memory").iterdir()] == [a.name]


def test_nothing_is_written_for_an_empty_memory(tmp_path):
    files = SiteMemoryFiles(tmp_path / "memory")
    files.save(RUN, {})
    assert not (tmp_path / "memory").exists()


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda blob: blob[:-7] + bytes(7 * [0x41]), "sha256 mismatch"),  # a value changed, header intact
        (lambda blob: blob[: len(blob) // 2], "truncated"),
        (lambda blob: b"\x00" * len(blob), "header"),  # zeroed
    ],
)
def test_a_damaged_file_is_set_aside_with_a_warning_and_the_run_starts_fresh(tmp_path, caplog, damage, reason):
    files = SiteMemoryFiles(tmp_path)
    files.save(RUN, memory())
    path = files.path(RUN)
    original = path.read_bytes()
    path.write_bytes(damage(original))
    with caplog.at_level(logging.WARNING, logger="fedcare.store.site_memory"):
        assert files.load(RUN) == {}
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = record.getMessage()
    assert str(path) in text and reason in text and "\n" not in text
    aside = path.with_suffix(".corrupt")
    assert not path.exists() and aside.read_bytes() == damage(original)  # kept for inspection


def test_a_file_of_another_run_is_not_taken_for_this_one(tmp_path, caplog):
    files = SiteMemoryFiles(tmp_path)
    files.save(RunId("other"), memory())
    files.path(RunId("other")).rename(files.path(RUN))
    with caplog.at_level(logging.WARNING, logger="fedcare.store.site_memory"):
        assert files.load(RUN) == {}
    assert "belongs to run 'other'" in caplog.text


def _node(tmp_path, task, data, *, persist: bool) -> SiteNode:
    files = SiteMemoryFiles(tmp_path / "memory") if persist else None
    return SiteNode(site_id=SiteId("a"), task=task, data=data, memory_files=files)


def _msg(kind: MessageKind, task, model, round_no: int, arrays, config) -> Message:
    if kind is MessageKind.FIT:
        config = {"seed": round_no, "lr": 0.5, "local_steps": 5, **config}
    return Message(
        kind=kind,
        run_id=RUN,
        round_no=round_no,
        site=SiteId("a"),
        payload=Payload(arrays={"model": model, **arrays}, config={"task_hash": task_hash(task), **config}),
    )


@pytest.mark.parametrize("persist", [True, False])
@pytest.mark.parametrize(
    "task_name, params, config, record",
    [
        ("logreg", {}, {}, "scaffold_c_i"),  # SCAFFOLD: the site's control variate
        ("mlp", {"hidden": ()}, {"ditto_lambda": 0.1}, "ditto_personal_model"),  # Ditto: the personal model
    ],
)
def test_a_restarted_node_continues_from_its_memory(tmp_path, persist, task_name, params, config, record):
    # Prepare: one site trains two rounds, then its process "restarts"
    task = make_task(task_name, n_features=2, **params)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2)).astype(np.float32)
    y = (x[:, 0] - 0.3 * x[:, 1] > 0).astype(np.float32)
    data = SiteData(ArrayDataset(x[:30], y[:30]), ArrayDataset(x[30:], y[30:]))
    model = task.init_model(np.random.default_rng(0))
    arrays = {"scaffold_c": {k: np.zeros_like(v) for k, v in model.items()}} if record == "scaffold_c_i" else {}
    first = _node(tmp_path, task, data, persist=persist)
    for round_no in (1, 2):
        reply = first.handle(_msg(MessageKind.FIT, task, model, round_no, arrays, config))
        assert reply.error is None, reply.error
    kept = {k: v.copy() for k, v in first.site_state[RUN][record].items()}
    evaluation = first.handle(_msg(MessageKind.EVALUATE, task, model, 2, {}, {}))
    # Execute: a new node (same folder) gets the run's next instructions
    second = _node(tmp_path, task, data, persist=persist)
    again = second.handle(_msg(MessageKind.EVALUATE, task, model, 3, {}, {}))
    restored = {k: v.copy() for k, v in second.site_state[RUN].get(record, {}).items()}
    fit = second.handle(_msg(MessageKind.FIT, task, model, 3, arrays, config))
    # Assert: with its memory on disk the site goes on from where it was; without, it starts over
    assert again.error is None and fit.error is None, (again.error, fit.error)
    if persist:
        assert restored.keys() == kept.keys() and all(np.array_equal(restored[k], kept[k]) for k in kept)
        assert again.payload.metrics == evaluation.payload.metrics
        on_disk = SiteMemoryFiles(tmp_path / "memory").load(RUN)[record]  # round 3 was written too
        assert not all(np.array_equal(on_disk[k], kept[k]) for k in kept)
    else:
        assert restored == {}


def test_a_second_damaged_copy_does_not_replace_the_first(tmp_path):
    files = SiteMemoryFiles(tmp_path)
    for damage in (b"first", b"second"):
        files.save(RUN, memory())
        files.path(RUN).write_bytes(damage)
        assert files.load(RUN) == {}
    kept = sorted(p.read_bytes() for p in tmp_path.iterdir())
    assert kept == [b"first", b"second"]
