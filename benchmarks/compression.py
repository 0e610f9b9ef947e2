"""Compressed updates: bytes per round and final accuracy, none / 8-bit / 4-bit / top-k + error feedback.

Runs FedAvg with each demo's recipe (heart disease: logistic regression, 4 hospitals;
chest X-ray: the small CNN, 3 simulated hospitals) once per codec with the same seed,
and reports the sites' upload per round (array bytes, what ``bytes_up`` records in the
store) and the global model's accuracy on the pooled test set. Prints a table and JSON
on its last line.

Usage::

    PYTHONPATH=src python benchmarks/compression.py [--datasets heart-disease pneumonia]
        [--heart-rounds 20] [--pneumonia-rounds 5] [--topk-fraction 0.01] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from fedcare.compression import Compression
from fedcare.data.federated import concat
from fedcare.demos import get_demo
from fedcare.runtime.simulation import run_simulation
from fedcare.strategies import make_strategy
from fedcare.types import RunId


def run(dataset: str, codec: Compression, rounds: int, seed: int) -> dict[str, float]:
    """One FedAvg run with ``codec``; its mean upload per round, final accuracy and wall time."""
    recipe = get_demo(dataset)
    data = recipe.load()
    task = recipe.make_task(data)
    test = concat([d.test for d in data.sites.values()])
    strategy = make_strategy("fedavg", fit_config={**recipe.config.fit_config, **codec.fit_config()})
    started = time.perf_counter()
    result = run_simulation(
        sites=data.sites, task=task, strategy=strategy, rounds=rounds, seed=seed, run_id=RunId("bench"), max_workers=2
    )
    seconds = time.perf_counter() - started
    up = [r.fit_metrics["bytes_up"] for r in result.rounds]
    return {
        "bytes_up_per_round": sum(up) / len(up),
        "accuracy": task.evaluate(result.state.model, test).metrics["accuracy"],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["heart-disease", "pneumonia"])
    parser.add_argument("--heart-rounds", type=int, default=20)
    parser.add_argument("--pneumonia-rounds", type=int, default=5, help="the demo runs 15; fewer keeps it short")
    parser.add_argument("--topk-fraction", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    codecs = {
        "none": Compression(),
        "q8": Compression(codec="q8"),
        "q4": Compression(codec="q4"),
        f"topk {args.topk_fraction:g} + EF": Compression(codec="topk", fraction=args.topk_fraction),
    }
    load = os.getloadavg()[0]
    out: dict[str, dict[str, dict[str, float]]] = {}
    head = ("dataset", "codec", "bytes up/round", "ratio", "accuracy", "Δ acc", "s")
    print("{:14s} {:16s} {:>15s} {:>7s} {:>9s} {:>7s} {:>6s}".format(*head))
    for dataset in args.datasets:
        rounds = args.heart_rounds if dataset == "heart-disease" else args.pneumonia_rounds
        rows = out[dataset] = {}
        for name, codec in codecs.items():
            rows[name] = row = run(dataset, codec, rounds, args.seed)
            base = rows["none"]
            row["ratio"] = base["bytes_up_per_round"] / row["bytes_up_per_round"]
            row["accuracy_change"] = row["accuracy"] - base["accuracy"]
            print(
                f"{dataset:14s} {name:16s} {row['bytes_up_per_round']:15.0f} {row['ratio']:6.2f}x "
                f"{row['accuracy']:9.4f} {row['accuracy_change']:+7.4f} {row['seconds']:6.1f}"
            )
    verdict = {
        d: {
            "q8_ratio": rows["q8"]["ratio"],
            "q8_loss_points": -100 * rows["q8"]["accuracy_change"],
            "q8_target_4x_at_1pt": rows["q8"]["ratio"] >= 4 and rows["q8"]["accuracy_change"] >= -0.01,
        }
        for d, rows in out.items()
    }
    print(json.dumps({"load_average_before": load, "results": out, "targets": verdict}))


if __name__ == "__main__":
    main()
