"""Heart disease quality over 5 seeds: Local vs Pooled vs FedAvg, beside FLamby.

Runs the demo's recipe (``fedcare.demos.DEMOS["heart-disease"]``) for seeds 0-4 and
prints mean ± std of the mean-over-sites and pooled-test accuracy/AUC, beside FLamby's
published numbers (``fedcare.report.reference.FLAMBY``). Checks issue 2's targets:
FedAvg's pooled-test accuracy within 2 points of Pooled and above the Local mean.

Usage: python benchmarks/heart_fedavg.py [--seeds 5] [--rounds 20]
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from fedcare.demos import get_demo
from fedcare.experiment import run_experiment
from fedcare.report.reference import FLAMBY


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    recipe = get_demo("heart-disease")
    data = recipe.load()
    task = recipe.make_task(data)
    rows: dict[str, dict[str, list[float]]] = {}
    started = time.perf_counter()
    for seed in range(args.seeds):
        cfg = replace(recipe.config, seed=seed, rounds=args.rounds or recipe.config.rounds)
        summary = run_experiment(data, task, cfg)
        for name, res in summary["settings"].items():
            r = rows.setdefault(name, {})
            for scope in ("site_mean", "pooled_test"):
                for metric in ("accuracy", "auc"):
                    r.setdefault(f"{scope}.{metric}", []).append(res[scope][metric])
    elapsed = time.perf_counter() - started
    stats = {name: {k: (float(np.mean(v)), float(np.std(v))) for k, v in r.items()} for name, r in rows.items()}
    ref = FLAMBY["heart-disease"]
    lines = [
        f"Fed-Heart-Disease, {args.seeds} seeds, recipe {recipe.config.fit_config}, "
        f"{args.rounds or recipe.config.rounds} rounds ({elapsed:.0f} s)",
        "",
        "| setting | mean over sites acc | pooled test acc | pooled test AUC "
        "| FLamby mean over sites | FLamby pooled test |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in stats.items():
        fl = ref.get(name) or ref.get("local (mean of 4)" if name == "local" else name, {})

        def ms(key: str, s: dict[str, tuple[float, float]] = s) -> str:
            return f"{s[key][0]:.3f} ± {s[key][1]:.3f}"

        lines.append(
            f"| {name} | {ms('site_mean.accuracy')} | {ms('pooled_test.accuracy')} | {ms('pooled_test.auc')} "
            f"| {fl.get('site_mean', float('nan')):.3f} | {fl.get('pooled_test', float('nan')):.3f} |"
        )
    fed, pooled, local = stats["fedavg"], stats["pooled"], stats["local"]
    checks = {
        "fedavg_within_2_points_of_pooled": fed["pooled_test.accuracy"][0] >= pooled["pooled_test.accuracy"][0] - 0.02,
        "fedavg_above_local_mean": fed["pooled_test.accuracy"][0] > local["pooled_test.accuracy"][0],
    }
    lines += ["", f"targets: {checks}"]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "heart_fedavg.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")
    print(
        json.dumps(
            {"benchmark": "heart_fedavg", "seeds": args.seeds, "stats": stats, "targets": checks, "seconds": elapsed}
        )
    )


if __name__ == "__main__":
    main()
