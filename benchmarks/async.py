"""FedBuff vs FedAvg with one slow site: time to reach the synchronous run's final accuracy.

Heart disease (4 hospitals, the demo's logistic regression and fit recipe). One site
takes ``--slowdown`` times as long per update as the others. Two clocks:

* simulated (default): every update of a fast site takes 1 time unit and of the slow
  one ``slowdown`` units on FedBuff's virtual clock; a synchronous FedAvg round lasts
  as long as its slowest site. Deterministic for a seed.
* real (``--real-unit S``): the slow site's handler really sleeps ``slowdown * S``
  seconds per update and the fast ones ``S``; FedBuff folds in real arrival order and
  wall time is measured.

The target is FedAvg's accuracy after ``--rounds`` rounds (example-weighted over the
sites' test sets, i.e. the pooled test set). Prints a table and JSON on its last line.

Usage::

    PYTHONPATH=src python benchmarks/async.py [--rounds 20] [--slowdown 10] [--buffer-size 2]
        [--slow-site cleveland] [--real-unit 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

from fedcare.demos import get_demo
from fedcare.runtime.simulation import build_nodes, run_simulation
from fedcare.strategies import make_strategy
from fedcare.types import Message, RunId


def _sleeping(handle: Callable[[Message], Message], seconds: float) -> Callable[[Message], Message]:
    def slow(message: Message) -> Message:
        time.sleep(seconds)
        return handle(message)

    return slow


def run(name: str, rounds: int, latency: dict[str, float], real_unit: float | None, seed: int, **params: object):
    """One run; per round: (time, accuracy) with time on the virtual clock or the wall clock."""
    recipe = get_demo("heart-disease")
    data = recipe.load()
    task = recipe.make_task(data)
    nodes = build_nodes(data.sites, task)
    if real_unit is not None:
        for site, node in nodes.items():
            node.handle = _sleeping(node.handle, latency[site] * real_unit)  # type: ignore[method-assign]
    if name == "fedbuff" and real_unit is None:
        params["simulated_latency"] = latency
    strategy = make_strategy(name, fit_config=dict(recipe.config.fit_config), **params)
    started = time.perf_counter()
    marks: list[tuple[float, float]] = []
    clock = 0.0

    def on_round(report) -> None:  # type: ignore[no-untyped-def]
        nonlocal clock
        if real_unit is not None:
            clock = time.perf_counter() - started
        elif name == "fedbuff":
            clock = report.fit_metrics["async_clock_s"]
        else:
            clock += max(latency[s] for s in report.sampled)
        marks.append((clock, report.eval_metrics["accuracy"]))

    run_simulation(
        sites=data.sites,
        task=task,
        strategy=strategy,
        rounds=rounds,
        seed=seed,
        run_id=RunId(name),
        nodes=nodes,
        on_round=on_round,
        max_workers=len(nodes),
    )
    return marks


def time_to(marks: list[tuple[float, float]], target: float) -> float | None:
    """First time at which accuracy reached ``target`` (``None``: never)."""
    return next((t for t, acc in marks if acc >= target - 1e-12), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="synchronous FedAvg rounds (the target)")
    parser.add_argument("--slowdown", type=float, default=10.0)
    parser.add_argument("--slow-site", default="cleveland")
    parser.add_argument("--buffer-size", type=int, default=2)
    parser.add_argument("--staleness-exponent", type=float, default=0.5)
    parser.add_argument("--real-unit", type=float, default=None, help="seconds per fast update (real clock)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sites = get_demo("heart-disease").load().site_ids()
    latency = {s: (args.slowdown if s == args.slow_site else 1.0) for s in sites}
    clock = "wall s" if args.real_unit is not None else "time units"
    load = os.getloadavg()[0]
    sync = run("fedavg", args.rounds, latency, args.real_unit, args.seed)
    target = sync[-1][1]
    # FedBuff gets as many server steps as fit in the synchronous run's time at K updates per step
    steps = int(args.rounds * args.slowdown * (len(sites) - 1) / args.buffer_size) + args.rounds
    buff = run(
        "fedbuff",
        steps,
        latency,
        args.real_unit,
        args.seed,
        buffer_size=args.buffer_size,
        staleness_exponent=args.staleness_exponent,
    )
    t_sync, t_buff = time_to(sync, target), time_to(buff, target)
    slow = f"slow site {args.slow_site}, x{args.slowdown:g}"
    print(f"target: FedAvg's accuracy after {args.rounds} rounds = {target:.4f} ({slow})")
    print(f"FedAvg  reaches it at {t_sync:.1f} {clock} ({len(sync)} rounds)")
    if t_buff is None:
        print(f"FedBuff never reaches it in {len(buff)} steps (best {max(a for _, a in buff):.4f})")
    else:
        print(f"FedBuff reaches it at {t_buff:.1f} {clock}: {t_sync / t_buff:.2f}x sooner")
    print(
        json.dumps(
            {
                "clock": clock,
                "load_average_before": load,
                "target_accuracy": target,
                "fedavg_time": t_sync,
                "fedbuff_time": t_buff,
                "speedup": (t_sync / t_buff) if t_buff else None,
                "fedbuff_final_accuracy": buff[-1][1],
                "fedbuff_steps": len(buff),
                "buffer_size": args.buffer_size,
            }
        )
    )


if __name__ == "__main__":
    main()
