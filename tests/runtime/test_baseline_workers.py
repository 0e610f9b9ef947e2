"""Local and Pooled baselines train side by side (one per core) and give the sequential run's models."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fedcare.experiment as experiment
from fedcare.datasets.heart_disease import load_heart_disease
from fedcare.experiment import ExperimentConfig, baseline_workers, run_experiment
from fedcare.tasks import make_task

BASELINE = {"optimizer": "adam", "lr": 0.001, "batch_size": 16, "local_epochs": 2}


def test_a_task_with_one_torch_thread_trains_baselines_one_per_core_with_the_sequential_results(monkeypatch):
    data = load_heart_disease()
    task = make_task("logreg", n_features=data.n_features)
    assert task.num_threads == 1
    assert baseline_workers(task) >= 1
    cfg = ExperimentConfig(rounds=1, seed=4, baseline_config=BASELINE)
    threads: set[str] = set()
    train = experiment._train_alone

    def spy(*args, **kwargs):
        threads.add(threading.current_thread().name)
        return train(*args, **kwargs)

    monkeypatch.setattr(experiment, "_train_alone", spy)
    monkeypatch.setattr(experiment, "baseline_workers", lambda task: 2)
    side_by_side = run_experiment(data, task, cfg, settings=("local", "pooled"))
    assert len(threads) == 2 and all(t.startswith("fedcare-baseline") for t in threads)
    monkeypatch.setattr(experiment, "baseline_workers", lambda task: 1)
    sequential = run_experiment(data, task, cfg, settings=("local", "pooled"))
    for name in ("local", "pooled"):
        assert side_by_side["settings"][name]["per_site"] == sequential["settings"][name]["per_site"]
        assert side_by_side["settings"][name]["pooled_test"] == pytest.approx(
            sequential["settings"][name]["pooled_test"]
        )


def test_a_task_that_declares_no_threads_trains_one_baseline_at_a_time():
    class Plain:
        pass

    assert baseline_workers(Plain()) == 1
    odd = Plain()
    odd.num_threads = True  # not a thread count
    assert baseline_workers(odd) == 1
    np.testing.assert_equal(baseline_workers(make_task("cnn", num_threads=64)), 1)
