import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from tests.secure.harness import make_round, run_protocol

from fedcare.errors import ConfigError
from fedcare.secure.encoding import FixedPointCodec
from fedcare.secure.errors import SecAggAbort, SecAggError
from fedcare.secure.graph import harary_graph
from fedcare.secure.shamir import combine_secret, split_secret
from fedcare.secure.stages import MaskedInputIns, ShareKeysIns, Stage, parse_instruction, parse_reply
from fedcare.types import SiteId


def _inputs(sites, size, seed):
    rng = np.random.default_rng(seed)
    deltas = {s: rng.uniform(-1, 1, size) for s in sites}
    weights = {s: int(rng.integers(1, 200)) for s in sites}
    return deltas, weights


def _expected(deltas, weights, included):
    return sum(weights[s] * deltas[s] for s in included), sum(weights[s] for s in included)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(2, 9),
    size=st.integers(1, 300),
    degree=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    bits=st.sampled_from([8, 12, 16]),
)
def test_unmasked_sum_equals_plain_sum_within_quantisation(n, size, degree, seed, bits):
    codec = FixedPointCodec(clip_range=1.0, bits=bits)
    k = min(n - 1, degree + degree % 2)  # the graph's degree (rounded up to even, at most n - 1)
    sites, server, clients = make_round(n, size, degree=degree, threshold=k // 2 + 1, seed=seed, codec=codec)
    deltas, weights = _inputs(sites, size, seed)
    result = run_protocol(server, clients, deltas, weights)
    want, total = _expected(deltas, weights, sites)
    assert result.total_weight == total
    assert sorted(result.survivors) == sorted(sites)
    # deterministic rounding: each site is off by at most half a step, times its weight
    assert np.abs(result.weighted_sum - want).max() <= total * codec.error_bound + 1e-9


@pytest.mark.parametrize("stage", list(Stage))
def test_dropouts_after_each_stage_give_the_survivors_sum(stage):
    # complete graph, n=8, t=4: up to n - t = 4 sites may drop
    n, size, t = 8, 64, 4
    sites, server, clients = make_round(n, size, degree=n - 1, threshold=t, seed=1)
    deltas, weights = _inputs(sites, size, 1)
    dropped = set(sites[1 : 1 + n - t])
    result = run_protocol(server, clients, deltas, weights, drop={stage: dropped})
    # a site that dropped only in the unmask stage has its masked input in the sum
    included = sites if stage is Stage.UNMASK else [s for s in sites if s not in dropped]
    want, total = _expected(deltas, weights, included)
    assert sorted(result.survivors) == sorted(included)
    assert result.total_weight == total
    assert np.abs(result.weighted_sum - want).max() <= total * FixedPointCodec().error_bound + 1e-9


def test_secagg_plus_graph_survives_dropouts_in_two_stages():
    n, size = 20, 32
    sites, server, clients = make_round(n, size, degree=6, threshold=4, seed=2)  # t > k/2 (sites refuse less)
    deltas, weights = _inputs(sites, size, 2)
    drop = {Stage.SHARE_KEYS: {sites[0]}, Stage.MASKED_INPUT: {sites[7]}, Stage.UNMASK: {sites[13]}}
    result = run_protocol(server, clients, deltas, weights, drop=drop)
    included = [s for s in sites if s not in (sites[0], sites[7])]
    want, total = _expected(deltas, weights, included)
    assert result.total_weight == total
    assert np.abs(result.weighted_sum - want).max() <= total * FixedPointCodec().error_bound + 1e-9
    assert all(len(v) >= 6 for v in server.graph.values())  # degree k (rounded up to even)


@pytest.mark.parametrize("stage", list(Stage))
def test_below_threshold_aborts_with_no_aggregate(stage):
    n, t = 6, 4
    sites, server, clients = make_round(n, 16, degree=n - 1, threshold=t, seed=3, min_survivors=t)
    deltas, weights = _inputs(sites, 16, 3)
    with pytest.raises(SecAggAbort, match="aborted"):
        run_protocol(server, clients, deltas, weights, drop={stage: set(sites[: n - t + 1])})
    with pytest.raises(SecAggError, match="aborted"):
        server.result()


def test_a_single_masked_vector_is_indistinguishable_from_uniform():
    # the site's input is all zeros (the most structured input there is)
    size = 50_000
    sites, server, clients = make_round(3, size, degree=2, threshold=2, seed=4)
    seen = {}
    ins = server.start()
    for s, i in ins.items():
        server.receive(s, clients[s].advertise_keys(i))
    ins = server.advance()
    for s, i in ins.items():
        server.receive(s, clients[s].share_keys(i))
    ins = server.advance()
    for s, i in ins.items():
        clients[s].check_masked_input(i)
        seen[s] = clients[s].masked_input(np.zeros(size), 1).masked.copy()
    counts = np.bincount(seen[sites[0]].view(np.uint8), minlength=256)
    p = stats.chisquare(counts).pvalue
    assert p > 1e-4, p
    # the unmasked encoding of zeros would be wildly non-uniform
    raw = np.empty(size + 1, np.uint32)
    FixedPointCodec().encode_into(raw, np.zeros(size), 1, 10)
    assert stats.chisquare(np.bincount(raw.view(np.uint8), minlength=256)).pvalue < 1e-100


def _to_stage3(seed=5, n=4):
    sites, server, clients = make_round(n, 8, degree=n - 1, threshold=2, seed=seed)
    ins = server.start()
    for s, i in ins.items():
        server.receive(s, clients[s].advertise_keys(i))
    ins = server.advance()
    for s, i in ins.items():
        server.receive(s, clients[s].share_keys(i))
    return sites, server, clients, server.advance()


def test_tampered_share_is_rejected():
    sites, server, clients, ins = _to_stage3()
    target = sites[0]
    good = ins[target]
    sender = next(iter(good.ciphertexts))
    ct = bytearray(good.ciphertexts[sender])
    ct[-1] ^= 1
    bad = MaskedInputIns(session=good.session, ciphertexts={**good.ciphertexts, sender: bytes(ct)}, num_peers=4)
    with pytest.raises(SecAggError, match="failed authentication"):
        clients[target].check_masked_input(bad)
    assert clients[target].next_stage is None  # the site takes no further part


def test_share_routed_to_another_receiver_is_rejected():
    sites, server, clients, ins = _to_stage3()
    a, b = sites[0], sites[1]
    sender = sites[2]
    forged = MaskedInputIns(
        session=ins[a].session, ciphertexts={**ins[a].ciphertexts, sender: ins[b].ciphertexts[sender]}, num_peers=4
    )
    with pytest.raises(SecAggError, match="failed authentication"):
        clients[a].check_masked_input(forged)


def test_share_replayed_into_another_round_is_rejected():
    sites, server, clients, ins = _to_stage3(seed=6)
    sites2, server2, clients2, ins2 = _to_stage3(seed=7)
    a = sites[0]
    replay = MaskedInputIns(session=ins2[a].session, ciphertexts=dict(ins[a].ciphertexts), num_peers=4)
    with pytest.raises(SecAggError):
        clients2[a].check_masked_input(replay)


def test_replayed_and_out_of_order_messages_are_refused():
    sites, server, clients = make_round(4, 8, degree=3, threshold=2, seed=8)
    ins = server.start()
    s0 = sites[0]
    # site: a later stage before the first one
    with pytest.raises(SecAggError, match="out of order"):
        clients[s0].share_keys(ShareKeysIns(session=ins[s0].session, pk_enc={}, pk_mask={}))
    # site refused and closed its session; a fresh one accepts stage 1 once, never twice
    sites, server, clients = make_round(4, 8, degree=3, threshold=2, seed=8)
    ins = server.start()
    res = clients[s0].advertise_keys(ins[s0])
    with pytest.raises(SecAggError, match="out of order"):
        clients[s0].advertise_keys(ins[s0])
    # server: duplicate reply, reply to a stage that is not open, unknown session
    server.receive(s0, res)
    with pytest.raises(SecAggError, match="duplicate"):
        server.receive(s0, res)
    s1 = sites[1]
    other_sites, other_server, other_clients = make_round(4, 8, degree=3, threshold=2, seed=9)
    foreign = other_clients[s1].advertise_keys(other_server.start()[s1])
    with pytest.raises(SecAggError, match="session"):
        server.receive(s1, foreign)
    for s in sites[1:]:
        server.receive(s, clients[s].advertise_keys(ins[s]))
    server.advance()
    with pytest.raises(SecAggError, match="out of order"):
        server.receive(s0, res)


def test_stage_payloads_round_trip_and_reject_garbage():
    sites, server, clients = make_round(3, 8, degree=2, threshold=2, seed=10)
    ins = server.start()
    s = sites[0]
    decoded = parse_instruction(ins[s].to_payload(), "test")
    assert decoded == ins[s]
    res = clients[s].advertise_keys(decoded)
    assert parse_reply(res.to_payload(), "test", size=9, dtype=np.uint32) == res
    broken = res.to_payload()
    broken.arrays["secagg"]["pk_enc"] = np.zeros(31, np.uint8)
    with pytest.raises(SecAggError, match="pk_enc: expected 32 bytes"):
        parse_reply(broken, "reply from s00", size=9, dtype=np.uint32)


def test_overflow_is_prevented_and_reported():
    codec = FixedPointCodec(bits=16, modulus_bits=32)
    with pytest.raises(ConfigError, match="overflow"):
        codec.check_capacity(100, 1000)
    codec.check_capacity(100, codec.default_site_weight(100))
    with pytest.raises(SecAggError, match="outside"):
        codec.encode_into(np.empty(3, np.uint32), np.zeros(2), 11, 10)
    with pytest.raises(ConfigError, match="bits"):
        FixedPointCodec(bits=40, modulus_bits=32)
    # 64-bit ring holds what 32 bits cannot
    FixedPointCodec(bits=16, modulus_bits=64).check_capacity(100, 1000)


@settings(max_examples=10, deadline=None)
@given(secret=st.binary(min_size=16, max_size=16), k=st.integers(2, 7), data=st.data())
def test_any_t_of_k_shares_reconstruct(secret, k, data):
    t = data.draw(st.integers(1, k))
    shares = split_secret(secret, t, k)
    picked = data.draw(st.lists(st.integers(0, k - 1), min_size=t, max_size=t, unique=True))
    assert combine_secret([(i + 1, shares[i]) for i in picked], t) == secret


def test_harary_graph_is_symmetric_regular_and_seeded():
    sites = [SiteId(f"s{i}") for i in range(30)]
    g = harary_graph(sites, 6, np.random.default_rng(0))
    assert all(s not in g[s] and all(s in g[v] for v in g[s]) for s in sites)
    assert {len(v) for v in g.values()} == {6}
    assert g == harary_graph(sites, 6, np.random.default_rng(0))
    assert g != harary_graph(sites, 6, np.random.default_rng(1))


@settings(max_examples=10, deadline=None)
@given(secret=st.binary(min_size=16, max_size=16), k=st.integers(2, 6), data=st.data())
def test_cached_combine_agrees_with_pycryptodome(secret, k, data):
    from Crypto.Protocol.SecretSharing import Shamir

    t = data.draw(st.integers(2, k))
    shares = list(enumerate(split_secret(secret, t, k), start=1))
    picked = data.draw(st.permutations(shares))[:t]
    assert combine_secret(picked, t) == Shamir.combine(sorted(picked)) == secret


def test_site_refuses_nan_update_and_wrong_size():
    sites, server, clients, ins = _to_stage3(seed=11)
    a, b = sites[0], sites[1]
    clients[a].check_masked_input(ins[a])
    with pytest.raises(SecAggError, match="NaN"):
        clients[a].masked_input(np.full(8, np.nan), 1)
    assert clients[a].next_stage is None
    clients[b].check_masked_input(ins[b])
    with pytest.raises(SecAggError, match="round expects 8"):
        clients[b].masked_input(np.zeros(7), 1)


def test_weight_is_folded_before_rounding_and_clipping_is_applied():
    codec = FixedPointCodec(clip_range=1.0, bits=8)
    out = np.empty(4, np.uint32)
    codec.encode_into(out, np.array([-5.0, 0.0, 5.0]), 3, 10)
    assert out.view(np.int32).tolist() == [-382, 0, 382, 3]  # clipped to floor(w L / 2)
    total, weight = codec.decode_sum(out)
    np.testing.assert_allclose(total, [-3.0, 0.0, 3.0], atol=3 * codec.error_bound)
    assert weight == 3


def test_server_refuses_early_result_and_unmask_replies_that_answer_nothing():
    from fedcare.secure.stages import UnmaskRes

    sites, server, clients, ins = _to_stage3(seed=12)
    with pytest.raises(SecAggError, match="unmask stage"):
        server.result()
    for s, i in ins.items():
        clients[s].check_masked_input(i)
        server.receive(s, clients[s].masked_input(np.zeros(8), 1))
    unmask = server.advance()
    s0 = sites[0]
    honest = clients[s0].unmask(unmask[s0])
    greedy = UnmaskRes(session=honest.session, b_shares=honest.b_shares, sk_shares={sites[1]: bytes(16)})
    with pytest.raises(SecAggError, match="do not answer"):
        server.receive(s0, greedy)
