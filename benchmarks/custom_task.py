"""The example task package (examples/custom-task) vs the built-in CNN on PneumoniaMNIST: one store, one report.

Both tasks run through their study files, as ``fedcare simulate --study`` runs them: the
example through its own ``examples/custom-task/study.toml`` (task ``xray-resnet``, found
through the ``fedcare.tasks`` entry point of the package, pip-installed into a temporary
folder as a site would install it), the built-in CNN through the shipped ``pneumonia``
study. The federated recipe is checked to be the same in both (data set and split,
strategy, rounds, sampling; each study keeps its own task and ``[fit]``); the training
seed is set per run. Each (task, seed) is one experiment of ONE store:
``xray-resnet-s<seed>`` and ``cnn-s<seed>`` (federated setting only: FedAvg over the
demo's three simulated hospitals; test set: the official 624-image MedMNIST v2 test
split, the union of the sites' test sets).

After the runs, the comparison report is written with ``fedcare report`` itself::

    fedcare report xray-resnet-s<first seed> --db URL --compare 'xray-resnet-s*' --compare 'cnn-s*'

so report.html and summary.json show every run of both tasks in the store per seed and
their mean ± sd per task. Seeds and tasks can run as separate invocations into the same
``--db`` (the report then covers all runs the store holds); ``--report-only`` writes it
without training.

Usage::

    PYTHONPATH=src python benchmarks/custom_task.py [--seeds 0 1 2] [--tasks both|example|builtin]
        [--db sqlite:///fedcare-out/custom-task/fedcare.db] [--out fedcare-out/custom-task]
        [--rounds N] [--report-only]

Prints one line per run and JSON on its last line (per-seed and mean ± sd figures read
back from the report's summary.json).
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "custom-task"
EXAMPLE_TASK, BUILTIN_TASK = "xray-resnet", "cnn"


def install_example() -> Path:
    """pip-install the example package into a temporary folder; return the folder (on sys.path)."""
    target = Path(tempfile.mkdtemp(prefix="fedcare-example-"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
        + [str(EXAMPLE)],
        check=True,
    )
    sys.path.insert(0, str(target))
    return target


def _recipe(study: Any) -> dict[str, Any]:
    """What must be equal between the two studies for a fair comparison."""
    fed = study.federation
    return {
        "dataset": study.data.dataset,
        "split_seed": study.data.split_seed,
        "strategy": study.strategy,
        "strategy_params": dict(study.strategy_params),
        "rounds": fed.rounds,
        "fraction_fit": fed.fraction_fit,
        "min_sites": fed.min_sites,
        "privacy": dict(study.privacy),
        "personalization": study.personalization.method,
    }


def _write_report(db: str, out: Path, first: str, target: Path | None) -> dict[str, Any]:
    """Run ``fedcare report FIRST --compare 'xray-resnet-s*' --compare 'cnn-s*'``; return its summary.json."""
    env = dict(os.environ)
    if target is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "fedcare", "report", first, "--db", db, "--out", str(out)]
    cmd += ["--compare", f"{EXAMPLE_TASK}-s*", "--compare", f"{BUILTIN_TASK}-s*"]
    subprocess.run(cmd, check=True, env=env)
    return json.loads((out / "summary.json").read_text())  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", choices=("both", "example", "builtin"), default="both")
    parser.add_argument("--out", type=Path, default=Path("fedcare-out") / "custom-task", help="store and report folder")
    parser.add_argument("--db", default=None, help="SQLAlchemy URL of the store (default: OUT/fedcare.db)")
    parser.add_argument("--study", type=Path, default=EXAMPLE / "study.toml", help="the example's study file")
    parser.add_argument("--rounds", type=int, default=None, help="override both studies' rounds (smoke runs)")
    parser.add_argument(
        "--round-timeout",
        type=float,
        default=3600.0,
        help="seconds a round waits for its sites (long: on a loaded machine a late site would be dropped)",
    )
    parser.add_argument("--report-only", action="store_true", help="write the report of the runs in the store")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    db = args.db or f"sqlite:///{(args.out / 'fedcare.db').resolve()}"
    target = None if args.report_only else install_example()

    from fedcare.simulate import simulate_study
    from fedcare.store import SqlStore
    from fedcare.study.builtin import resolve_study
    from fedcare.study.spec import load_study
    from fedcare.tasks import task_entries

    studies = {EXAMPLE_TASK: load_study(args.study), BUILTIN_TASK: resolve_study("pneumonia")}
    if args.rounds is not None:
        studies = {k: replace(s, federation=replace(s.federation, rounds=args.rounds)) for k, s in studies.items()}
    recipes = {k: _recipe(s) for k, s in studies.items()}
    if recipes[EXAMPLE_TASK] != recipes[BUILTIN_TASK]:
        raise SystemExit(f"the two studies' federated recipes differ: {recipes}")
    for key, study in studies.items():
        if study.task != key:
            raise SystemExit(f"{study.path or study.name}: task {study.task!r}, expected {key!r}")
    wanted = {"both": [EXAMPLE_TASK, BUILTIN_TASK], "example": [EXAMPLE_TASK], "builtin": [BUILTIN_TASK]}[args.tasks]
    seconds: dict[str, float] = {}
    load_before = os.getloadavg()[0]
    if not args.report_only:
        assert task_entries()[EXAMPLE_TASK].source.startswith("package xray-resnet")
        store = SqlStore(db)
        try:
            present = {r.experiment for r in store.list_runs()}
            for seed in args.seeds:
                for key in wanted:
                    experiment = f"{key}-s{seed}"
                    if experiment in present:
                        raise SystemExit(f"experiment {experiment} is already in {db}: use another --db or --out")
                    study = studies[key]
                    study = replace(
                        study,
                        seed=seed,
                        federation=replace(study.federation, round_timeout_s=args.round_timeout),
                    )
                    started = time.perf_counter()
                    summary = simulate_study(study, recorder=store, experiment_id=experiment, settings=("federated",))
                    seconds[experiment] = time.perf_counter() - started
                    (setting,) = [s for s, r in summary["settings"].items() if r.get("history")]
                    history = summary["settings"][setting]["history"]
                    failures = sum(len(r.get("failures", {})) for r in history)
                    if failures:
                        raise SystemExit(f"{experiment}: {failures} site failure(s) in the rounds; not a valid run")
                    res = summary["settings"][setting]["pooled_test"]
                    print(
                        f"{experiment} ({study.task}, {len(history)} rounds): accuracy {res['accuracy']:.3f} "
                        f"auc {res['auc']:.3f} ({seconds[experiment]:.0f} s, load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
        finally:
            store.close()

    store = SqlStore(db)
    try:
        names = {r.experiment for r in store.list_runs()}
    finally:
        store.close()
    example_runs = sorted(n for n in names if n and n.startswith(f"{EXAMPLE_TASK}-s"))
    if not example_runs:
        raise SystemExit(f"no {EXAMPLE_TASK}-s<seed> experiment in {db} yet: run --tasks example first")
    report_dir = args.out / "report"
    comp = _write_report(db, report_dir, example_runs[0], target)["comparison"]
    by_task = {g["task"]: g for g in comp["by_task"]}
    per_seed = {
        r["experiment"]: {"task": r["task"], "seed": r["seed"], "accuracy": r["accuracy"], "auc": r["auc"]}
        for r in comp["rows"]
    }
    for task in (EXAMPLE_TASK, BUILTIN_TASK):
        if task in by_task:
            g = by_task[task]
            print(
                f"{task} ({g['runs']} seeds {g['seeds']}): accuracy {g['accuracy']['mean']:.3f} ± "
                f"{g['accuracy']['std']:.3f}, AUC {g['auc']['mean']:.3f} ± {g['auc']['std']:.3f}"
            )
    both = EXAMPLE_TASK in by_task and BUILTIN_TASK in by_task
    print(f"report: {report_dir / 'report.html'}")
    print(
        json.dumps(
            {
                "benchmark": "custom_task",
                "store": db.split("@")[-1],
                "report": str(report_dir / "report.html"),
                "recipe": recipes[EXAMPLE_TASK],
                "fit": {k: dict(s.fit) for k, s in studies.items()},
                "task_params": {k: dict(s.task_params) for k, s in studies.items()},
                "runs": per_seed,
                "by_task": {
                    t: {"seeds": g["seeds"], "task_hash": g["task_hash"], "accuracy": g["accuracy"], "auc": g["auc"]}
                    for t, g in by_task.items()
                },
                "example_at_least_builtin_accuracy": by_task[EXAMPLE_TASK]["accuracy"]["mean"]
                >= by_task[BUILTIN_TASK]["accuracy"]["mean"]
                if both
                else None,
                "seconds_this_invocation": seconds,
                "load_average_before": load_before,
                "load_average_after": os.getloadavg()[0],
                "cpu_count": os.cpu_count(),
                "note": "shared machine (other jobs running)",
            }
        )
    )


if __name__ == "__main__":
    main()
