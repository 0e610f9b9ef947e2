"""A site approves a task by hash or by a trusted reviewer's signature; anything else is refused."""

import json

import numpy as np
import pytest

from fedcare.errors import ConfigError
from fedcare.runtime.approval import LISTED_RULE, generate_reviewer_key, load_task_approvals, sign_manifest
from fedcare.runtime.node import SiteNode
from fedcare.runtime.policy import SitePolicy
from fedcare.task import ArrayDataset, SiteData
from fedcare.task_manifest import task_manifest
from fedcare.tasks import make_task
from fedcare.types import Message, MessageKind, Payload, SiteId


@pytest.fixture
def keys(tmp_path):
    out = {}
    for who in ("alice", "mallory"):
        fp = generate_reviewer_key(tmp_path / f"{who}.key", tmp_path / f"{who}.pub")
        out[who] = (tmp_path / f"{who}.key", tmp_path / f"{who}.pub", fp)
    return out


def _sign(tmp_path, manifest, key, name="task.sig.json", reviewer="Alice"):
    path = tmp_path / name
    path.write_text(json.dumps(sign_manifest(manifest, key, reviewer=reviewer)))
    return path


def _fit(node, task_hash):
    model = node.task.init_model(np.random.default_rng(0))
    msg = Message(
        kind=MessageKind.FIT,
        run_id="r",
        round_no=1,
        site=SiteId("a"),
        payload=Payload(arrays={"model": model}, config={"task_hash": task_hash}),
    )
    return node.handle(msg)


def _node(task, approvals, hashes=frozenset()):
    data = ArrayDataset(np.ones((3, 1), np.float32), np.zeros(3))
    policy = SitePolicy(approved_task_hashes=frozenset(hashes), task_approvals=approvals)
    return SiteNode(site_id=SiteId("a"), task=task, data=SiteData(train=data, test=data), policy=policy)


def test_unapproved_then_approved_by_a_trusted_signature(demo_dist, keys, tmp_path):
    task = make_task("demo-task")
    manifest = task_manifest(task)
    refused = _fit(_node(task, load_task_approvals()), manifest.digest)
    assert refused.error == f"refused: task hash {manifest.digest} is not approved by this site"

    sig = _sign(tmp_path, manifest, keys["alice"][0])
    approvals = load_task_approvals(trusted_keys=[keys["alice"][1]], signatures=[sig])
    node = _node(task, approvals)
    assert not _fit(node, manifest.digest).has_error
    rule = node.policy.approval_rule(manifest.digest)
    assert rule == f"signed by reviewer {keys['alice'][2]} (Alice) in task.sig.json"


def test_listed_hash_is_its_own_rule(demo_dist):
    task = make_task("demo-task")
    digest = task_manifest(task).digest
    node = _node(task, load_task_approvals(hashes=[digest]), hashes={digest})
    assert node.policy.approval_rule(digest) == LISTED_RULE
    assert not _fit(node, digest).has_error


@pytest.mark.parametrize(
    "attack", ["untrusted key", "forged hash", "forged reviewer", "altered manifest", "revoked key"]
)
def test_bad_signatures_approve_nothing_and_say_why(demo_dist, keys, tmp_path, attack):
    task = make_task("demo-task")
    manifest = task_manifest(task)
    signer = keys["mallory"][0] if attack == "untrusted key" else keys["alice"][0]
    sig = _sign(tmp_path, manifest, signer)
    doc = json.loads(sig.read_text())
    if attack == "forged hash":  # a signature over another hash, relabelled
        doc["task_hash"] = "0" * 64
    elif attack == "forged reviewer":
        doc["reviewer"] = "Professor Somebody"
    elif attack == "altered manifest":
        doc["manifest"]["files"]["demo_task/weights.bin"] = "0" * 64
    sig.write_text(json.dumps(doc))
    revoked = [keys["alice"][2]] if attack == "revoked key" else []
    approvals = load_task_approvals(trusted_keys=[keys["alice"][1]], signatures=[sig], revoked_keys=revoked)
    assert approvals.rules == {}
    expected = {
        "untrusted key": "which this site does not trust",
        "forged hash": "does not verify",
        "forged reviewer": "does not verify",
        "altered manifest": "its manifest is not the signed task hash",
        "revoked key": "is revoked",
    }[attack]
    reply = _fit(_node(task, approvals), manifest.digest)
    assert reply.error.startswith(f"refused: task hash {manifest.digest} is not approved by this site")
    assert expected in reply.error


