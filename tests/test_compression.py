"""Compressed updates: round-trip bounds, validation, error feedback, and what composes with what."""

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedcare.compression import (
    CHUNK,
    COMPRESSED_RECORD,
    RESIDUAL_RECORD,
    Compression,
    compress_update,
    decompress_update,
)
from fedcare.data.federated import concat
from fedcare.datasets.heart_disease import load_heart_disease
from fedcare.errors import ConfigError, SerdeError
from fedcare.privacy.plan import ClientDP, ClientDPMode, PrivacyPlan
from fedcare.runtime.simulation import build_nodes, run_simulation
from fedcare.strategies import make_strategy
from fedcare.tasks import make_task
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)
vectors = arrays(np.float32, st.integers(1, 3 * CHUNK // 2), elements=finite)


def _pair(delta: np.ndarray) -> tuple[dict, dict]:
    ref = {"w": np.linspace(-1, 1, delta.size, dtype=np.float32), "steps": np.array([3], dtype=np.int64)}
    state = {"w": ref["w"] + delta, "steps": np.array([4], dtype=np.int64)}
    return ref, state


@settings(max_examples=60, deadline=None)
@given(delta=vectors, bits=st.sampled_from([8, 4]), seed=st.integers(0, 2**32 - 1))
def test_quantisation_round_trip_is_within_one_step_per_chunk(delta, bits, seed):
    ref, state = _pair(delta)
    codec = Compression(codec=f"q{bits}")
    record = compress_update(ref, state, codec, rng=np.random.default_rng(seed))
    out = decompress_update(record, ref, where="test")
    sent = state["w"] - ref["w"]  # the update as float32 (what the site encodes)
    got = out["w"] - ref["w"]
    step = np.repeat(record["step"], CHUNK)[: delta.size].astype(np.float64)
    slack = 1e-6 * (np.abs(sent).max() + np.abs(ref["w"]).max() + 1) + 1e-6
    assert np.all(np.abs(got.astype(np.float64) - sent) <= step + slack)
    assert out["steps"].tolist() == [4]  # non-float entries travel as they are


@settings(max_examples=60, deadline=None)
@given(delta=vectors, fraction=st.floats(0.001, 1.0), residual=st.booleans())
def test_topk_keeps_the_largest_and_error_feedback_loses_nothing(delta, fraction, residual):
    ref, state = _pair(delta)
    x = (state["w"] - ref["w"]).astype(np.float32)
    memory = {}
    old = np.full_like(x, 0.5) if residual else np.zeros_like(x)
    if residual:
        memory[RESIDUAL_RECORD] = {"flat": old}
    record = compress_update(ref, state, Compression(codec="topk", fraction=fraction), rng=None, memory=memory)
    acc = x + old
    k = record["idx"].size
    assert k == min(x.size, max(1, int(np.ceil(fraction * x.size))))
    dropped = np.delete(np.abs(acc), record["idx"])
    if dropped.size:
        assert dropped.max() <= np.abs(record["val"]).min()  # the stated bound
    dense = np.zeros_like(acc)
    dense[record["idx"]] = record["val"]
    np.testing.assert_array_equal(dense + memory[RESIDUAL_RECORD]["flat"], acc)  # nothing is lost, only delayed


def test_quantisation_is_unbiased():
    ref, state = _pair(np.random.default_rng(0).normal(size=CHUNK).astype(np.float32))
    rng = np.random.default_rng(1)
    codec = Compression(codec="q4")
    mean = np.mean(
        [decompress_update(compress_update(ref, state, codec, rng=rng), ref, where="t")["w"] for _ in range(400)], 0
    )
    step = float(compress_update(ref, state, codec, rng=rng)["step"][0])
    assert np.abs(mean - state["w"]).max() < 0.25 * step  # each element's mean converges to the value


def test_four_bit_and_eight_bit_records_are_that_small():
    ref, state = _pair(np.random.default_rng(0).normal(size=100_000).astype(np.float32))
    full = state["w"].nbytes
    q8 = compress_update(ref, state, Compression(codec="q8"), rng=np.random.default_rng(0))
    q4 = compress_update(ref, state, Compression(codec="q4"), rng=np.random.default_rng(0))
    top = compress_update(ref, state, Compression(codec="topk", fraction=0.01), rng=None, memory={})
    size = lambda r: sum(a.nbytes for a in r.values())  # noqa: E731
    assert full / size(q8) > 3.9 and full / size(q4) > 7.8 and full / size(top) > 49


def test_heavy_tailed_updates_deflate_below_a_quarter_and_decode_to_the_same_model():
    # Student-t(3) deltas: heavy tails, as trained networks' updates are; the codes' entropy
    # is well under 8 bits, so DEFLATE takes q8 past the 4x that 8 bits alone can reach.
    delta = np.random.default_rng(0).standard_t(3, size=100_000).astype(np.float32)
    ref, state = _pair(delta)
    q8 = compress_update(ref, state, Compression(codec="q8"), rng=np.random.default_rng(0))
    assert "q8z" in q8 and "q8" not in q8
    assert state["w"].nbytes / sum(a.nbytes for a in q8.values()) > 4.5
    plain = {**{k: v for k, v in q8.items() if k != "q8z"}, "q8": np.frombuffer(zlib.decompress(q8["q8z"]), np.uint8)}
    np.testing.assert_array_equal(
        decompress_update(q8, ref, where="t")["w"], decompress_update(plain, ref, where="t")["w"]
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(q8z=r["q8z"][:-3]), "does not inflate to exactly 100000 bytes"),
        (lambda r: r.update(q8z=np.frombuffer(b"not deflate", np.uint8)), "q8z is not valid DEFLATE data"),
        (lambda r: r.update(q8z=np.frombuffer(zlib.compress(bytes(10**7)), np.uint8)), "exactly 100000 bytes"),
        (lambda r: r.update(q8z=r["q8z"].astype(np.int16)), "q8z must be 1-d uint8"),
    ],
)
def test_decoder_refuses_bad_deflated_codes_without_inflating_past_the_model(mutate, message):
    ref, state = _pair(np.random.default_rng(0).standard_t(3, size=100_000).astype(np.float32))
    record = compress_update(ref, state, Compression(codec="q8"), rng=np.random.default_rng(0))
    mutate(record)
    with pytest.raises(SerdeError, match=message):
        decompress_update(record, ref, where="fit reply from a")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(q8=r["q8"][:-1]), "q8 codes must be uint8 of shape"),
        (lambda r: r.update(lo=np.array([np.nan], np.float32)), "lo holds non-finite"),
        (lambda r: r.update(step=-r["step"] - 1), "step is negative"),
        (lambda r: r.pop("lo"), "not a known codec"),
        (lambda r: r.pop("raw.steps"), "raw entries"),
    ],
)
def test_decoder_refuses_malformed_quantised_records(mutate, message):
    ref, state = _pair(np.ones(10, np.float32))
    record = compress_update(ref, state, Compression(codec="q8"), rng=np.random.default_rng(0))
    mutate(record)
    with pytest.raises(SerdeError, match=message):
        decompress_update(record, ref, where="fit reply from a")


