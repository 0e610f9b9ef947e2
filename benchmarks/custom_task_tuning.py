"""Choosing the example task's configuration on the validation split (never the test set).

Each variant of ``examples/custom-task`` (given as ``name:key=value,key=value``; task
parameters, and ``fit.KEY=VALUE`` to change the study's ``[fit]``, e.g. ``fit.local_epochs=2``) trains
with FedAvg over the demo's three simulated hospitals with the demo's federated recipe
(15 rounds, one local epoch of Adam per round, lr 1e-3, batch 64); the final global
model is scored on PneumoniaMNIST's official validation split (524 images, held by no
site): accuracy, AUC, and balanced accuracy (mean of sensitivity and specificity, which
does not depend on the share of pneumonia: 74 % in the validation split, 62.5 % in the
test split). The built-in CNN is scored the same way as the yardstick. The test split is not
looked at here: ``benchmarks/custom_task.py`` reports it for the chosen configuration.

Usage::

    PYTHONPATH=src python benchmarks/custom_task_tuning.py --seeds 0 \\
        --variant base:channels=8,pos_weight=0.35,augment=shift-flip \\
        --variant affine:channels=8,pos_weight=0.35,augment=affine

Prints one line per run and JSON on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from custom_task import install_example  # a sibling script: benchmarks/ is sys.path[0]


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _variant(text: str) -> tuple[str, dict[str, object]]:
    name, _, rest = text.partition(":")
    params = {k: _value(v) for k, v in (kv.split("=", 1) for kv in rest.split(",") if kv)}
    return name, params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--variant", action="append", default=[], help="name:key=value,... (example task params)")
    parser.add_argument("--no-builtin", action="store_true", help="skip the built-in CNN yardstick")
    args = parser.parse_args()

    install_example()  # the package, as a site installs it (benchmarks/custom_task.py)

    from fedcare.datasets.pneumonia import load_pneumonia, load_validation
    from fedcare.demos import get_demo
    from fedcare.runtime.simulation import run_simulation
    from fedcare.strategies import FedAvg
    from fedcare.tasks import make_task
    from fedcare.tasks.logreg import binary_metrics
    from fedcare.types import RunId

    recipe = get_demo("pneumonia")
    data = load_pneumonia()
    val = load_validation()
    tasks = {} if args.no_builtin else {"built-in cnn": recipe.make_task(data)}
    fits: dict[str, dict[str, object]] = {n: {} for n in tasks}
    for text in args.variant:
        name, params = _variant(text)
        fits[name] = {k.removeprefix("fit."): v for k, v in params.items() if k.startswith("fit.")}
        task_params = {k: v for k, v in params.items() if not k.startswith("fit.")}
        tasks[name] = make_task("xray-resnet", num_threads=1, **task_params)
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in tasks}
    load_before = os.getloadavg()[0]
    for seed in args.seeds:
        for name, task in tasks.items():
            started = time.perf_counter()
            result = run_simulation(
                sites=data.sites,
                task=task,
                strategy=FedAvg(fit_config={**recipe.config.fit_config, **fits[name]}),
                rounds=args.rounds,
                seed=seed,
                run_id=RunId(f"tune-{name}-{seed}"),
                round_timeout_s=3600.0,  # a loaded machine slows rounds; a dropped site would change the run
            )
            if any(r.failures for r in result.rounds):
                raise SystemExit(f"seed {seed} {name}: a site failed in some round; not a valid run")
            scores = task.predict(result.state.model, val.x)
            m = binary_metrics(val.y, scores)
            positive = np.asarray(val.y).ravel() >= 0.5
            sensitivity = float(np.mean(scores[positive] >= 0.5))
            specificity = float(np.mean(scores[~positive] < 0.5))
            run = {
                "accuracy": float(m["accuracy"]),
                "auc": float(m["auc"]),
                "balanced_accuracy": (sensitivity + specificity) / 2,
                "sensitivity": sensitivity,
                "specificity": specificity,
                "seconds": time.perf_counter() - started,
            }
            runs[name].append(run)
            print(
                f"seed {seed} {name}: validation accuracy {run['accuracy']:.3f} auc {run['auc']:.3f} "
                f"balanced accuracy {run['balanced_accuracy']:.3f} (sens {sensitivity:.3f}, spec {specificity:.3f}) "
                f"({run['seconds']:.0f} s, load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    stats = {
        n: {k: float(np.mean([r[k] for r in rs])) for k in ("accuracy", "auc", "balanced_accuracy", "seconds")}
        for n, rs in runs.items()
    }
    for n, s in stats.items():
        print(
            f"{n}: validation accuracy {s['accuracy']:.3f}, AUC {s['auc']:.3f}, "
            f"balanced accuracy {s['balanced_accuracy']:.3f}, {s['seconds']:.0f} s per run"
        )
    print(
        json.dumps(
            {
                "benchmark": "custom_task_tuning",
                "split": "validation",
                "seeds": args.seeds,
                "rounds": args.rounds,
                "variants": dict(_variant(v) for v in args.variant),
                "runs": runs,
                "stats": stats,
                "load_average_before": load_before,
                "load_average_after": os.getloadavg()[0],
                "cpu_count": os.cpu_count(),
                "note": "shared machine (other jobs running)",
            }
        )
    )


if __name__ == "__main__":
    main()
