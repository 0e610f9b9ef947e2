"""Peer-to-peer rounds: the sites unmask and average themselves, the coordinator only relays."""

from dataclasses import replace

import numpy as np
import pytest
from tests.conftest import ShiftTask, shift_sites

from fedcare.errors import ConfigError, NotEnoughSitesError
from fedcare.runtime.policy import SitePolicy
from fedcare.runtime.simulation import build_nodes, run_simulation
from fedcare.secure.encoding import FixedPointCodec
from fedcare.secure.errors import ModelDivergenceError
from fedcare.secure.p2p import PeerToPeerFit
from fedcare.secure.p2p_wire import MODEL_RECORD, model_digest
from fedcare.secure.workflow import SecAggPlusWorkflow
from fedcare.strategies import CoordinateMedian, FedAvg
from fedcare.types import MessageKind, Payload, RunId, SiteId

RUN = RunId("p2p")


def _run(workflow, *, n=4, rounds=3, nodes=None, policies=None, strategy=None, min_sites=1, size=16):
    sites = shift_sites(n)
    task = ShiftTask(size=size)
    return run_simulation(
        sites=sites,
        task=task,
        strategy=strategy or FedAvg(),
        rounds=rounds,
        seed=0,
        run_id=RUN,
        fit_workflow=workflow,
        nodes=nodes if nodes is not None else build_nodes(sites, task, policies),
        min_sites=min_sites,
        max_workers=2,
    )


def _nodes(n=4, size=16, policies=None):
    return build_nodes(shift_sites(n), ShiftTask(size=size), policies)


def _intercept(node, fn):
    """Route ``node``'s instructions through ``fn(message, handle)`` (a dropout, a deviating site)."""
    inner = node.handle
    node.handle = lambda message: fn(message, inner)


def _stage(message):
    return message.payload.config.get("secagg.stage")


def test_sites_reach_fedavgs_model_and_hold_identical_models_after_every_round():
    codec = FixedPointCodec()
    plain = _run(None)
    masked = _run(SecAggPlusWorkflow(codec=codec))
    nodes = _nodes()
    workflow = PeerToPeerFit(codec=codec)
    p2p = _run(workflow, nodes=nodes)
    # every round: all four sites reported one digest, and it is recorded
    assert sorted(workflow.digests) == [1, 2, 3]
    for r, digests in workflow.digests.items():
        assert len(digests) == 4 and len(set(digests.values())) == 1, r
        assert p2p.rounds[r - 1].fit_metrics["p2p_sites"] == 4
        assert p2p.rounds[r - 1].fit_metrics["num_examples"] == masked.rounds[r - 1].fit_metrics["num_examples"] == 10
    # the sites' copies are identical and are the model of the last digest
    copies = [node.site_state[RUN][MODEL_RECORD] for node in nodes.values()]
    assert {model_digest(c) for c in copies} == {workflow.agreed}
    # the same model as SecAgg+ with a coordinator (same codec), bit for bit ...
    np.testing.assert_array_equal(copies[0]["w"], masked.state.model["w"])
    np.testing.assert_array_equal(p2p.state.model["w"], copies[0]["w"])  # released at the end, checked
    # ... and as plain FedAvg within the fixed-point bound: one error_bound per round (the update
    # of this task does not depend on the model, so the rounding errors only add up)
    gap = np.abs(p2p.state.model["w"].astype(np.float64) - plain.state.model["w"]).max()
    assert 0 < gap <= 3 * codec.error_bound
    # sites evaluated their own copy; the per-round evaluation matches plain FedAvg's
    for a, b in zip(p2p.rounds, plain.rounds, strict=True):
        assert a.eval_metrics["loss"] == pytest.approx(b.eval_metrics["loss"], abs=1e-4)


def test_the_coordinator_sends_no_model_after_the_first_round_and_sees_no_share_in_clear():
    nodes = _nodes(n=3)
    seen: list = []
    for node in nodes.values():
        _intercept(node, lambda m, h: (seen.append(m), h(m))[1])
    replies: list = []
    for node in nodes.values():
        _intercept(node, lambda m, h: (lambda r: (replies.append(r), r)[1])(h(m)))
    _run(PeerToPeerFit(), n=3, nodes=nodes)
    with_model = {(m.round_no, m.kind, _stage(m)) for m in seen if "model" in m.payload.arrays}
    assert with_model == {(1, MessageKind.SECAGG, "masked_input")}  # the public initial model, once
    assert all(not m.payload.arrays for m in seen if m.kind is MessageKind.EVALUATE)
    unmask = [r for r in replies if _stage(r) == "p2p.unmask"]
    assert unmask and all(set(r.payload.arrays) == {"p2p.bundle"} for r in unmask)
    # the shares of the unmask stage travel only inside AES-GCM boxes (12-byte nonce + 16-byte tag)
    assert all(len(box) > 28 for r in unmask for box in r.payload.arrays["p2p.bundle"].values())