def test_removing_the_reviewer_key_withdraws_the_approval(demo_dist, keys, tmp_path):
    task = make_task("demo-task")
    sig = _sign(tmp_path, task_manifest(task), keys["alice"][0])
    assert load_task_approvals(trusted_keys=[keys["alice"][1]], signatures=[sig]).rules
    assert not load_task_approvals(trusted_keys=[keys["mallory"][1]], signatures=[sig]).rules


def test_updated_package_is_refused_and_the_refusal_names_what_changed(demo_dist, keys, tmp_path, reload_demo):
    old = task_manifest(make_task("demo-task"))
    sig = _sign(tmp_path, old, keys["alice"][0])
    # the package is updated under the same name
    (demo_dist.package / "weights.bin").write_bytes(b"\x07" * 16)
    (demo_dist.package / "augment.py").write_text("ROTATE = 15\n")
    demo_dist.set_version("1.1")
    reload_demo()
    task = make_task("demo-task")
    new = task_manifest(task)
    approvals = load_task_approvals(trusted_keys=[keys["alice"][1]], signatures=[sig])
    reply = _fit(_node(task, approvals), new.digest)
    assert reply.error == (
        f"refused: task hash {new.digest} is not approved by this site; the approved version 1.0 "
        f"({old.digest[:12]}) differs: modified demo_task/weights.bin; added demo_task/augment.py; version changed"
    )


def test_unreadable_key_is_a_config_error(tmp_path):
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(ConfigError, match=r"bad.pub: not a PEM public key"):
        load_task_approvals(trusted_keys=[tmp_path / "bad.pub"])


def test_keygen_refuses_to_overwrite(keys):
    key, pub, _ = keys["alice"]
    with pytest.raises(ConfigError, match="exists; refusing to overwrite"):
        generate_reviewer_key(key, pub)


def test_site_toml_trusts_reviewer_keys_and_reads_signatures(keys, tmp_path):
    from dataclasses import replace

    from fedcare.deploy.config import load_site_config
    from fedcare.deploy.node import site_node
    from fedcare.study.builtin import resolve_study

    heart = replace(resolve_study("heart-disease"), name="heart")

    manifest = task_manifest(make_task("logreg", n_features=13))
    _sign(tmp_path, manifest, keys["alice"][0], name="logreg.sig.json")
    site = tmp_path / "site.toml"
    site.write_text(
        '[site]\nname = "cleveland"\n'
        '[server]\naddress = "127.0.0.1:1"\nca = "ca.pem"\ncert = "c.pem"\nkey = "c.key"\n'
        '[policy]\nstudies = ["heart"]\napproved_task_hashes = []\n'
        'trusted_reviewer_keys = ["alice.pub"]\ntask_signatures = ["logreg.sig.json"]\n'
        '[data]\ndataset = "heart-disease"\n'
    )
    node = site_node(load_site_config(site), heart)
    assert node.task_hash == manifest.digest
    assert node.policy.approval_rule(node.task_hash).startswith(f"signed by reviewer {keys['alice'][2]}")
    site.write_text(
        site.read_text().replace("task_signatures", f'revoked_reviewer_keys = ["{keys["alice"][2]}"]\ntask_signatures')
    )
    node = site_node(load_site_config(site), heart)
    assert node.policy.approval_rule(node.task_hash) is None
    site.write_text(site.read_text().replace('"alice.pub"', '"missing.pub"'))
    with pytest.raises(ConfigError, match=r"site.toml \[policy\]: cannot read reviewer public key .*missing.pub"):
        load_site_config(site)


def test_a_hash_approved_site_keeps_the_manifest_to_name_what_changed(demo_dist, tmp_path, reload_demo):
    old = task_manifest(make_task("demo-task"))
    kept = tmp_path / "demo-task-1.0.manifest.json"
    kept.write_text(json.dumps(old.to_dict()))  # fedcare tasks show demo-task --json > ...
    (demo_dist.package / "__init__.py").write_text((demo_dist.package / "__init__.py").read_text() + "\n# v2\n")
    reload_demo()
    task = make_task("demo-task")
    new = task_manifest(task)
    approvals = load_task_approvals(hashes=[old.digest], manifests=[kept])
    reply = _fit(_node(task, approvals, hashes={old.digest}), new.digest)
    assert reply.error.endswith("differs: modified demo_task/__init__.py")
    kept.write_text("{}")
    with pytest.raises(ConfigError, match=r"manifest.json: not a fedcare-task-manifest/1 document"):
        load_task_approvals(manifests=[kept])
