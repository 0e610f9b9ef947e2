"""examples/custom-task, pip-installed as a site would install it, is found, hashed and trained.

The rehearsal with real processes (`fedcare up`) reuses the ``installed_example`` fixture
once `fedcare up` exists: start the nodes with ``PYTHONPATH`` = the fixture's folder.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedcare.datasets.pneumonia import load_pneumonia
from fedcare.runtime.simulation import run_simulation
from fedcare.strategies import FedAvg
from fedcare.task_manifest import task_manifest
from fedcare.tasks import make_task, task_entries
from fedcare.types import RunId

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom-task"


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
