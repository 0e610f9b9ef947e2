"""examples/custom-task, pip-installed as a site would install it, is found, hashed and trained.

In simulation (``run_simulation``, ``fedcare simulate``) and in a rehearsal with real
processes over mutual TLS (``fedcare up``, the nodes see the installed package through
``PYTHONPATH``), where one site approves it by hash and the other through a reviewer's
signature and streams its DICOM folder.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import fedcare.cli.study  # noqa: F401  (registers simulate, up)
from fedcare.build.run import build_task
from fedcare.cli.app import app
from fedcare.data.streaming import write_dicom_folder
from fedcare.datasets.pneumonia import load_arrays, load_pneumonia
from fedcare.runtime.approval import generate_reviewer_key, sign_manifest
from fedcare.runtime.simulation import run_simulation
from fedcare.store import SqlStore
from fedcare.strategies import FedAvg
from fedcare.study.spec import load_study
from fedcare.study.toml import dump_toml
from fedcare.task_manifest import task_manifest
from fedcare.tasks import make_task, task_entries
from fedcare.types import RunId

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "custom-task"


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """``pip install`` the example package into a private folder (the built wheel's files, real metadata)."""
    target = tmp_path_factory.mktemp("site-packages")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


@pytest.fixture
def example_on_path(installed_example, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_example))
    yield installed_example
    for name in [m for m in sys.modules if m.split(".")[0] == "xray_resnet"]:
        del sys.modules[name]


@pytest.mark.slow
def test_installed_example_is_discovered_hashed_and_trains_in_simulation(example_on_path):
    entry = task_entries()["xray-resnet"]
    assert entry.source == "package xray-resnet 0.1.0"
    task = make_task("xray-resnet", channels=4, num_threads=1)
    manifest = task_manifest(task)
    assert "xray_resnet/__init__.py" in manifest.files and "fedcare/tasks/torch_adapter.py" in manifest.files
    assert Path(sys.modules["xray_resnet"].__file__).is_relative_to(example_on_path)  # the installed copy runs
    data = load_pneumonia(max_train_per_site=48)
    result = run_simulation(
        sites=data.sites,
        task=task,
        strategy=FedAvg(fit_config={"batch_size": 16, "local_epochs": 1}),
        rounds=2,
        seed=0,
        run_id=RunId("example"),
        max_workers=1,
    )
    assert len(result.rounds) == 2 and not any(r.failures for r in result.rounds)
    accuracy = [m["accuracy"] for m in result.rounds[-1].site_eval.values()]
    assert len(accuracy) == 3 and all(np.isfinite(accuracy))


