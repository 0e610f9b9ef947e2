"""Quick quality check of every server strategy on Fed-Heart-Disease (FLamby's recipe).

For each strategy: FLamby's hyperparameters (``shared/reference_results.md``: batch 4,
100 local SGD steps per round, 15 rounds, per-strategy learning rates), over a few
seeds, with FLamby's per-centre normalisation (``--normalization site``, like for like)
or fedcare's federated statistics (``federated``). Prints a markdown table and, on its
last line, JSON. Usage::

    PYTHONPATH=src python benchmarks/strategies_heart.py --seeds 42 43 44 --normalization site
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from fedcare.datasets.heart_disease import load_heart_disease
from fedcare.experiment import ExperimentConfig, run_experiment
from fedcare.tasks import make_task

#: FLamby's published figure values (mean over the 4 client test sets, 5 seeds).
FLAMBY = {
    "fedavg": 0.6850,
    "fedprox": 0.6850,
    "scaffold": 0.6840,
    "cyclic": 0.7180,
    "fedadam": 0.7255,
    "fedyogi": 0.7314,
    "fedadagrad": 0.7314,
}
BASE = {"optimizer": "sgd", "batch_size": 4, "local_steps": 100}
#: strategy -> (client lr, strategy params): FLamby's config_heart_disease.json.
FLAMBY_RECIPES: dict[str, tuple[float, dict[str, Any]]] = {
    "fedavg": (0.001, {}),
    "fedprox": (0.001, {"mu": 0.01}),
    "scaffold": (0.001, {"server_lr": 1.0}),
    "cyclic": (0.01, {"deterministic_cycle": False}),
    "fedadam": (0.01, {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.999, "tau": 1e-8}),
    "fedyogi": (0.003162, {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.999, "tau": 1e-8}),
    "fedadagrad": (0.003162, {"server_lr": 0.316228, "beta1": 0.9, "beta2": 0.999, "tau": 1e-8}),
    "median": (0.001, {}),
    "trimmed_mean": (0.001, {"beta": 0.25}),
    "krum": (0.001, {"f": 0, "m": 3}),
}


def run(
    strategy: str, lr: float, params: dict[str, Any], seed: int, rounds: int, normalization: str
) -> dict[str, float]:
    """One federated run; returns site-mean and pooled-test accuracy."""
    data = load_heart_disease(normalization=normalization)  # type: ignore[arg-type]
    task = make_task("logreg", n_features=data.n_features)
    if strategy == "cyclic":
        params = {**params, "seed": seed}
    cfg = ExperimentConfig(
        rounds=rounds, seed=seed, strategy=strategy, strategy_params=params, fit_config={**BASE, "lr": lr}
    )
    summary = run_experiment(data, task, cfg, settings=("federated",))
    res = summary["settings"][strategy]
    return {"site_mean": res["site_mean"]["accuracy"], "pooled_test": res["pooled_test"]["accuracy"]}


def main() -> None:
    """Run the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--normalization", choices=["site", "federated"], default="site")
    ap.add_argument("--strategies", nargs="+", default=list(FLAMBY_RECIPES))
    ap.add_argument("--lr-scale", type=float, default=1.0, help="Multiply every client lr (tuning).")
    args = ap.parse_args()
    rows = {}
    print("| strategy | client lr | params | site mean acc | pooled-test acc | FLamby | s/run |")
    print("|---|---|---|---|---|---|---|")
    for name in args.strategies:
        lr, params = FLAMBY_RECIPES[name]
        lr *= args.lr_scale
        t0 = time.perf_counter()
        out = [run(name, lr, params, s, args.rounds, args.normalization) for s in args.seeds]
        dt = (time.perf_counter() - t0) / len(args.seeds)
        sm = np.array([o["site_mean"] for o in out])
        pt = np.array([o["pooled_test"] for o in out])
        rows[name] = {
            "lr": lr,
            "params": params,
            "site_mean": float(sm.mean()),
            "site_mean_std": float(sm.std()),
            "pooled_test": float(pt.mean()),
            "pooled_test_std": float(pt.std()),
            "flamby": FLAMBY.get(name),
            "s_per_run": dt,
        }
        ref = f"{FLAMBY[name]:.4f}" if name in FLAMBY else "-"
        print(
            f"| {name} | {lr:g} | {json.dumps(params)} | {sm.mean():.4f} ± {sm.std():.4f} | "
            f"{pt.mean():.4f} ± {pt.std():.4f} | {ref} | {dt:.1f} |",
            flush=True,
        )
    print(json.dumps({"seeds": args.seeds, "rounds": args.rounds, "normalization": args.normalization, "rows": rows}))


if __name__ == "__main__":
    main()
