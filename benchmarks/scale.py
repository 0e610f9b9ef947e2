"""Scale: workload 1 of shared/BENCHMARKS.md on Ray, fedcare's RayChannel beside Flower's Ray simulation.

N sites x P float32 parameters; site k returns ``x + 1e-3*(k+1)`` with ``num_examples =
k+1``; FedAvg over all N sites, no evaluation, R rounds; the final model is checked
against the closed form ``x_R = x0 + R*1e-3*(2N+1)/3``. fedcare runs the real Coordinator
over :class:`fedcare.transport.ray_channel.RayChannel` with its defaults on a local Ray
with 2 CPUs: a pool of two actors, each hosting half of the sites (each site's node
holding only its own data), instructions sent in batches; FedAvg's aggregate being a
weighted linear mean, the Coordinator asks the actors to fold their sites' validated
updates themselves (one float64 partial sum per batch, each site's metrics beside it),
and adds the partial sums as they arrive. Flower runs
``benchmarks/secagg_flower.py`` (plain FedAvg, its ``run_simulation`` on Ray, 1 CPU per
client actor) in its own environment, found through ``--flower-python`` or the
``FEDCARE_FLOWER_PYTHON`` environment variable (a venv with ``flwr[simulation]``);
without one only fedcare's figures are printed.

Both frameworks' Ray workers run at the driver's priority (``RAY_worker_niceness=0``
for both: Ray renices workers to 19 by default, which on a shared machine starves the
simulated clients of both while the driver waits).

Each (N, P) point runs in a fresh subprocess per framework, so each driver's peak RSS
is its own (``ru_maxrss`` of the process that runs the server/Coordinator; Ray's worker
processes are not counted for either). Seconds per round: median over the rounds after
the first (Ray start-up and actor creation are excluded for both).

Usage::

    PYTHONPATH=src python benchmarks/scale.py [--sites 10 100 1000 5000] [--params 100000 1000000]
        [--rounds 3] [--flower-python PATH] [--max-flower-bytes 4e9] [--flower-max-sites 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class OffsetTask:
    """Workload 1's "training": the reply is ``x + offset``, the offset being the site's one feature."""

    name = "bench-offset"

    def __init__(self, size: int) -> None:
        self.size = size

    def params(self) -> Mapping[str, Any]:
        return {"size": self.size}

    def init_model(self, rng: Any) -> dict[str, np.ndarray]:
        return {"x": np.linspace(-1, 1, self.size, dtype=np.float32)}

    def fit(self, model: Any, data: Any, config: Any, rng: Any) -> Any:
        from fedcare.types import FitResult

        return FitResult(state={"x": model["x"] + data.x[0, 0]}, num_examples=len(data))

    def evaluate(self, model: Any, data: Any) -> Any:
        from fedcare.types import EvalResult

        return EvalResult(loss=0.0, num_examples=len(data))

    def predict(self, model: Any, x: Any) -> Any:
        return np.zeros(len(x))


def one_fedcare(n: int, p: int, rounds: int) -> dict[str, Any]:
    """Run one point in this process: fedcare's Coordinator over RayChannel."""
    from fedcare.runtime.coordinator import Coordinator
    from fedcare.runtime.recorder import RunSpec
    from fedcare.runtime.simulation import build_nodes
    from fedcare.strategies import FedAvg
    from fedcare.task import ArrayDataset, SiteData, task_hash
    from fedcare.transport.ray_channel import RayChannel
    from fedcare.types import RunId, SiteId

    sites = {}
    for k in range(n):
        ds = ArrayDataset(x=np.full((k + 1, 1), 1e-3 * (k + 1), dtype=np.float32), y=np.zeros(k + 1))
        sites[SiteId(f"site-{k:04d}")] = SiteData(train=ds, test=ds)
    task = OffsetTask(p)
    started = time.perf_counter()
    channel = RayChannel(build_nodes(sites, task), num_cpus=2)
    init_s = time.perf_counter() - started
    digest = task_hash(task)
    rounds_s: list[float] = []
    coordinator = Coordinator(
        channel=channel,
        strategy=FedAvg(),
        task_name=task.name,
        task_hash=digest,
        rounds=rounds,
        evaluate=False,
        round_timeout_s=3600.0,
        on_round=lambda r: rounds_s.append(r.duration_s),
    )
    x0 = task.init_model(None)["x"]
    try:
        result = coordinator.run(
            dict(task.init_model(None)),
            spec=RunSpec(RunId("scale"), "scale", "", "fedavg", task.name, digest, 0, rounds),
        )
    finally:
        channel.close()
    expected = x0 + rounds * 1e-3 * (2 * n + 1) / 3
    return {
        "framework": "fedcare",
        "sites": n,
        "params": p,
        "round_s": rounds_s,
        "init_s": init_s,
        "max_abs_error": float(np.abs(result.state.model["x"] - expected).max()),
        "failures": sum(len(r.failures) for r in result.rounds),
        "folded_at_actors": channel.folded_sites,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def _subprocess(cmd: list[str], env: dict[str, str], timeout_s: float) -> dict[str, Any] | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        print(f"  timed out after {timeout_s:.0f} s: {' '.join(cmd[-6:])}")
        return None
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        print(f"  failed ({out.returncode}): {out.stderr.strip().splitlines()[-1:] if out.stderr.strip() else ''}")
        return None
    return json.loads(lines[-1])


def _per_round(rec: dict[str, Any]) -> float:
    rounds = rec["round_s"][1:] or rec["round_s"]
    return statistics.median(rounds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, nargs="+", default=[10, 100, 1000, 5000])
    ap.add_argument("--params", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--flower-python", default=os.environ.get("FEDCARE_FLOWER_PYTHON"))
    ap.add_argument(
        "--max-flower-bytes",
        type=float,
        default=4e9,
        help="skip Flower where its server would hold more than this many bytes of updates (N x P x 4)",
    )
    ap.add_argument(
        "--flower-max-sites", type=int, default=None, help="run Flower only up to this many sites (it is the slow side)"
    )
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per point and framework")
    ap.add_argument("--one", nargs=2, type=int, metavar=("N", "P"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_fedcare(args.one[0], args.one[1], args.rounds)))
        return
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"}
    flower = args.flower_python if args.flower_python and Path(args.flower_python).exists() else None
    if flower is None:
        print("no Flower environment (set --flower-python or FEDCARE_FLOWER_PYTHON): fedcare only")
    load = os.getloadavg()[0]
    rows = []
    head = ("N", "P", "fedcare s/rnd", "flower s/rnd", "speed-up", "fedcare RSS MB", "flower RSS MB")
    print("{:>5} {:>8} {:>14} {:>13} {:>9} {:>15} {:>14}".format(*head))
    for p in args.params:
        for n in args.sites:
            ours = _subprocess(
                [sys.executable, __file__, "--one", str(n), str(p), "--rounds", str(args.rounds)], env, args.timeout
            )
            theirs = None
            skip_flower = args.flower_max_sites is not None and n > args.flower_max_sites
            if flower is not None and n * p * 4 <= args.max_flower_bytes and not skip_flower:
                theirs = _subprocess(
                    [
                        flower,
                        str(HERE / "secagg_flower.py"),
                        "--sites",
                        str(n),
                        "--params",
                        str(p),
                        "--rounds",
                        str(args.rounds),
                    ],
                    env,
                    args.timeout,
                )
            row = {"sites": n, "params": p, "fedcare": ours, "flower": theirs}
            a = _per_round(ours) if ours else float("nan")
            b = _per_round(theirs) if theirs else float("nan")
            row["speedup"] = b / a if ours and theirs else None
            rows.append(row)
            rss_a = ours["driver_peak_rss_mb"] if ours else float("nan")
            rss_b = theirs.get("driver_peak_rss_mb", float("nan")) if theirs else float("nan")
            speed = f"{row['speedup']:.1f}x" if row["speedup"] else "—"
            print(f"{n:>5} {p:>8} {a:>14.3f} {b:>13.3f} {speed:>9} {rss_a:>15.0f} {rss_b:>14.0f}", flush=True)
    print(
        json.dumps(
            {
                "load_average_before": load,
                "load_average_after": os.getloadavg()[0],
                "rounds": args.rounds,
                "flower_python_found": bool(flower),
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