@pytest.mark.parametrize(
    "idx",
    [np.array([3, 3], np.int32), np.array([5, 2], np.int32), np.array([10], np.int32), np.array([-1], np.int32)],
)
def test_decoder_refuses_bad_sparse_indices(idx):
    ref, _ = _pair(np.ones(10, np.float32))
    record = {"idx": idx, "val": np.ones(idx.size, np.float32), "raw.steps": np.array([1], np.int64)}
    with pytest.raises(SerdeError, match="strictly increasing"):
        decompress_update(record, ref, where="fit reply from a")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"compression": "q2"}, "compression must be one of none, q8, q4, topk, got 'q2'"),
        ({"compression": "topk", "compression_fraction": 0.0}, r"compression_fraction must be in \(0, 1\]"),
        ({"compression": "topk", "compression_error_feedback": "yes"}, "must be true or false"),
    ],
)
def test_bad_compression_config_is_one_line(config, message):
    with pytest.raises(ConfigError, match=message):
        Compression.from_config(config)


def _heart():
    data = load_heart_disease()
    test = concat([d.test for d in data.sites.values()])
    return data, test, make_task("logreg", n_features=test.x.shape[1])


FIT = {"optimizer": "sgd", "lr": 0.05, "batch_size": 4, "local_epochs": 1}


def _run(data, task, compression: Compression, rounds: int = 20):
    strategy = make_strategy("fedavg", fit_config={**FIT, **compression.fit_config()})
    return run_simulation(
        sites=data.sites, task=task, strategy=strategy, rounds=rounds, seed=0, run_id=RunId("c"), max_workers=2
    )


def test_topk_one_percent_with_error_feedback_keeps_heart_accuracy_within_a_point():
    data, test, task = _heart()
    plain = _run(data, task, Compression())
    sparse = _run(data, task, Compression(codec="topk", fraction=0.01))
    acc = [task.evaluate(r.state.model, test).metrics["accuracy"] for r in (plain, sparse)]
    assert acc[0] > 0.75
    assert acc[1] >= acc[0] - 0.01, acc
    # the compressed run really sent less, and it is recorded per round
    up = [r.rounds[-1].fit_metrics["bytes_up"] for r in (plain, sparse)]
    assert up[1] < up[0] / 5, up
    assert all(r.fit_metrics["bytes_down"] > 0 for r in sparse.rounds)


def test_site_keeps_the_remainder_in_its_run_memory_and_compresses_after_dp():
    data, _, task = _heart()
    site = SiteId(data.site_ids()[0])
    node = build_nodes({site: data.sites[site]}, task)[site]
    model = task.init_model(np.random.default_rng(0))
    config = {
        **FIT,
        **Compression(codec="topk", fraction=0.1).fit_config(),
        "task": task.name,
        "task_hash": node.task_hash,
        "seed": 3,
        **PrivacyPlan(
            client=ClientDP(mode=ClientDPMode.DISTRIBUTED, noise_multiplier=1.0, clip_norm=0.1, delta=1e-5)
        ).to_config(),
    }
    msg = Message(MessageKind.FIT, RunId("r"), 1, site, Payload(arrays={"model": model}, config=config))
    reply = node.handle(msg)
    assert not reply.has_error, reply.error
    assert set(reply.payload.arrays) == {COMPRESSED_RECORD}
    assert RESIDUAL_RECORD in node.site_state[RunId("r")]


def test_secure_aggregation_refuses_compression_with_the_reason():
    from fedcare.secure import SecAggPlusWorkflow

    data, _, task = _heart()
    with pytest.raises(ConfigError, match="cannot run under SecAgg\\+: masked values"):
        run_simulation(
            sites=data.sites,
            task=task,
            strategy=make_strategy("fedavg", fit_config={**FIT, "compression": "q8"}),
            rounds=1,
            seed=0,
            run_id=RunId("s"),
            fit_workflow=SecAggPlusWorkflow(),
        )