def test_a_site_dropping_after_sharing_is_tolerated_and_falls_out_of_sync():
    nodes = _nodes()

    def drop_in_round_2(message, handle):
        if message.round_no == 2 and _stage(message) == "masked_input":
            return message.reply(error="gone")
        return handle(message)

    _intercept(nodes[SiteId("site-03")], drop_in_round_2)
    workflow = PeerToPeerFit()
    result = _run(workflow, nodes=nodes)
    r2, r3 = result.rounds[1], result.rounds[2]
    assert r2.fit_metrics["secagg_dropped"] == 1 and r2.fit_metrics["secagg_survivors"] == 3
    assert "out of sync" in r3.failures[SiteId("site-03")]
    assert sorted(workflow.digests[3]) == ["site-00", "site-01", "site-02"]
    # its pairwise masks were removed by the others: the three survivors agree with SecAgg+ over the same drop
    masked_nodes = _nodes()
    _intercept(masked_nodes[SiteId("site-03")], lambda m, h: m.reply(error="gone") if m.round_no >= 2 else h(m))
    masked = _run(SecAggPlusWorkflow(), nodes=masked_nodes)
    np.testing.assert_array_equal(result.state.model["w"], masked.state.model["w"])


def test_dropping_below_the_threshold_after_masking_fails_the_round_with_a_clear_error():
    def lose_unmask(message, handle):
        return message.reply(error="gone") if _stage(message) == "p2p.unmask" else handle(message)

    nodes = _nodes(n=3)  # threshold 2 of 3
    _intercept(nodes[SiteId("site-02")], lose_unmask)
    ok = _run(PeerToPeerFit(), n=3, nodes=nodes, rounds=1)  # one of three lost: 2 boxes >= threshold
    assert ok.rounds[0].fit_metrics["secagg_survivors"] == 3 and SiteId("site-02") in ok.rounds[0].failures
    nodes = _nodes(n=3)
    for s in ("site-01", "site-02"):
        _intercept(nodes[SiteId(s)], lose_unmask)
    with pytest.raises(NotEnoughSitesError, match=r"1 site\(s\) sent their shares, threshold 2"):
        _run(PeerToPeerFit(), n=3, nodes=nodes, rounds=1)


def test_a_site_whose_model_diverges_is_detected():
    nodes = _nodes(n=3)

    def wrong_digest(message, handle):
        reply = handle(message)
        if _stage(message) == "p2p.aggregate" and message.round_no == 2:
            config = {**reply.payload.config, "p2p.digest": "0" * 64}
            return replace(reply, payload=Payload(arrays=reply.payload.arrays, config=config))
        return reply

    _intercept(nodes[SiteId("site-01")], wrong_digest)
    with pytest.raises(
        ModelDivergenceError, match=r"round 2: the sites' models disagree .*: site-00, site-02; 0+: site-01"
    ):
        _run(PeerToPeerFit(), n=3, nodes=nodes)
    # a copy altered between rounds is refused by its own site before training, and left out
    nodes = _nodes()

    def tamper(message, handle):
        if message.round_no == 2 and _stage(message) == "masked_input":
            memory = nodes[SiteId("site-00")].site_state[RUN]
            memory[MODEL_RECORD] = {"w": memory[MODEL_RECORD]["w"] + np.float32(1)}
        return handle(message)

    _intercept(nodes[SiteId("site-00")], tamper)
    result = _run(PeerToPeerFit(), nodes=nodes)
    assert "out of sync: its model" in result.rounds[1].failures[SiteId("site-00")]
    assert result.rounds[1].fit_metrics["secagg_survivors"] == 3


def test_refuses_strategies_that_need_individual_updates_and_sites_can_require_peer_to_peer():
    with pytest.raises(ConfigError, match="cannot run peer-to-peer"):
        _run(PeerToPeerFit(), strategy=CoordinateMedian(), rounds=1)
    strict = {SiteId("site-00"): SitePolicy(require_peer_to_peer=True)}
    for workflow in (None, SecAggPlusWorkflow()):
        r = _run(workflow, policies=strict, rounds=1).rounds[0]
        assert "refused" in r.failures[SiteId("site-00")]
    assert not _run(PeerToPeerFit(), policies=strict, rounds=1).rounds[0].failures


