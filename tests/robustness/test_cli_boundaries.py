"""Commands check everything before any training or write; a refused command leaves the disk as it was."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fedcare.cli.deploy  # noqa: F401  (registers the commands)
from fedcare.cli import demo, study  # noqa: F401  (registers the commands)
from fedcare.cli.app import INTERNAL_ERROR_EXIT, app, main
from fedcare.store import SqlStore

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "heart-study"
runner = CliRunner()


def _run_toml(tmp_path: Path, fit: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(
        f"""name = "t"
rounds = 2
[sites]
cleveland = "{EXAMPLES / "cleveland.csv"}"
hungary = "{EXAMPLES / "hungary.csv"}"
[data]
target = "num"
positive = [1, 2, 3, 4]
exclude = ["slope", "ca", "thal"]
missing = ["?", ""]
[task]
name = "logreg"
[federated]
strategy = "fedavg"
fit = {{ {fit} }}
[baseline]
optimizer = "adam"
lr = 0.001
batch_size = 4
local_epochs = 1
"""
    )
    return path


def _tree(path: Path) -> dict[str, str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture
def store(tmp_path):
    """An existing store with one earlier run's tables, whose bytes must not change."""
    url = f"sqlite:///{tmp_path / 'store' / 'fedcare.db'}"
    (tmp_path / "store").mkdir()
    SqlStore(url).close()
    return url, tmp_path / "store"


def test_a_fit_config_that_cannot_train_fails_before_anything_is_written(tmp_path, store):
    url, folder = store
    before = _tree(folder)
    config = _run_toml(tmp_path, 'optimizer = "sgd", lr = 0.05, batch_size = 0, local_epochs = 1')
    out = tmp_path / "out"
    result = runner.invoke(app, ["simulate", "--config", str(config), "--out", str(out), "--db", url])
    assert result.exit_code == 2, result.output
    assert "federated.fit" in result.output and "batch_size" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists() and _tree(folder) == before  # store and output folder exactly as before


def test_an_invalid_privacy_budget_fails_before_the_baselines_train(tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["demo", "--site-budget", "-1", "--rounds", "1", "--out", str(out)])
    assert result.exit_code == 2 and "privacy budget" in result.output and "-1" in result.output
    assert "baseline" not in result.output  # refused before any training
    assert not out.exists() and not (tmp_path / "fedcare.db").exists()


def test_an_output_folder_with_files_is_not_overwritten_silently(tmp_path, store):
    url, folder = store
    out = tmp_path / "earlier-run"
    out.mkdir()
    (out / "report.html").write_text("an earlier run's report")
    before, store_before = _tree(out), _tree(folder)
    config = _run_toml(tmp_path, 'optimizer = "sgd", lr = 0.05, batch_size = 4, local_epochs = 1')
    result = runner.invoke(app, ["simulate", "--config", str(config), "--out", str(out), "--db", url])
    assert result.exit_code == 2 and "not empty" in result.output and "--force" in result.output
    assert _tree(out) == before and _tree(folder) == store_before


@pytest.mark.parametrize("what", ["out-is-a-file", "db-under-a-file"])
def test_unusable_out_or_db_is_refused_up_front(tmp_path, what):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    config = _run_toml(tmp_path, 'optimizer = "sgd", lr = 0.05, batch_size = 4, local_epochs = 1')
    if what == "out-is-a-file":
        args, code, words = ["--out", str(blocker)], 2, "is a file"
    else:
        args, code, words = ["--out", str(tmp_path / "o"), "--db", f"sqlite:///{blocker / 'x.db'}"], 7, "is a file"
    result = runner.invoke(app, ["simulate", "--config", str(config), *args])
    assert result.exit_code == code and words in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_certs_issue_refuses_to_replace_a_site_key_without_force(tmp_path):
    ca = tmp_path / "ca"
    assert runner.invoke(app, ["certs", "init", "--study", "s", "--out", str(ca)]).exit_code == 0
    assert runner.invoke(app, ["certs", "issue", "site-a", "--ca-dir", str(ca)]).exit_code == 0
    key = (ca / "site-a.key").read_bytes()
    again = runner.invoke(app, ["certs", "issue", "site-a", "--ca-dir", str(ca)])
    assert again.exit_code == 2 and "already exists" in again.output and "--force" in again.output
    assert (ca / "site-a.key").read_bytes() == key
    forced = runner.invoke(app, ["certs", "issue", "site-a", "--ca-dir", str(ca), "--force"])
    assert forced.exit_code == 0 and (ca / "site-a.key").read_bytes() != key


def test_a_bug_is_one_line_and_a_log_never_a_traceback(tmp_path, monkeypatch, capsys):
    import fedcare.store.audit as audit

    def broken(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(audit, "verify_audit_log", broken)
    monkeypatch.setattr(sys, "argv", ["fedcare", "audit", "verify", str(tmp_path / "a.jsonl")])
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(SystemExit) as ended:
        main()
    assert ended.value.code == INTERNAL_ERROR_EXIT
    err = capsys.readouterr().err
    assert err.count("\n") <= 2 and "Traceback" not in err
    assert "internal error: KeyError" in err and "see log" in err
    (log,) = tmp_path.glob("fedcare-error-*.log")
    assert "Traceback" in log.read_text() and "oops" in log.read_text()
