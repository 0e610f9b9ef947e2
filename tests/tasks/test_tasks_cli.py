import json

import numpy as np
from typer.testing import CliRunner

import fedcare.cli.tasks  # noqa: F401  (registers the commands)
from fedcare.cli.app import app
from fedcare.runtime.approval import load_task_approvals
from fedcare.task import task_hash
from fedcare.tasks import make_task

runner = CliRunner()


def test_list_shows_every_task_with_hash_version_and_source(demo_dist):
    out = runner.invoke(app, ["tasks", "list"], terminal_width=250)
    assert out.exit_code == 0, out.output
    rows = {line.split()[0]: line for line in out.output.splitlines()[1:]}
    assert task_hash(make_task("cnn")) in rows["cnn"] and "built-in" in rows["cnn"]
    assert "needs parameters" in rows["logreg"]
    assert task_hash(make_task("demo-task")) in rows["demo-task"] and "package demo-task 1.0" in rows["demo-task"]


def test_show_prints_what_the_hash_covers(demo_dist):
    out = runner.invoke(app, ["tasks", "show", "demo-task", "-p", "size=2", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["params"] == {"size": 2} and "demo_task/weights.bin" in doc["files"]
    table = runner.invoke(app, ["tasks", "show", "logreg", "-p", "n_features=3"])
    assert table.exit_code == 0 and "fedcare/tasks/torch_common.py" in table.output
    assert task_hash(make_task("logreg", n_features=3)) in table.output
    bad = runner.invoke(app, ["tasks", "show", "nope"])
    assert bad.exit_code == 2 and "unknown task 'nope'" in bad.output


def test_keygen_and_sign_make_an_approval_a_site_accepts(tmp_path, demo_dist):
    assert runner.invoke(app, ["tasks", "keygen", "--out", str(tmp_path), "--name", "alice"]).exit_code == 0
    sig = tmp_path / "demo.sig.json"
    out = runner.invoke(
        app, ["tasks", "sign", "demo-task", "--key", str(tmp_path / "alice.key"), "--out", str(sig), "--reviewer", "A"]
    )
    assert out.exit_code == 0, out.output
    approvals = load_task_approvals(trusted_keys=[tmp_path / "alice.pub"], signatures=[sig])
    assert task_hash(make_task("demo-task")) in approvals.rules
    again = runner.invoke(app, ["tasks", "sign", "demo-task", "--key", str(tmp_path / "alice.key"), "--out", str(sig)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output


def test_new_writes_a_package_whose_task_is_found_and_meets_the_contract(tmp_path, installer):
    out = runner.invoke(app, ["tasks", "new", "ward-risk", "--out", str(tmp_path)])
    assert out.exit_code == 0, out.output
    root = tmp_path / "ward-risk"
    assert 'ward-risk = "ward_risk:make_task"' in (root / "pyproject.toml").read_text()
    assert "check_task" in (root / "tests" / "test_contract.py").read_text()
    source = (root / "src" / "ward_risk" / "__init__.py").read_text()
    installer(dist="ward-risk", module="ward_risk", source=source, entry="ward-risk = ward_risk:make_task")
    from fedcare.task import ArrayDataset, SiteData
    from fedcare.testing import check_task

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 13)).astype(np.float32)
    data = SiteData(ArrayDataset(x[:30], (x[:30, 0] > 0).astype(np.float32)), ArrayDataset(x[30:], np.zeros(10)))
    report = check_task("ward-risk", data=data, strategies=["fedavg"], sites=3)
    assert {"fit is sound", "strategy fedavg", "SecAgg+", "record-level DP-SGD"} <= set(report.passed)
    again = runner.invoke(app, ["tasks", "new", "ward-risk", "--out", str(tmp_path)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    bad = runner.invoke(app, ["tasks", "new", "Ward Risk", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "lowercase letters" in bad.output
