"""Chest X-ray quality benchmark: Local / Pooled / FedAvg on PneumoniaMNIST over 3 simulated sites.

Runs the ``fedcare demo --dataset pneumonia`` recipe for several training seeds (the site
split stays the demo's, seed 0), reports mean +- std over seeds of accuracy and AUC on the
official 624-image test set (the union of the sites' test sets) beside MedMNIST v2's
published numbers (Table 3), checks the issue's targets, writes a markdown table to
``benchmarks/results/pneumonia.md`` and prints JSON on its last line.

Usage::

    PYTHONPATH=src python benchmarks/pneumonia.py [--seeds 0 1 2] [--max-train-per-site N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fedcare.datasets.pneumonia import load_pneumonia
from fedcare.demos import get_demo
from fedcare.experiment import run_experiment

#: MedMNIST v2 Table 3, PneumoniaMNIST test set (see shared reference_results.md).
PUBLISHED = {
    "ResNet-18 (28)": (0.854, 0.944),
    "ResNet-50 (28)": (0.854, 0.948),
    "ResNet-18 (224)": (0.864, 0.956),
    "auto-sklearn": (0.855, 0.942),
    "AutoKeras": (0.878, 0.947),
    "Google AutoML Vision": (0.946, 0.991),
}
TARGET = "ResNet-18 (28)"
SETTINGS = ("local", "pooled", "fedavg")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=None, help="federated rounds (default: the demo's)")
    parser.add_argument("--max-train-per-site", type=int, default=None, help="smoke run on a subset")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pneumonia.md")
    args = parser.parse_args()

    recipe = get_demo("pneumonia")
    data = load_pneumonia(max_train_per_site=args.max_train_per_site)
    task = recipe.make_task(data)
    runs: dict[str, dict[str, list[float]]] = {
        s: {"accuracy": [], "auc": [], "site_mean_accuracy": []} for s in SETTINGS
    }
    durations: list[float] = []
    cpu_seconds: list[float] = []
    load_before = os.getloadavg()[0]
    for seed in args.seeds:
        cfg = replace(recipe.config, seed=seed, rounds=args.rounds or recipe.config.rounds)
        start, cpu_start = time.perf_counter(), time.process_time()
        summary = run_experiment(data, task, cfg)
        durations.append(time.perf_counter() - start)
        cpu_seconds.append(time.process_time() - cpu_start)
        for name in SETTINGS:
            res = summary["settings"][name]
            runs[name]["accuracy"].append(res["pooled_test"]["accuracy"])
            runs[name]["auc"].append(res["pooled_test"]["auc"])
            runs[name]["site_mean_accuracy"].append(res["site_mean"]["accuracy"])
        print(
            f"seed {seed}: "
            + "  ".join(f"{n} acc {runs[n]['accuracy'][-1]:.3f} auc {runs[n]['auc'][-1]:.3f}" for n in SETTINGS)
            + f"  ({durations[-1]:.0f} s wall, {cpu_seconds[-1]:.0f} s CPU)",
            flush=True,
        )
    load_after = os.getloadavg()[0]

    def ms(values: list[float]) -> tuple[float, float]:
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    stats = {n: {k: ms(v) for k, v in runs[n].items()} for n in SETTINGS}
    ref_acc, ref_auc = PUBLISHED[TARGET]
    fed_acc, pooled_acc = stats["fedavg"]["accuracy"][0], stats["pooled"]["accuracy"][0]
    checks = {
        "fedavg_within_2_points_of_pooled_accuracy": pooled_acc - fed_acc <= 0.02,
        "fedavg_accuracy_at_least_resnet18_28": fed_acc >= ref_acc,
        "fedavg_auc_at_least_resnet18_28": stats["fedavg"]["auc"][0] >= ref_auc,
    }
    n = len(args.seeds)
    lines = [
        f"# PneumoniaMNIST: Local / Pooled / FedAvg over 3 simulated sites ({n} seeds: {args.seeds})",
        "",
        "Test set: the official MedMNIST v2 test split (624 images, 62.5 % pneumonia) = union of the sites' "
        "test sets. Mean ± std over training seeds (split seed 0). Local: mean over the three local models.",
        "",
        "| method | ACC (pooled test) | AUC (pooled test) | ACC (mean over sites) |",
        "|---|---|---|---|",
    ]
    for name in SETTINGS:
        s = stats[name]
        lines.append(
            f"| fedcare {name} (small CNN) | {s['accuracy'][0]:.3f} ± {s['accuracy'][1]:.3f} | "
            f"{s['auc'][0]:.3f} ± {s['auc'][1]:.3f} | {s['site_mean_accuracy'][0]:.3f} ± "
            f"{s['site_mean_accuracy'][1]:.3f} |"
        )
    for method, (acc, auc) in PUBLISHED.items():
        lines.append(f"| MedMNIST v2 Table 3: {method}, centralised | {acc:.3f} | {auc:.3f} | — |")
    lines += [
        "",
        "Checks: " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()) + ".",
        "",
        f"Wall time per seed (Local + Pooled + FedAvg, demo recipe): {', '.join(f'{d:.0f} s' for d in durations)}; "
        f"process CPU time (all threads) {', '.join(f'{c:.0f} s' for c in cpu_seconds)}, an upper bound of the "
        "wall time on 2 idle cores "
        f"on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch "
        f"{torch.__version__}; 1-min load average {load_before:.1f} before, {load_after:.1f} after "
        "(the cores were shared with other jobs when the load exceeds the core count).",
        "",
        "Command: `PYTHONPATH=src python benchmarks/pneumonia.py"
        + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0, 1, 2] else "")
        + (f" --rounds {args.rounds}" if args.rounds else "")
        + (f" --max-train-per-site {args.max_train_per_site}" if args.max_train_per_site else "")
        + "`",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.max_train_per_site is None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    result = {
        "benchmark": "pneumonia",
        "seeds": args.seeds,
        "max_train_per_site": args.max_train_per_site,
        "settings": {n: {k: {"mean": m, "std": s} for k, (m, s) in v.items()} for n, v in stats.items()},
        "published": {k: {"accuracy": a, "auc": u} for k, (a, u) in PUBLISHED.items()},
        "checks": checks,
        "seconds_per_seed": durations,
        "cpu_seconds_per_seed": cpu_seconds,
        "loadavg_1min": [load_before, load_after],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
