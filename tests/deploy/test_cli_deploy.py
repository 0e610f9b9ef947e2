"""`fedcare certs`, config errors and `fedcare doctor` against a live server on 127.0.0.1."""

from __future__ import annotations

import os
import stat
from dataclasses import replace

import numpy as np
import pytest
from cryptography import x509
from tests.deploy.deploy_helpers import free_port, write_toml
from typer.testing import CliRunner

import fedcare.cli.deploy  # noqa: F401  (registers the commands)
from fedcare.cli.app import app
from fedcare.deploy.config import load_server_config, load_site_config
from fedcare.deploy.doctor import run_doctor
from fedcare.deploy.node import site_node
from fedcare.errors import ConfigError, PolicyError
from fedcare.privacy.accounting import Mechanism, PrivacyCost
from fedcare.study.builtin import resolve_study
from fedcare.task import task_hash
from fedcare.tasks import make_task
from fedcare.transport.grpc_server import GrpcChannel, StudyInfo
from fedcare.transport.tls import TlsFiles
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId

runner = CliRunner()
#: The shipped heart-disease study under the name these sites opt in to.
HEART = replace(resolve_study("heart-disease"), name="heart")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    assert runner.invoke(app, ["certs", "init", "--study", "heart", "--out", str(root / "ca")]).exit_code == 0
    for args in (["hub", "--kind", "server", "--host", "127.0.0.1"], ["cleveland"], ["hungary"]):
        result = runner.invoke(app, ["certs", "issue", *args, "--ca-dir", str(root / "ca")])
        assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["certs", "init", "--study", "other", "--out", str(root / "other")]).exit_code == 0
    assert runner.invoke(app, ["certs", "issue", "cleveland", "--ca-dir", str(root / "other")]).exit_code == 0
    return root


