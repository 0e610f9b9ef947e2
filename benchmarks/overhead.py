"""Orchestration overhead: workload 1 of shared/BENCHMARKS.md through the real Coordinator.

N simulated sites x P float32 parameters. Site k receives the model x and returns
``x + 1e-3*(k+1)`` with ``num_examples = k+1``; FedAvg over all N sites, no evaluation,
R rounds. Every message passes the real path: InProcessChannel -> SiteNode (policy check,
incoming validation) -> Task.fit -> reply -> Coordinator validation -> WeightedMeanFold.
The final model is checked against the closed form ``x_R = x0 + R*1e-3*(2N+1)/3``.

Each (N, P) runs in a fresh subprocess, so its peak RSS is its own. In that process,
after the fedcare run, the two numpy floors of BENCHMARKS.md are timed side by side on
the same N float32 arrays and weights:

(a) ``w @ M`` over the stacked (N, P) matrix (needs N*P memory);
(b) streaming ``np.multiply(a, w, out=tmp); acc += tmp`` (O(P) memory), float32 as in
    the definition; (b64) the same with a float64 ``tmp``/``acc``, fedcare's accumulator.

The floors (b) and (b64) are timed right after each round of a second fedcare run
("paired"), so each round is compared with a floor taken under the same machine load;
the median of the per-round ratios is the robust figure on a shared machine. The CPU
ratio compares CPU seconds (all threads) per round with the floor's CPU seconds; the
server ratio leaves out the CPU the simulated sites spend in their handlers (in a
deployment that work happens at the hospitals), i.e. the Coordinator, channel,
validation and fold.

Usage::

    python benchmarks/overhead.py                  # N in {10, 100}, P in {100k, 1M}
    python benchmarks/overhead.py --with-1000      # also N = 1000
    python benchmarks/overhead.py --sites 100 --params 1000000 --repeats 3

The figures are printed as a table; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fedcare.runtime.coordinator import Coordinator  # noqa: E402
from fedcare.runtime.recorder import RunSpec  # noqa: E402
from fedcare.runtime.simulation import build_nodes  # noqa: E402
from fedcare.strategies import FedAvg  # noqa: E402
from fedcare.task import ArrayDataset, SiteData, task_hash  # noqa: E402
from fedcare.transport import InProcessChannel  # noqa: E402
from fedcare.types import ConfigValue, EvalResult, FitResult, ModelState, RunId, SiteId  # noqa: E402

#: Flower 1.42.0 on Ray, from shared/BENCHMARKS.md: (N, P) -> (s/round, min, max, floor (a) s, driver RSS MB).
FLOWER = {
    (10, 100_000): (0.104, 0.103, 0.105, 0.038e-3, 232),
    (100, 100_000): (0.834, 0.739, 0.839, 0.34e-3, 304),
    (10, 1_000_000): (0.309, 0.308, 0.313, 0.87e-3, 615),
    (100, 1_000_000): (1.754, 1.715, 1.907, 9.58e-3, 1380),
}


class OffsetTask:
    """Workload 1's "training": return ``x + offset`` where the site's data holds the offset.

    Site k's training set has k+1 rows whose single feature is ``1e-3*(k+1)``, so the
    reply is ``x + 1e-3*(k+1)`` with ``num_examples = k+1``.
    """

    name = "bench-offset"

    def __init__(self, size: int) -> None:
        self.size = size

    def params(self) -> Mapping[str, ConfigValue]:
        return {"size": self.size}

    def init_model(self, rng: np.random.Generator) -> ModelState:
        return {"x": np.linspace(-1, 1, self.size, dtype=np.float32)}

    def fit(self, model: ModelState, data: ArrayDataset, config: Mapping[str, ConfigValue], rng: Any) -> FitResult:
        return FitResult(state={"x": model["x"] + data.x[0, 0]}, num_examples=len(data))

    def evaluate(self, model: ModelState, data: ArrayDataset) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=len(data))

    def predict(self, model: ModelState, x: Any) -> Any:
        return np.zeros(len(x))


def offset_sites(n: int) -> dict[SiteId, SiteData]:
    sites = {}
    for k in range(n):
        ds = ArrayDataset(x=np.full((k + 1, 1), 1e-3 * (k + 1), dtype=np.float32), y=np.zeros(k + 1))
        sites[SiteId(f"site-{k:04d}")] = SiteData(train=ds, test=ds)
    return sites


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _median_time(fn: Any, repeats: int) -> tuple[float, float, float, float]:
    """Median, min and max wall seconds, and the mean CPU seconds (all threads) of ``fn``."""
    times = []
    cpu0 = time.process_time()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times), (time.process_time() - cpu0) / repeats


def _run_fedcare(
    nodes: Mapping[SiteId, Any], task: OffsetTask, x0: np.ndarray, rounds: int, workers: int | None, on_round: Any
) -> tuple[list[float], float, float, float]:
    """One fedcare run.

    Returns the round wall times, the CPU seconds of the whole process (all threads) and
    of the server side alone (process minus the sites' handlers, timed per thread), and
    the error against the closed form.
    """
    site_cpu = [0.0]
    lock = threading.Lock()

    def timed(handle: Any) -> Any:
        def call(message: Any) -> Any:
            t0 = time.thread_time()
            try:
                return handle(message)
            finally:
                with lock:
                    site_cpu[0] += time.thread_time() - t0

        return call

    channel = InProcessChannel({s: timed(node.handle) for s, node in nodes.items()}, max_workers=workers)
    coordinator = Coordinator(
        channel=channel,
        strategy=FedAvg(),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=rounds,
        evaluate=False,
        on_round=on_round,
    )
    spec = RunSpec(
        run_id=RunId("bench"),
        name="overhead",
        dataset="synthetic",
        strategy="fedavg",
        task=task.name,
        task_hash=task_hash(task),
        seed=0,
        rounds=rounds,
    )
    cpu0 = time.process_time()
    try:
        result = coordinator.run({"x": x0}, spec=spec)
    finally:
        channel.close()
    cpu = time.process_time() - cpu0
    server_cpu = cpu - site_cpu[0]
    assert all(not r.failures for r in result.rounds), result.rounds[0].failures
    n = len(nodes)
    expected = x0.astype(np.float64) + rounds * 1e-3 * (2 * n + 1) / 3
    err = float(np.max(np.abs(result.state.model["x"].astype(np.float64) - expected)))
    if err > 1e-4:
        raise SystemExit(f"N={n} P={x0.size}: final model is off the closed form by {err:.3g}")
    return [r.duration_s for r in result.rounds], cpu, server_cpu, err


def run_worker(n: int, p: int, rounds: int, repeats: int, workers: int | None) -> dict[str, Any]:
    """One (N, P) configuration, in this fresh process.

    Phase 1: ``repeats`` fedcare runs alone, for peak RSS, wall and CPU time per round.
    Phase 2: one more fedcare run with the streaming floors timed right after each round,
    so each round has a floor measured under the same load (the machine is shared).
    """
    task = OffsetTask(p)
    x0 = task.init_model(np.random.default_rng(0))["x"]
    nodes = build_nodes(offset_sites(n), task)
    rss_before = current_rss_mb()
    round_times: list[float] = []
    cpu_s = 0.0
    server_cpu_s = 0.0
    worst_err = 0.0
    for _ in range(repeats):
        times, cpu, server_cpu, err = _run_fedcare(nodes, task, x0, rounds, workers, None)
        round_times += times
        cpu_s += cpu
        server_cpu_s += server_cpu
        worst_err = max(worst_err, err)
    fedcare_peak = peak_rss_mb()

    # The floors: the same N float32 arrays and weights in one process, no framework.
    arrays = [x0 + np.float32(1e-3 * (k + 1)) for k in range(n)]
    weights = np.arange(1, n + 1, dtype=np.float64)
    weights32 = weights.astype(np.float32)
    w32 = (weights / weights.sum()).astype(np.float32)

    def floor_b(dtype: type) -> None:
        acc = np.zeros(p, dtype=dtype)
        tmp = np.empty(p, dtype=dtype)
        for a, w in zip(arrays, weights32 if dtype is np.float32 else weights, strict=True):
            np.multiply(a, w, out=tmp)
            acc += tmp
        acc /= weights.sum()

    paired: dict[str, list[float]] = {"b": [], "b64": []}

    def after_round(report: Any) -> None:
        for key, dtype in (("b", np.float32), ("b64", np.float64)):
            t0 = time.perf_counter()
            floor_b(dtype)
            paired[key].append(time.perf_counter() - t0)

    times, _, _, err = _run_fedcare(nodes, task, x0, rounds, workers, after_round)
    worst_err = max(worst_err, err)
    ratios_b = [t / f for t, f in zip(times, paired["b"], strict=True)]
    floors = {"b": _median_time(lambda: floor_b(np.float32), 5)}
    if n * p <= 100 * 1_000_000:
        stacked = np.stack(arrays)
        floors["a"] = _median_time(lambda: w32 @ stacked, 5)
        del stacked
    med = statistics.median(round_times)
    floor_b_med = statistics.median(paired["b"])
    floor_b64_med = statistics.median(paired["b64"])
    return {
        "sites": n,
        "params": p,
        "rounds": rounds,
        "repeats": repeats,
        "s_per_round": med,
        "s_per_round_min": min(round_times),
        "s_per_round_max": max(round_times),
        "floor_a_s": floors["a"][0] if "a" in floors else None,
        "floor_b_s": floor_b_med,
        "floor_b64_s": floor_b64_med,
        "ratio_a": med / floors["a"][0] if "a" in floors else None,
        "ratio_b": med / floor_b_med,
        "ratio_b64": med / floor_b64_med,
        "paired_ratio_b": statistics.median(ratios_b),
        "paired_ratio_b_min": min(ratios_b),
        "paired_ratio_b_max": max(ratios_b),
        "cpu_s_per_round": cpu_s / len(round_times),
        "floor_b_cpu_s": floors["b"][3],
        "cpu_ratio_b": cpu_s / len(round_times) / floors["b"][3],
        "server_cpu_s_per_round": server_cpu_s / len(round_times),
        "server_cpu_ratio_b": server_cpu_s / len(round_times) / floors["b"][3],
        "peak_rss_mb": fedcare_peak,
        "rss_before_run_mb": rss_before,
        "rss_growth_mb": fedcare_peak - rss_before,
        "model_mb": p * 4 / 2**20,
        "max_abs_error": worst_err,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--params", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--with-1000", action="store_true", help="also run N = 1000")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1, help="fedcare runs per configuration (rounds pooled)")
    parser.add_argument("--workers", type=int, default=None, help="InProcessChannel pool size (default: CPUs)")
    parser.add_argument("--worker", nargs=2, type=int, metavar=("N", "P"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker[0], args.worker[1], args.rounds, args.repeats, args.workers)))
        return
    sites = sorted(set(args.sites + ([1000] if args.with_1000 else [])))
    rows = []
    for p in args.params:
        for n in sites:
            cmd = [sys.executable, __file__, "--worker", str(n), str(p), "--rounds", str(args.rounds)]
            cmd += ["--repeats", str(args.repeats)] + (["--workers", str(args.workers)] if args.workers else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"N={n} P={p} failed:\n{proc.stderr}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"workload 1 (BENCHMARKS.md): FedAvg, {args.rounds} rounds, no evaluation; cpus={os.cpu_count()}")
    print(
        f"{'N':>5} {'P':>9} | {'s/round median (min-max)':>28} | {'floor a':>8} {'floor b':>8} {'b64':>8} | "
        f"{'x a':>6} {'x b':>6} {'x b64':>6} {'paired x b (min-max)':>20} {'cpu x b':>7} {'server':>6} | "
        f"{'peak RSS':>9} {'growth':>8} | Flower s/round (x a), RSS"
    )
    for r in rows:
        fl = FLOWER.get((r["sites"], r["params"]))
        flower = f"{fl[0]:.3f} ({fl[0] / fl[3]:.0f}x), {fl[4]} MB" if fl else "-"
        fa = f"{r['floor_a_s'] * 1e3:7.2f}ms" if r["floor_a_s"] else "      -"
        xa = f"{r['ratio_a']:6.2f}" if r["ratio_a"] else "     -"
        print(
            f"{r['sites']:>5} {r['params']:>9} | {r['s_per_round']:9.4f} ({r['s_per_round_min']:.4f}-"
            f"{r['s_per_round_max']:.4f}) | {fa} {r['floor_b_s'] * 1e3:6.2f}ms {r['floor_b64_s'] * 1e3:6.2f}ms | "
            f"{xa} {r['ratio_b']:6.2f} {r['ratio_b64']:6.2f} "
            f"{r['paired_ratio_b']:6.2f} ({r['paired_ratio_b_min']:.2f}-{r['paired_ratio_b_max']:.2f}) "
            f"{r['cpu_ratio_b']:7.2f} {r['server_cpu_ratio_b']:6.2f} | "
            f"{r['peak_rss_mb']:6.0f} MB {r['rss_growth_mb']:5.0f} MB"
            f" | {flower}"
        )
    print(json.dumps({"benchmark": "overhead", "rows": rows}))


if __name__ == "__main__":
    main()
