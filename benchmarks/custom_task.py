"""The example task package (examples/custom-task, a residual CNN) vs the built-in CNN on PneumoniaMNIST.

The example package is pip-installed into a temporary folder (as a site would install
it) and found through its ``fedcare.tasks`` entry point. Both tasks train with FedAvg
over the demo's three simulated hospitals with the demo's federated recipe (15 rounds,
one local epoch of Adam, lr 1e-3, batch 64) for each seed; reported: accuracy and AUC on
the official 624-image test set (the union of the sites' test sets), mean +- std over
seeds, and wall time.

Usage::

    PYTHONPATH=src python benchmarks/custom_task.py [--seeds 0 1 2] [--rounds 15] [--channels 8]
        [--augment affine] [--head avg] [--tasks both|example|builtin]

Prints one line per run and JSON on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom-task"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--channels", type=int, default=8, help="example's first-stage width (8: ~ the CNN's MACs)")
    parser.add_argument("--pos-weight", type=float, default=0.35, help="example's pneumonia-class loss weight")
    parser.add_argument("--augment", default="affine", help="example's augmentation: affine, shift-flip or none")
    parser.add_argument("--head", default="avg", help="example's head: avg (global pooling) or flatten")
    parser.add_argument(
        "--tasks",
        choices=("both", "example", "builtin"),
        default="both",
        help="which tasks to run (seeds of one task can run as separate processes)",
    )
    parser.add_argument(
        "--round-timeout",
        type=float,
        default=3600.0,
        help="seconds a round waits for its sites (long: on a loaded machine a late site would be dropped)",
    )
    parser.add_argument("--max-train-per-site", type=int, default=None, help="smoke run on a subset")
    args = parser.parse_args()

    target = Path(tempfile.mkdtemp(prefix="fedcare-example-"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
        + [str(EXAMPLE)],
        check=True,
    )
    sys.path.insert(0, str(target))

    from fedcare.datasets.pneumonia import load_pneumonia
    from fedcare.demos import get_demo
    from fedcare.experiment import run_experiment
    from fedcare.study.spec import study_from_experiment
    from fedcare.tasks import make_task, task_entries

    assert task_entries()["xray-resnet"].source.startswith("package xray-resnet")
    recipe = get_demo("pneumonia")
    data = load_pneumonia(max_train_per_site=args.max_train_per_site)
    example = f"xray-resnet ({args.channels} channels, {args.augment}, {args.head} head)"
    tasks = {}
    if args.tasks in ("both", "builtin"):
        tasks["built-in cnn (16 channels)"] = recipe.make_task(data)
    if args.tasks in ("both", "example"):
        tasks[example] = make_task(
            "xray-resnet",
            channels=args.channels,
            pos_weight=args.pos_weight,
            augment=args.augment,
            head=args.head,
            num_threads=1,
        )
    runs: dict[str, dict[str, list[float]]] = {n: {"accuracy": [], "auc": [], "seconds": []} for n in tasks}
    load_before = os.getloadavg()[0]
    for seed in args.seeds:
        for name, task in tasks.items():
            cfg = replace(recipe.config, seed=seed, rounds=args.rounds)
            study = study_from_experiment(cfg, data.name)
            study = replace(study, federation=replace(study.federation, round_timeout_s=args.round_timeout))
            started = time.perf_counter()
            summary = run_experiment(data, task, cfg, settings=("federated",), study=study)
            failures = sum(len(r.get("failures", {})) for r in summary["settings"]["fedavg"].get("history", []))
            if failures:
                raise SystemExit(f"seed {seed} {name}: {failures} site failure(s) in the rounds; not a valid run")
            seconds = time.perf_counter() - started
            res = summary["settings"]["fedavg"]["pooled_test"]
            runs[name]["accuracy"].append(res["accuracy"])
            runs[name]["auc"].append(res["auc"])
            runs[name]["seconds"].append(seconds)
            print(
                f"seed {seed} {name}: accuracy {res['accuracy']:.3f} auc {res['auc']:.3f} ({seconds:.0f} s)", flush=True
            )

    def ms(values: list[float]) -> dict[str, float]:
        return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}

    stats = {n: {k: ms(v) for k, v in r.items()} for n, r in runs.items()}
    names = list(tasks)
    for n in names:
        s = stats[n]
        print(
            f"{n}: accuracy {s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f}, "
            f"AUC {s['auc']['mean']:.3f} ± {s['auc']['std']:.3f}, {s['seconds']['mean']:.0f} s per run"
        )
    print(
        json.dumps(
            {
                "benchmark": "custom_task",
                "seeds": args.seeds,
                "rounds": args.rounds,
                "max_train_per_site": args.max_train_per_site,
                "runs": runs,
                "stats": stats,
                "example_params": {
                    "channels": args.channels,
                    "pos_weight": args.pos_weight,
                    "augment": args.augment,
                    "head": args.head,
                },
                "example_at_least_builtin_accuracy": stats[names[1]]["accuracy"]["mean"]
                >= stats[names[0]]["accuracy"]["mean"]
                if len(names) == 2
                else None,
                "load_average_before": load_before,
                "load_average_after": os.getloadavg()[0],
                "cpu_count": os.cpu_count(),
                "note": "shared machine (other jobs running)",
            }
        )
    )


if __name__ == "__main__":
    main()