def test_study_file_selects_peer_to_peer_and_the_report_and_card_name_it(tmp_path):
    import tomllib
    from pathlib import Path

    from fedcare.build.run import build_run, build_task, protection_of
    from fedcare.release.sharing import _protection
    from fedcare.report.html import round_protection
    from fedcare.study.site import load_site
    from fedcare.study.spec import parse_study

    raw = tomllib.loads((Path(__file__).resolve().parents[2] / "examples" / "heart-study" / "study.toml").read_text())
    study = parse_study({**raw, "secure_aggregation": {"mode": "p2p", "clip": 2.0}}, where="t")
    assert parse_study(study.describe(), where="t").hash == study.hash
    plan = build_run(study, build_task(study, n_features=14))
    assert isinstance(plan.fit_workflow, PeerToPeerFit) and plan.fit_workflow.codec.clip_range == 2.0
    assert protection_of(plan) == "p2p-secagg+" == plan.describe()["protection"]
    assert plan.fit_workflow.relay == "all"
    summed = parse_study({**raw, "secure_aggregation": {"mode": "p2p", "relay": "sum"}}, where="t")
    assert build_run(summed, plan.task).fit_workflow.relay == "sum"
    with pytest.raises(ConfigError, match="relay applies only to mode = 'p2p'"):
        build_run(parse_study({**raw, "secure_aggregation": {"relay": "sum"}}, where="t"), plan.task)
    sampled = {**raw, "federation": {**raw.get("federation", {}), "fraction_fit": 0.5}}
    with pytest.raises(ConfigError, match="fraction_fit = 1.0"):
        build_run(parse_study({**sampled, "secure_aggregation": {"mode": "p2p"}}, where="t"), plan.task)
    assert _protection(["advertise_keys", "share_keys", "masked_input", "p2p.unmask", "p2p.aggregate"]) == "p2p-secagg+"
    assert round_protection({"p2p_sites": 3.0, "secagg_survivors": 3.0}).startswith("peer-to-peer")
    from fedcare.release.card import _sharing_html

    card = _sharing_html(
        {
            "parameters": {"shared": {"values": 16, "entries": ["w"]}},
            "rounds": [
                {
                    "round": 1,
                    "sites": ["a"],
                    "secure_aggregation": True,
                    "protection": "p2p-secagg+",
                    "differential_privacy": {},
                }
            ],
        },
        {},
    )
    assert (
        "relayed to the other sites each round" in card
        and "peer-to-peer, SecAgg+ masks, coordinator relay only" in card
    )
    path = tmp_path / "a.toml"
    path.write_text('[site]\nid = "a"\n[data]\nkind = "csv"\npath = "a.csv"\n[policy]\nrequire_peer_to_peer = true\n')
    assert load_site(path).policy.require_peer_to_peer


def test_a_site_refuses_a_relay_that_alters_its_masked_update_or_a_sealed_box():
    nodes = _nodes(n=3)

    def altered(message, handle):
        if _stage(message) == "p2p.aggregate":
            arrays = {k: dict(v) for k, v in message.payload.arrays.items()}
            if message.site == "site-00":
                arrays["p2p.masked"]["site-00"] = arrays["p2p.masked"]["site-00"] + np.uint32(1)
            else:
                box = arrays["p2p.bundle"]["site-00"].copy()
                box[-1] ^= 1
                arrays["p2p.bundle"]["site-00"] = box
            message = replace(message, payload=replace(message.payload, arrays=arrays))
            errors[message.site] = handle(message).error
            return message.reply(error=errors[message.site])
        return handle(message)

    errors: dict = {}
    for node in nodes.values():
        _intercept(node, altered)
    with pytest.raises(NotEnoughSitesError, match="no site reported"):
        _run(PeerToPeerFit(), n=3, nodes=nodes, rounds=1)
    assert "its own masked update is missing from the relayed ones or altered" in errors["site-00"]
    assert all("failed authentication" in errors[s] for s in ("site-01", "site-02"))


def test_a_relay_that_sends_the_sum_of_the_masked_vectors_gives_the_same_model_with_one_vector_down():
    def drop(message, handle):  # site-03 drops after sharing in round 2: its masks must still cancel
        if message.round_no == 2 and _stage(message) == "masked_input":
            return message.reply(error="gone")
        return handle(message)

    results, vectors = {}, {}
    for relay in ("all", "sum"):
        nodes = _nodes()
        _intercept(nodes[SiteId("site-03")], drop)
        seen: list = []
        for node in nodes.values():
            _intercept(node, lambda m, h, seen=seen: (seen.append(m), h(m))[1])
        results[relay] = _run(PeerToPeerFit(relay=relay), nodes=nodes)
        vectors[relay] = {len(m.payload.arrays["p2p.masked"]) for m in seen if _stage(m) == "p2p.aggregate"}
    np.testing.assert_array_equal(results["sum"].state.model["w"], results["all"].state.model["w"])
    assert vectors == {"all": {4, 3}, "sum": {1}}
    with pytest.raises(ConfigError, match="relay must be"):
        PeerToPeerFit(relay="gossip")
