"""Threshold CKKS aggregation with OpenFHE (engine in a side interpreter; skipped without one)."""

import numpy as np
import pytest
from tests.conftest import ShiftTask, shift_sites

from fedcare.errors import ConfigError, NotEnoughSitesError
from fedcare.he import OpenFheEngine, find_openfhe_python
from fedcare.runtime.policy import SitePolicy
from fedcare.runtime.simulation import build_nodes, run_simulation
from fedcare.secure.ckks import CkksEngineError, CkksParams, CkksWorkflow, pack_blobs, unpack_blobs
from fedcare.strategies import CoordinateMedian, FedAdam, FedAvg
from fedcare.transport import InProcessChannel
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

pytestmark = pytest.mark.skipif(
    find_openfhe_python() is None, reason="no Python with OpenFHE's bindings (FEDCARE_OPENFHE_PYTHON, make openfhe-env)"
)


@pytest.fixture(scope="module")
def engine():
    e = OpenFheEngine()
    yield e
    e.close()


def _run(engine, n=4, rounds=1, strategy=None, policies=None, size=16, **kw):
    return run_simulation(
        sites=shift_sites(n),
        task=ShiftTask(size=size),
        strategy=strategy or FedAvg(),
        rounds=rounds,
        seed=0,
        run_id=RunId("r"),
        fit_workflow=CkksWorkflow(backend=engine) if engine is not None else None,
        policies=policies,
        max_workers=2,
        **kw,
    )


def test_parameters_meet_128_bit_security_and_pack_4096_values(engine):
    # complex packing: 2048 slots of ring 4096, two values each
    assert engine.slots == 4096 and engine.info["ckks_slots"] == 2048 and engine.info["packing"] == "complex"
    assert engine.info["ring_dim"] == 4096
    # HE standard, 128-bit classical, ring 4096: log2 Q <= 109 (BV key switching: no auxiliary modulus)
    assert engine.info["log_q"] <= 109
    # OpenFHE's own HE-standard check refuses a ring too small for 128 bits
    small = OpenFheEngine(CkksParams(ring_dim=2048))
    try:
        with pytest.raises(CkksEngineError, match="does not comply with HE standards"):
            _ = small.slots
    finally:
        small.close()


def test_decrypted_sum_equals_plain_sum_within_precision_and_fewer_shares_cannot_decrypt(engine):
    rng = np.random.default_rng(0)
    lead, lead_pk = engine.keygen()
    parties = [engine.keygen(lead_pk) for _ in range(3)]
    joint = engine.join([lead_pk] + [pk for _, pk in parties])
    xs = [rng.normal(size=5000) * 10 for _ in range(3)]  # two ciphertexts each (4096 values per ciphertext)
    cts = [engine.encrypt(joint, x) for x in xs]
    assert all(len(c) == 2 for c in cts)
    total = engine.add(cts)
    shares = [engine.partial_decrypt(lead, total, lead=True)]
    shares += [engine.partial_decrypt(h, total, lead=False) for h, _ in parties]
    got = engine.fuse(shares, 5000)
    np.testing.assert_allclose(got, sum(xs), atol=1e-4)  # documented: |error| < 1e-4 at scale 2^45
    # all but one share: the values decode as noise modulo Q, far beyond the bound, and the engine says so
    for missing in range(4):
        fewer = shares[:missing] + shares[missing + 1 :]
        with pytest.raises(CkksEngineError, match="a decryption share is missing"):
            engine.fuse(fewer, 5000)
    # an individual ciphertext decrypted with the shares of the sum's parties but one: no
    single = engine.add([cts[0]])
    partial = [engine.partial_decrypt(lead, single, lead=True)] + [
        engine.partial_decrypt(h, single, lead=False) for h, _ in parties[1:]
    ]
    with pytest.raises(CkksEngineError):
        engine.fuse(partial, 5000)
    for h, _ in [(lead, None), *parties]:
        engine.forget(h)