def test_certs_keys_are_private_and_names_are_identities(certs):
    for key in ("ca/ca.key", "ca/hub.key", "ca/cleveland.key"):
        assert stat.S_IMODE(os.stat(certs / key).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((certs / "ca/cleveland.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "cleveland"
    again = runner.invoke(app, ["certs", "init", "--study", "heart", "--out", str(certs / "ca")])
    assert again.exit_code == 2 and "refusing to replace the study CA" in again.output


def test_config_errors_name_file_and_key(tmp_path):
    path = write_toml(
        tmp_path / "site.toml",
        {"site": {"name": "a"}, "server": {"address": "x:1"}, "policy": {}, "data": {"dataset": "heart-disease"}},
    )
    with pytest.raises(ConfigError, match=r"site.toml: \[coordinator\] needs ca, cert, key"):
        load_site_config(path)
    path = write_toml(
        tmp_path / "site.toml",
        {
            "site": {"name": "a"},
            "server": {"address": "x:1", "ca": "a", "cert": "b", "key": "c"},
            "policy": {"approved_task_hashes": []},
            "data": {"dataset": "heart-disease"},
        },
    )
    with pytest.raises(ConfigError, match=r"site.toml: policy.studies must name at least one study"):
        load_site_config(path)
    path = write_toml(
        tmp_path / "site.toml",
        {
            "site": {"name": "a"},
            "server": {"address": "x:1", "ca": "a", "cert": "b", "key": "c"},
            "policy": {"studies": ["s"], "approved_task_hashes": ["<64 hex digits>"]},
            "data": {"dataset": "heart-disease"},
        },
    )
    with pytest.raises(ConfigError, match=r"'<64 hex digits>' is not a 64-digit hex sha256 .*fedcare tasks list"):
        load_site_config(path)
    path = write_toml(
        tmp_path / "server.toml",
        {"server": {"ca": "a", "cert": "b", "key": "c", "allowed_sites": []}, "study": {"name": "s"}},
    )
    with pytest.raises(ConfigError, match=r"the \[study\] table moved to its own study file"):
        load_server_config(path)
    path = write_toml(tmp_path / "server.toml", {"server": {"ca": "a", "cert": "b", "key": "c", "allowed_sites": []}})
    with pytest.raises(ConfigError, match="'allowed_sites' must name at least one site"):
        load_server_config(path)


def _site_toml(tmp_path, certs, port, *, ca="ca", studies=("heart",), approved=None):
    digest = task_hash(make_task("logreg", n_features=13))
    return write_toml(
        tmp_path / f"site-{ca}-{port}.toml",
        {
            "site": {"name": "cleveland"},
            "server": {
                "address": f"127.0.0.1:{port}",
                "ca": str(certs / ca / "ca.pem"),
                "cert": str(certs / ca / "cleveland.pem"),
                "key": str(certs / ca / "cleveland.key"),
            },
            "policy": {"studies": list(studies), "approved_task_hashes": [approved or digest]},
            "data": {"dataset": "heart-disease"},
        },
    )


@pytest.fixture
def server(certs):
    task = make_task("logreg", n_features=13)
    channel = GrpcChannel(
        listen="127.0.0.1:0",
        tls=TlsFiles(certs / "ca/ca.pem", certs / "ca/hub.pem", certs / "ca/hub.key"),
        allowed_sites=["cleveland"],
        study=StudyInfo("heart", "run-1", task.name, task_hash(task)),
    )
    yield channel
    channel.close()


@pytest.mark.grpc
def test_doctor_passes_every_step_against_a_live_server(tmp_path, certs, server):
    checks = run_doctor(load_site_config(_site_toml(tmp_path, certs, server.port)))
    assert [c.step for c in checks] == ["files", "name resolution", "tcp", "tls", "protocol", "task", "clock"]
    assert all(c.ok for c in checks), checks
    assert server.sites() == []  # the doctor never joins


@pytest.mark.grpc
@pytest.mark.parametrize(
    ("case", "step", "advice"),
    [
        ("closed-port", "tcp", "firewall"),
        ("other-ca", "tls", "not from this study's CA"),
        ("not-opted-in", "protocol", "add it to [policy] studies"),
        ("unapproved", "task", "approved_task_hashes"),
    ],
)
def test_doctor_says_which_step_fails_and_what_to_do(tmp_path, certs, server, case, step, advice):
    port = free_port() if case == "closed-port" else server.port
    kwargs = {
        "other-ca": {"ca": "other"},
        "not-opted-in": {"studies": ("another",)},
        "unapproved": {"approved": "0" * 64},
    }.get(case, {})
    checks = run_doctor(load_site_config(_site_toml(tmp_path, certs, port, **kwargs)), timeout_s=3)
    failed = checks[-1]
    assert not failed.ok and failed.step == step, checks
    assert advice in failed.advice
    assert all(c.ok for c in checks[:-1])


@pytest.mark.grpc
def test_doctor_cli_exit_code(tmp_path, certs, server):
    ok = runner.invoke(app, ["doctor", "--config", str(_site_toml(tmp_path, certs, server.port))])
    assert ok.exit_code == 0, ok.output
    assert "all checks passed" in ok.output
    bad = runner.invoke(app, ["doctor", "--config", str(_site_toml(tmp_path, certs, free_port()))])
    assert bad.exit_code == 8 and "failed at step: tcp" in bad.output


def test_site_toml_carries_the_privacy_and_secure_aggregation_rules(tmp_path, certs):
    path = _site_toml(tmp_path, certs, 1)
    text = path.read_text().replace(
        "[policy]\n", "[policy]\nmax_epsilon = 3.0\ndelta = 1e-6\nrequire_secure_aggregation = true\nmin_peers = 3\n"
    )
    path.write_text(text)
    cfg = load_site_config(path)
    node = site_node(cfg, HEART)
    task = node.task
    policy = node.policy
    assert (policy.max_epsilon, policy.delta, policy.require_secure_aggregation, policy.min_peers) == (
        3.0,
        1e-6,
        True,
        3,
    )
    assert policy.studies == frozenset({"heart"}) and task_hash(task) in policy.approved_task_hashes
    # a plain (not securely aggregated) fit is refused by the deployed node itself
    message = Message(
        MessageKind.FIT,
        RunId("run-1"),
        1,
        SiteId("cleveland"),
        Payload(arrays={"model": task.init_model(np.random.default_rng(0))}, config={"task_hash": task_hash(task)}),
    )
    reply = node.handle(message)
    assert reply.error is not None and "only under secure aggregation" in reply.error
    path.write_text(text.replace("min_peers = 3", "min_peers = 0"))
    with pytest.raises(ConfigError, match=r"policy.min_peers must be an integer >= 1, got 0"):
        load_site_config(path)


def test_a_deployed_sites_privacy_budget_survives_a_restart(tmp_path, certs):
    path = _site_toml(tmp_path, certs, 1)
    path.write_text(path.read_text().replace("[policy]\n", "[policy]\nmax_epsilon = 2.0\n"))
    cost = PrivacyCost(mechanism=Mechanism.DPSGD, noise_multiplier=2.0, sample_rate=0.1, steps=10)
    node = site_node(load_site_config(path), HEART)
    node.privacy.ledger.charge(run_id="run-1", round_no=1, costs=[cost], max_epsilon=2.0)
    spent = node.privacy.ledger.spent()
    assert 0 < spent < 2.0
    restarted = site_node(load_site_config(path), HEART)  # a new process reads the same ledger
    assert restarted.privacy.ledger.spent() == pytest.approx(spent)
    with pytest.raises(PolicyError, match="budget"):
        for round_no in range(2, 50):
            restarted.privacy.ledger.charge(run_id="run-2", round_no=round_no, costs=[cost], max_epsilon=2.0)
    assert (tmp_path / "fedcare-site" / "privacy-cleveland.db").exists()


def test_a_deployed_sites_memory_and_audit_log_are_its_own_and_configurable(tmp_path, certs):
    path = _site_toml(tmp_path, certs, 1)
    assert load_site_config(path).audit_log == tmp_path / "fedcare-site" / "audit-cleveland.jsonl"  # one per site
    node = site_node(load_site_config(path), HEART)
    assert node.memory_files is not None and node.memory_files.folder == tmp_path / "fedcare-site" / "memory-cleveland"
    path.write_text(path.read_text().replace("[site]\n", '[site]\nmemory_dir = "kept"\n'))
    node = site_node(load_site_config(path), HEART)
    assert node.memory_files is not None and node.memory_files.folder == tmp_path / "kept"
