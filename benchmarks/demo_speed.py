"""Whole-study speed: ``fedcare demo`` end to end, an earlier commit beside the working tree, in one run.

For each demo data set, ``python -m fedcare demo --dataset NAME`` runs in a fresh
process from two source trees: the tree at ``--before`` (a git revision of this
repository, extracted with ``git archive`` into a temporary folder) and the current
``src/``. Runs alternate (before, after, then after, before in the next pair...) so that both
see the same machine load; each is timed from process start to exit (imports, data preparation,
Local, Pooled, FedAvg, evaluation, report and store). The accuracy of every setting
(pooled test set) is read from each run's ``summary.json``, so a speed-up that changes
the results shows. Each run's CPU seconds (user + system, all threads) are reported
too: they depend far less on other processes' load than wall seconds do.

Prints a table, then one JSON object on its last line.

Usage::

    PYTHONPATH=src python benchmarks/demo_speed.py --before REV [--after REV]
        [--datasets heart-disease pneumonia] [--repeats 1] [--first-after 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def extract(rev: str, into: Path) -> Path:
    """The ``src/`` tree of ``rev`` under ``into``; returns the folder to put on PYTHONPATH."""
    archive = into / "src.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def one_run(src: Path, dataset: str, out: Path, timeout_s: float) -> dict[str, Any]:
    """Run the demo once from ``src``; wall seconds and each setting's pooled-test accuracy."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cpu0 = _children_cpu_s()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "fedcare", "demo", "--dataset", dataset, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    wall = time.perf_counter() - started
    cpu = _children_cpu_s() - cpu0
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"demo {dataset} from {src} failed ({done.returncode}): {tail}")
    summary = json.loads((out / "summary.json").read_text())
    accuracy = {name: s["pooled_test"].get("accuracy") for name, s in summary["settings"].items()}
    return {"wall_s": wall, "cpu_s": cpu, "load_average": os.getloadavg()[0], "accuracy": accuracy}


def _children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="git revision of the 'before' source tree")
    ap.add_argument("--after", default=None, help="git revision of the 'after' tree (default: the working tree)")
    ap.add_argument("--datasets", nargs="+", default=["heart-disease", "pneumonia"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--first-after", type=int, choices=(0, 1), default=0, help="1: the first pair runs 'after' first")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per demo run")
    args = ap.parse_args()
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.before], capture_output=True, text=True, check=True
    ).stdout.strip()
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedcare-demo-speed-") as tmp:
        Path(tmp, "before").mkdir()
        trees = {"before": extract(rev, Path(tmp, "before"))}
        if args.after:
            Path(tmp, "after").mkdir()
            trees["after"] = extract(args.after, Path(tmp, "after"))
        else:
            trees["after"] = ROOT / "src"
        for dataset in args.datasets:
            runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
            for k in range(args.repeats):
                order = ["before", "after"] if (k + args.first_after) % 2 == 0 else ["after", "before"]
                for which in order:  # before first, then after first: a load that drifts hits both
                    out = Path(tmp) / f"{dataset}-{which}-{k}"
                    runs[which].append(one_run(trees[which], dataset, out, args.timeout))
                    last = runs[which][-1]
                    print(
                        f"  {dataset:14} {which:6} run {k}: {last['wall_s']:7.1f} s, CPU {last['cpu_s']:6.1f} s, "
                        f"load {last['load_average']:4.1f}  accuracy {last['accuracy']}",
                        flush=True,
                    )
            before = statistics.median(r["wall_s"] for r in runs["before"])
            after = statistics.median(r["wall_s"] for r in runs["after"])
            pairs = [b["wall_s"] / a["wall_s"] for b, a in zip(runs["before"], runs["after"], strict=True)]
            rows.append(
                {
                    "dataset": dataset,
                    "before_s": before,
                    "after_s": after,
                    "speedup": before / after,
                    "pair_speedups": pairs,
                    "before_cpu_s": statistics.median(r["cpu_s"] for r in runs["before"]),
                    "after_cpu_s": statistics.median(r["cpu_s"] for r in runs["after"]),
                    "runs": runs,
                }
            )
    print(
        f"{'demo':14} {'before s':>9} {'after s':>9} {'speed-up':>9}  per pair  CPU s before / after (before = {rev})"
    )
    for row in rows:
        pairs = " ".join(f"{p:.2f}x" for p in row["pair_speedups"])
        print(
            f"{row['dataset']:14} {row['before_s']:9.1f} {row['after_s']:9.1f} {row['speedup']:8.2f}x  {pairs}"
            f"   {row['before_cpu_s']:.1f} / {row['after_cpu_s']:.1f}"
        )
    print(
        json.dumps(
            {
                "benchmark": "demo_speed",
                "before": rev,
                "load_average_before": load_before,
                "load_average_after": os.getloadavg()[0],
                "cpus": os.cpu_count(),
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