def test_ciphertext_bytes_look_uniform(engine):
    """The coordinator's view: the serialized ciphertext's payload bytes have no byte bias (chi-square)."""
    from scipy.stats import chisquare

    _, pk = engine.keygen()
    (ct,) = engine.encrypt(pk, np.zeros(100))  # an all-zero update
    raw = np.frombuffer(ct, dtype=np.uint8)
    ring = engine.info["ring_dim"]
    # the two polynomials: runs of 8-byte words below 2^60 found at each byte alignment. Each run
    # is some header words (sizes, zeros), the ring coefficients mod the 60-bit prime q, then q
    # itself; the headers' zeros and q's bytes are not random, so only the ring words before q
    # are counted (counting them too failed the test for 6 ciphertexts in 60). Their low 7
    # bytes must be uniform.
    polys, moduli = [], set()
    for a in range(8):
        w = raw[a : a + (raw.size - a) // 8 * 8].reshape(-1, 8)
        small = np.concatenate([[False], w[:, 7] < 16, [False]]).astype(np.int8)
        starts, ends = np.flatnonzero(np.diff(small) == 1), np.flatnonzero(np.diff(small) == -1)
        for s, e in zip(starts, ends, strict=True):
            if e - s > ring:
                polys.append(w[e - 1 - ring : e - 1])
                moduli.add(int(w[e - 1].view("<u8")[0]))
    assert len(polys) == 2
    (q,) = moduli  # both polynomials end with the same modulus: a 60-bit odd prime
    assert 2**59 < q < 2**60 and q % 2 == 1
    counts = np.bincount(np.concatenate([p[:, :7].ravel() for p in polys]), minlength=256)
    assert chisquare(counts).pvalue > 1e-4


def test_ckks_fedavg_matches_plain_fedavg(engine):
    plain = _run(None, n=5, rounds=2)
    enc = _run(engine, n=5, rounds=2)
    np.testing.assert_allclose(enc.state.model["w"], plain.state.model["w"], atol=1e-5)
    r = enc.rounds[-1]
    assert r.fit_metrics["ckks_sites"] == 5 and r.fit_metrics["ckks_key_holders"] == 6 and not r.failures
    assert r.fit_metrics["num_examples"] == sum(range(1, 6))  # total weight, never one site's
    assert all("num_examples" not in m for m in r.site_fit.values())


def test_ckks_with_fedadam_runs_and_median_is_refused(engine):
    plain = _run(None, n=3, strategy=FedAdam(server_lr=0.1))
    enc = _run(engine, n=3, strategy=FedAdam(server_lr=0.1))
    np.testing.assert_allclose(enc.state.model["w"], plain.state.model["w"], atol=1e-5)
    with pytest.raises(ConfigError, match="median, trimmed mean and Krum"):
        _run(engine, n=3, strategy=CoordinateMedian())


def test_site_dropping_before_its_key_share_is_left_out(engine):
    sites = shift_sites(4)
    task = ShiftTask(size=8)
    nodes = build_nodes(sites, task, ckks_backend=engine)
    gone = sorted(sites)[1]

    def offline(msg: Message) -> Message:
        raise RuntimeError("link down")

    handlers = {s: (offline if s == gone else n.handle) for s, n in nodes.items()}
    from fedcare.runtime.coordinator import Coordinator
    from fedcare.runtime.recorder import RunSpec
    from fedcare.task import task_hash

    channel = InProcessChannel(handlers, max_workers=2)
    coord = Coordinator(
        channel=channel,
        strategy=FedAvg(),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=1,
        fit_workflow=CkksWorkflow(backend=engine),
        evaluate=False,
    )
    spec = RunSpec(
        run_id=RunId("d"), name="d", dataset="", strategy="fedavg", task="shift", task_hash="", seed=0, rounds=1
    )
    result = coord.run(task.init_model(np.random.default_rng(0)), spec=spec)
    channel.close()
    r = result.rounds[0]
    assert r.fit_metrics["ckks_sites"] == 3 and gone in r.failures
    kept = [k for k, s in enumerate(sorted(sites)) if s != gone]
    expected = np.linspace(-1, 1, 8) + sum((k + 1) * 1e-3 * (k + 1) for k in kept) / sum(k + 1 for k in kept)
    np.testing.assert_allclose(result.state.model["w"], expected, atol=1e-5)


def test_site_dropping_before_decryption_leaves_the_sum_encrypted(engine):
    sites = shift_sites(3)
    task = ShiftTask(size=8)
    nodes = build_nodes(sites, task, ckks_backend=engine)
    gone = sorted(sites)[0]

    def drops_at_decrypt(msg: Message) -> Message:
        if msg.payload.config.get("secagg.stage") == "ckks.decrypt":
            raise RuntimeError("link down")
        return nodes[gone].handle(msg)

    handlers = {s: (drops_at_decrypt if s == gone else n.handle) for s, n in nodes.items()}
    with pytest.raises(NotEnoughSitesError, match="every key holder's decryption share"):
        run_simulation(
            sites=sites,
            task=task,
            strategy=FedAvg(),
            rounds=1,
            seed=0,
            run_id=RunId("x"),
            fit_workflow=CkksWorkflow(backend=engine),
            nodes={s: _Handler(h) for s, h in handlers.items()},
            max_workers=2,
        )


class _Handler:
    def __init__(self, fn):
        self.handle = fn


def test_site_policy_min_peers_and_require_encryption(engine):
    policies = {SiteId("site-00"): SitePolicy(min_peers=5)}
    with pytest.raises(NotEnoughSitesError):
        _run(engine, n=3, policies=policies, min_sites=3)
    r = _run(engine, n=3, policies={SiteId("site-00"): SitePolicy(min_peers=5)}).rounds[0]
    assert "at least 5" in r.failures[SiteId("site-00")]
    # a site that requires encryption refuses plain rounds and takes CKKS ones
    strict = {SiteId("site-00"): SitePolicy(require_encryption=True)}
    assert SiteId("site-00") in _run(None, n=3, policies=strict).rounds[0].failures
    assert not _run(engine, n=3, policies=strict).rounds[0].failures


def test_bad_ciphertext_records_are_named_errors():
    with pytest.raises(CkksEngineError, match="do not add up"):
        unpack_blobs({"blob": np.zeros(10, np.uint8), "sizes": np.array([4, 4], np.int64)}, "reply from a")
    with pytest.raises(CkksEngineError, match="expected 3"):
        unpack_blobs(pack_blobs([b"ab", b"cd"]), "reply from a", count=3)
    with pytest.raises(ConfigError, match="scale_bits"):
        CkksParams(scale_bits=58)
    assert unpack_blobs(pack_blobs([b"ab", b"c"]), "x") == [b"ab", b"c"]


def test_site_without_engine_refuses(engine):
    nodes = build_nodes(shift_sites(2), ShiftTask(size=4))  # no backend
    msg = Message(
        kind=MessageKind.SECAGG,
        run_id=RunId("r"),
        round_no=1,
        site=SiteId("site-00"),
        payload=Payload(
            config={"secagg.stage": "ckks.keys", "task": "shift", "task_hash": nodes[SiteId("site-00")].task_hash}
        ),
    )
    reply = nodes[SiteId("site-00")].handle(msg)
    assert reply.error and "no CKKS engine" in reply.error


def test_study_file_selects_ckks_and_keeps_older_study_hashes():
    import tomllib
    from pathlib import Path

    from fedcare.build.run import build_run, build_task, protection_of
    from fedcare.study.spec import parse_study

    raw = tomllib.loads((Path(__file__).resolve().parents[2] / "examples" / "heart-study" / "study.toml").read_text())
    plain = parse_study(raw, where="t")
    secagg = parse_study({**raw, "secure_aggregation": {"enabled": True}}, where="t")
    ckks = parse_study({**raw, "secure_aggregation": {"enabled": True, "mode": "ckks", "scale_bits": 40}}, where="t")
    assert "mode" not in secagg.describe()["secure_aggregation"]  # SecAgg+ studies hash as before
    assert ckks.describe()["secure_aggregation"]["mode"] == "ckks" and ckks.hash != secagg.hash
    assert parse_study(ckks.describe(), where="t").hash == ckks.hash
    task = build_task(plain, n_features=14)
    plan = build_run(ckks, task)
    assert isinstance(plan.fit_workflow, CkksWorkflow) and plan.fit_workflow.params.scale_bits == 40
    assert protection_of(plan) == "ckks-threshold" and plan.describe()["protection"] == "ckks-threshold"
    assert protection_of(build_run(secagg, task)) == "secagg+" and protection_of(build_run(plain, task)) == "none"
    sel = parse_study({**raw, "secure_aggregation": {"mode": "ckks", "encrypt": ["weight"]}}, where="t")
    assert parse_study(sel.describe(), where="t").hash == sel.hash
    assert build_run(sel, task).fit_workflow.encrypted == ("weight",)
    ver = parse_study({**raw, "secure_aggregation": {"mode": "ckks", "verify_sum": True}}, where="t")
    assert build_run(ver, task).fit_workflow.verify_sum and not plan.fit_workflow.verify_sum
    with pytest.raises(ConfigError, match="secure_aggregation.mode must be one of"):
        parse_study({**raw, "secure_aggregation": {"mode": "paillier"}}, where="t")
    with pytest.raises(ConfigError, match="first_mod_bits"):
        build_run(parse_study({**raw, "secure_aggregation": {"mode": "ckks", "first_mod_bits": 44}}, where="t"), task)


def test_report_and_card_name_each_rounds_protection():
    from fedcare.release.sharing import _protection
    from fedcare.report.html import round_protection

    assert _protection(["ckks.keys", "ckks.encrypt", "ckks.decrypt"]) == "ckks-threshold"
    assert _protection(["advertise_keys", "share_keys", "masked_input", "unmask"]) == "secagg+"
    assert _protection([]) == "none"
    assert round_protection({"ckks_sites": 3.0}) == "threshold CKKS"
    assert round_protection({"secagg_survivors": 3.0}) == "SecAgg+"
    assert round_protection({"num_examples": 3.0}) == "none"


def test_site_file_policy_can_require_encryption(tmp_path):
    from fedcare.study.site import load_site

    path = tmp_path / "a.toml"
    path.write_text('[site]\nid = "a"\n[data]\nkind = "csv"\npath = "a.csv"\n[policy]\nrequire_encryption = true\n')
    assert load_site(path).policy.require_encryption


class _TwoEntries(ShiftTask):
    name = "shift2"

    def init_model(self, rng):
        return {"w": np.linspace(-1, 1, self.size, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}

    def fit(self, model, data, config, rng):
        res = super().fit({"w": model["w"]}, data, config, rng)
        return type(res)(
            state={**res.state, "b": model["b"] + np.float32(2 * data.x[0, 0])},
            num_examples=res.num_examples,
            metrics=res.metrics,
        )


def test_selective_encryption_sends_the_undeclared_entries_in_clear(engine):
    def run(workflow, policies=None):
        return run_simulation(
            sites=shift_sites(3),
            task=_TwoEntries(size=8),
            strategy=FedAvg(),
            rounds=1,
            seed=0,
            run_id=RunId("s"),
            fit_workflow=workflow,
            policies=policies,
            max_workers=2,
        )

    plain = run(None)
    selective = run(CkksWorkflow(backend=engine, encrypted=("w",)))
    for name in ("w", "b"):
        np.testing.assert_allclose(selective.state.model[name], plain.state.model[name], atol=1e-5)
    r = selective.rounds[0]
    assert r.fit_metrics["ckks_clear_values"] == 2 and not r.failures
    # a site that requires encryption refuses a round that would send "b" in clear
    strict = {SiteId("site-01"): SitePolicy(require_encryption=True)}
    r = run(CkksWorkflow(backend=engine, encrypted=("w",)), strict).rounds[0]
    assert "no model entry in clear" in r.failures[SiteId("site-01")]
    with pytest.raises(ConfigError, match="not in the model"):
        run(CkksWorkflow(backend=engine, encrypted=("nope",)))


def test_verified_sum_stops_a_coordinator_that_asks_to_decrypt_one_update(engine):
    from dataclasses import replace

    sites = shift_sites(3)
    task = ShiftTask(size=8)
    plain = _run(None, n=3, size=8)
    verified = run_simulation(
        sites=sites,
        task=task,
        strategy=FedAvg(),
        rounds=1,
        seed=0,
        run_id=RunId("v"),
        fit_workflow=CkksWorkflow(backend=engine, verify_sum=True),
        max_workers=2,
    )
    np.testing.assert_allclose(verified.state.model["w"], plain.state.model["w"], atol=1e-5)

    # a deviating relay: site-01 is asked to decrypt the set holding site-00's ciphertexts only
    nodes = build_nodes(sites, task, ckks_backend=engine)
    seen: dict[str, object] = {}

    def cheat(msg: Message) -> Message:
        arrays = msg.payload.arrays
        if msg.payload.config.get("secagg.stage") == "ckks.decrypt" and "secagg_ckks_all" in arrays:
            every = unpack_blobs(arrays["secagg_ckks_all"], "t")
            per = int(msg.payload.config["ckks.per_site"])
            config = {**msg.payload.config, "ckks.contributors": 1}
            msg = replace(msg, payload=Payload(arrays={"secagg_ckks_all": pack_blobs(every[:per])}, config=config))
        reply = nodes[SiteId("site-01")].handle(msg)
        seen[str(msg.payload.config.get("secagg.stage"))] = reply.error
        return reply

    handlers = {s: (cheat if s == SiteId("site-01") else n.handle) for s, n in nodes.items()}
    with pytest.raises(NotEnoughSitesError, match="site-01"):
        run_simulation(
            sites=sites,
            task=task,
            strategy=FedAvg(),
            rounds=1,
            seed=0,
            run_id=RunId("c"),
            fit_workflow=CkksWorkflow(backend=engine, verify_sum=True),
            nodes={s: _Handler(h) for s, h in handlers.items()},
            max_workers=2,
        )
    assert "own ciphertexts are not in the sum" in str(seen["ckks.decrypt"])


def test_malformed_ciphertexts_fail_their_sender_only(engine):
    from dataclasses import replace

    sites = shift_sites(3)
    task = ShiftTask(size=8)
    nodes = build_nodes(sites, task, ckks_backend=engine)
    bad = SiteId("site-02")

    def garbles(msg: Message) -> Message:
        reply = nodes[bad].handle(msg)
        if msg.payload.config.get("secagg.stage") == "ckks.encrypt" and not reply.has_error:
            rec = reply.payload.arrays["ct"]
            junk = {"blob": np.random.default_rng(0).integers(0, 256, rec["blob"].size, dtype=np.uint8)}
            reply = replace(reply, payload=Payload(arrays={"ct": {**junk, "sizes": rec["sizes"]}}))
        return reply

    handlers = {s: (garbles if s == bad else n.handle) for s, n in nodes.items()}
    result = run_simulation(
        sites=sites,
        task=task,
        strategy=FedAvg(),
        rounds=1,
        seed=0,
        run_id=RunId("g"),
        fit_workflow=CkksWorkflow(backend=engine),
        nodes={s: _Handler(h) for s, h in handlers.items()},
        max_workers=2,
    )
    r = result.rounds[0]
    assert r.fit_metrics["ckks_sites"] == 2 and "ckks.encrypt reply from site-02" in r.failures[bad]
    expected = np.linspace(-1, 1, 8) + (1 * 1e-3 + 2 * 2e-3) / 3  # sites 0 and 1 only
    np.testing.assert_allclose(result.state.model["w"], expected, atol=1e-5)
