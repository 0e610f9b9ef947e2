"""Chest X-ray quality benchmark: Local / Pooled / FedAvg on PneumoniaMNIST over 3 simulated sites.

Runs the ``fedcare demo --dataset pneumonia`` recipe for several training seeds (the site
split stays the demo's, seed 0), reports mean +- std over seeds of accuracy and AUC on the
official 624-image test set (the union of the sites' test sets) beside MedMNIST v2's
published numbers (Table 3), checks the issue's targets, writes a markdown table to
``benchmarks/results/pneumonia.md`` and prints JSON on its last line.

``--precision fp32 bf16`` trains the CNN in each listed arithmetic (the task parameter
``precision``) for every seed, one after the other in the same process, so that the two
can be compared on the same seeds and machine; the default is the shipped study's.

Usage::

    PYTHONPATH=src python benchmarks/pneumonia.py [--seeds 0 1 2] [--precision fp32 bf16]
        [--max-train-per-site N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcare.build.run import build_task
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
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=["fp32", "bf16", "auto"],
        default=None,
        help="CNN arithmetic(s) (default: the study's)",
    )
    parser.add_argument("--max-train-per-site", type=int, default=None, help="smoke run on a subset")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "pneumonia.md")
    args = parser.parse_args()

    recipe = get_demo("pneumonia")
    assert recipe.study is not None
    data = load_pneumonia(max_train_per_site=args.max_train_per_site)
    shipped = str(recipe.study.task_params.get("precision", "fp32"))
    precisions: list[str] = args.precision or [shipped]
    tasks = {
        p: build_task(replace(recipe.study, task_params={**recipe.study.task_params, "precision": p}))
        for p in precisions
    }
    runs: dict[str, dict[str, dict[str, list[float]]]] = {
        p: {s: {"accuracy": [], "auc": [], "site_mean_accuracy": []} for s in SETTINGS} for p in precisions
    }
    durations: dict[str, list[float]] = {p: [] for p in precisions}
    cpu_seconds: dict[str, list[float]] = {p: [] for p in precisions}
    load_before = os.getloadavg()[0]
    for seed in args.seeds:
        cfg = replace(recipe.config, seed=seed, rounds=args.rounds or recipe.config.rounds)
        for precision in precisions:
            start, cpu_start = time.perf_counter(), time.process_time()
            summary = run_experiment(data, tasks[precision], cfg)
            durations[precision].append(time.perf_counter() - start)
            cpu_seconds[precision].append(time.process_time() - cpu_start)
            got = runs[precision]
            for name in SETTINGS:
                res = summary["settings"][name]
                got[name]["accuracy"].append(res["pooled_test"]["accuracy"])
                got[name]["auc"].append(res["pooled_test"]["auc"])
                got[name]["site_mean_accuracy"].append(res["site_mean"]["accuracy"])
            print(
                f"seed {seed} {precision}: "
                + "  ".join(f"{n} acc {got[n]['accuracy'][-1]:.3f} auc {got[n]['auc'][-1]:.3f}" for n in SETTINGS)
                + f"  ({durations[precision][-1]:.0f} s wall, {cpu_seconds[precision][-1]:.0f} s CPU)",
                flush=True,
            )
    load_after = os.getloadavg()[0]

    def ms(values: list[float]) -> tuple[float, float]:
        return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    stats = {p: {n: {k: ms(v) for k, v in runs[p][n].items()} for n in SETTINGS} for p in precisions}
    checked = shipped if shipped in precisions else precisions[0]
    ref_acc, ref_auc = PUBLISHED[TARGET]
    fed_acc, pooled_acc = stats[checked]["fedavg"]["accuracy"][0], stats[checked]["pooled"]["accuracy"][0]
    checks = {
        "fedavg_within_2_points_of_pooled_accuracy": pooled_acc - fed_acc <= 0.02,
        "fedavg_accuracy_at_least_resnet18_28": fed_acc >= ref_acc,
        "fedavg_auc_at_least_resnet18_28": stats[checked]["fedavg"]["auc"][0] >= ref_auc,
    }
    n = len(args.seeds)
    lines = [
        f"# PneumoniaMNIST: Local / Pooled / FedAvg over 3 simulated sites ({n} seeds: {args.seeds})",
        "",
        "Test set: the official MedMNIST v2 test split (624 images, 62.5 % pneumonia) = union of the sites' "
        "test sets. Mean ± std over training seeds (split seed 0). Local: mean over the three local models. "
        f"The shipped study trains in {shipped}.",
        "",
        "| method | ACC (pooled test) | AUC (pooled test) | ACC (mean over sites) |",
        "|---|---|---|---|",
    ]
    for precision in precisions:
        for name in SETTINGS:
            st = stats[precision][name]
            lines.append(
                f"| fedcare {name} (small CNN, {precision}) | {st['accuracy'][0]:.3f} ± {st['accuracy'][1]:.3f} | "
                f"{st['auc'][0]:.3f} ± {st['auc'][1]:.3f} | {st['site_mean_accuracy'][0]:.3f} ± "
                f"{st['site_mean_accuracy'][1]:.3f} |"
            )
    for method, (acc, auc) in PUBLISHED.items():
        lines.append(f"| MedMNIST v2 Table 3: {method}, centralised | {acc:.3f} | {auc:.3f} | — |")
    paired: dict[str, Any] = {}
    if "fp32" in precisions and "bf16" in precisions:
        paired = {
            name: [b - f for b, f in zip(runs["bf16"][name]["accuracy"], runs["fp32"][name]["accuracy"], strict=True)]
            for name in SETTINGS
        }
        lines += [
            "",
            "bf16 − fp32 accuracy per seed (points): "
            + "; ".join(f"{name} " + ", ".join(f"{100 * d:+.2f}" for d in paired[name]) for name in SETTINGS)
            + ".",
        ]
    timing = "; ".join(
        f"{p}: wall {', '.join(f'{d:.0f} s' for d in durations[p])}, "
        f"CPU {', '.join(f'{c:.0f} s' for c in cpu_seconds[p])}"
        for p in precisions
    )
    lines += [
        "",
        f"Checks ({checked}): " + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in checks.items()) + ".",
        "",
        f"Time per seed (Local + Pooled + FedAvg, demo recipe; process CPU time over all threads) {timing}; "
        f"on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch "
        f"{torch.__version__}; 1-min load average {load_before:.1f} before, {load_after:.1f} after "
        "(the cores were shared with other jobs when the load exceeds the core count).",
        "",
        "Command: `PYTHONPATH=src python benchmarks/pneumonia.py"
        + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0, 1, 2] else "")
        + (f" --precision {' '.join(precisions)}" if args.precision else "")
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
        "precisions": precisions,
        "settings": {
            p: {n: {k: {"mean": m, "std": sd} for k, (m, sd) in v.items()} for n, v in by_setting.items()}
            for p, by_setting in stats.items()
        },
        "bf16_minus_fp32_accuracy": paired,
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