@pytest.mark.slow
def test_the_example_packages_own_contract_test_passes(example_on_path):
    src = Path(__file__).resolve().parents[2] / "src"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        env={"PYTHONPATH": f"{example_on_path}:{src}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=600,
        cwd=example_on_path,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


#: The example as a study: small and deterministic (no dropout, no augmentation), so the
#: rehearsal's model can be compared with the simulation's.
STUDY = {
    "study": {"name": "example-xray", "seed": 2},
    "task": {
        "name": "xray-resnet",
        "params": {"channels": 4, "dropout": 0.0, "augment": "none", "num_threads": 1},
    },
    "data": {"target": "label", "columns": {"label": {"type": "category", "codes": [0, 1]}}},
    "strategy": {"name": "fedavg"},
    "federation": {"rounds": 2, "min_sites": 2, "round_timeout_s": 300},
    "fit": {"optimizer": "adam", "lr": 0.002, "batch_size": 16, "local_epochs": 1},
    "baseline": {"optimizer": "adam", "lr": 0.002, "batch_size": 16, "local_epochs": 1},
}


def _write_sites(folder: Path, digest: str) -> tuple[list[Path], list[Path]]:
    """Two hospitals with 32 training and 16 test X-rays each; the site files for simulate and for up.

    ``north`` holds a MedMNIST .npz file and approves the task by hash; ``south`` holds a
    DICOM folder, trusts a reviewer who signed the task, and streams its images in the
    rehearsal (``stream = true``; simulate decodes them into memory).
    """
    arrays = load_arrays()
    keys = folder / "keys"
    generate_reviewer_key(keys / "alice.key", keys / "alice.pub")
    np.savez_compressed(
        folder / "north.npz",
        train_images=arrays["train_images"][:32],
        train_labels=arrays["train_labels"][:32, None],
        test_images=arrays["test_images"][:16],
        test_labels=arrays["test_labels"][:16, None],
    )
    images = np.concatenate([arrays["train_images"][32:64], arrays["test_images"][16:32]])
    labels = np.concatenate([arrays["train_labels"][32:64], arrays["test_labels"][16:32]])
    table = write_dicom_folder(folder / "south-dicom", images, labels)
    frame = pd.read_csv(table)
    frame["split"] = ["train"] * 32 + ["test"] * 16
    frame.to_csv(table, index=False)
    north = {
        "site": {"id": "north"},
        "data": {"kind": "npz", "path": "north.npz"},
        "policy": {"studies": ["example-xray"], "approved_task_hashes": [digest]},
    }
    south = {
        "site": {"id": "south"},
        "data": {"kind": "dicom", "path": "south-dicom", "labels": "south-dicom/labels.csv", "size": [28, 28]},
        "policy": {
            "studies": ["example-xray"],
            "approved_task_hashes": [],
            "trusted_reviewer_keys": ["keys/alice.pub"],
            "task_signatures": ["approvals/xray-resnet.sig.json"],
        },
    }
    files = {"north": north, "south": south, "south-stream": {**south, "data": {**south["data"], "stream": True}}}
    for name, raw in files.items():
        (folder / f"{name}.toml").write_text(dump_toml(raw))
    return [folder / "north.toml", folder / "south.toml"], [folder / "north.toml", folder / "south-stream.toml"]


def _final_model(db: str, run: str) -> dict[str, np.ndarray]:
    store = SqlStore(db)
    try:
        runs = [r.id for r in store.list_runs() if run in r.id]
        assert len(runs) == 1, runs
        latest = store.latest_checkpoint(RunId(runs[0]))
        assert latest is not None and latest[0] == 2
        return latest[1].model
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.grpc
def test_installed_example_runs_in_simulate_and_in_fedcare_up(example_on_path, tmp_path):
    study_file = tmp_path / "study.toml"
    study_file.write_text(dump_toml(STUDY))
    manifest = task_manifest(build_task(load_study(study_file)))
    assert "xray_resnet/__init__.py" in manifest.files
    simulated_sites, rehearsed_sites = _write_sites(tmp_path, manifest.digest)
    signature = sign_manifest(manifest, tmp_path / "keys" / "alice.key", reviewer="Alice, radiology IT")
    (tmp_path / "approvals").mkdir()
    (tmp_path / "approvals" / "xray-resnet.sig.json").write_text(json.dumps(signature))
    sim_db = f"sqlite:///{tmp_path / 'sim.db'}"
    site_args = [arg for p in simulated_sites for arg in ("--site", str(p))]
    sim = CliRunner().invoke(
        app, ["simulate", "--study", str(study_file), *site_args, "--out", str(tmp_path / "sim"), "--db", sim_db]
    )
    assert sim.exit_code == 0, sim.output

    up_db = f"sqlite:///{tmp_path / 'up.db'}"
    site_args = [arg for p in rehearsed_sites for arg in ("--site", str(p))]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{example_on_path}", "OMP_NUM_THREADS": "1"}
    up = subprocess.run(
        [sys.executable, "-m", "fedcare", "up", "--study", str(study_file), *site_args, "--out", str(tmp_path / "up")]
        + ["--db", up_db, "--timeout", "600"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
    # each node ran the installed package (south streaming its DICOM folder) and its audit log
    # says which rule approved it; the streamed rehearsal trained the simulation's model
    rehearsal = tmp_path / "up" / "rehearsal"
    for site, rule in (("north", "approved_task_hashes"), ("south", "signed by reviewer")):
        events = [json.loads(line) for line in (rehearsal / f"audit-{site}.jsonl").read_text().splitlines()]
        record = next(e for e in events if e["event"] == "study")
        assert record["task"] == "xray-resnet" and record["task_hash"] == manifest.digest
        assert record["task_version"] == "0.1.0" and rule in record["approved_by"]
    simulated = _final_model(sim_db, "-fedavg")
    rehearsed = _final_model(up_db, "example-xray-")
    assert simulated.keys() == rehearsed.keys() and "head.weight" in simulated
    for name in simulated:
        np.testing.assert_allclose(rehearsed[name], simulated[name], rtol=1e-4, atol=1e-5, err_msg=name)
