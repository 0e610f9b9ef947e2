"""Workload 2 of BENCHMARKS.md: seconds per round with vs without SecAgg+, side by side with Flower.

For each N (sites) x P (parameters): R rounds of FedAvg over in-process sites (site k returns
x + 1e-3 (k+1), weight k+1), plain and with SecAggPlusWorkflow (Flower-equivalent settings:
num_shares 3 = 2 neighbours + itself, threshold 2). Prints per (N, P): median s/round (rounds
2..R), the server's CPU per round, one site's CPU per round, bytes sent per site per round,
and the site's mask floor (expanding and adding its self mask + one mask per neighbour,
AES-CTR keystream as uint32, numpy), then Flower's SecAgg+ s/round for the same N, P and the
ratio. Flower runs in its own venv (it pins protobuf/typer versions fedcare does not use) via
``benchmarks/secagg_flower.py`` in a subprocess; without it, Flower's published figures from
BENCHMARKS.md are printed instead. Last line: JSON.

    PYTHONPATH=src python benchmarks/secagg.py [--sites 10 50 100] [--params 100000 1000000]
        [--rounds 3] [--flower-python PATH (or $FEDCARE_FLOWER_PYTHON) | --flower-json FILE | --no-flower]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.recorder import RunSpec
from fedcare.runtime.simulation import build_nodes
from fedcare.secure import FixedPointCodec, SecAggPlusWorkflow
from fedcare.secure.prg import MaskExpander
from fedcare.strategies import FedAvg
from fedcare.task import ArrayDataset, SiteData, task_hash
from fedcare.transport import InProcessChannel
from fedcare.types import ConfigValue, EvalResult, FitResult, Message, ModelState, RunId, SiteId

HERE = Path(__file__).resolve().parent
FLOWER_PUBLISHED = {  # BENCHMARKS.md, Flower 1.42.0, 3 shares / threshold 2
    (10, 100_000): 0.591,
    (50, 100_000): 1.602,
    (50, 1_000_000): 2.88,
}


class Workload1Task:
    """BENCHMARKS workload 1: site k returns x + 1e-3 (k+1) with k+1 examples."""

    name = "workload1"

    def __init__(self, size: int) -> None:
        self.size = size

    def params(self) -> Mapping[str, ConfigValue]:
        return {"size": self.size}

    def init_model(self, rng: np.random.Generator) -> ModelState:
        return {"x": np.linspace(-1, 1, self.size, dtype=np.float32)}

    def fit(self, model, data, config, rng) -> FitResult:
        return FitResult(state={"x": model["x"] + data.x[0, 0]}, num_examples=len(data))

    def evaluate(self, model, data) -> EvalResult:
        return EvalResult(loss=0.0, num_examples=len(data))

    def predict(self, model, x):
        return np.zeros(len(x))


def _sites(n: int) -> dict[SiteId, SiteData]:
    out = {}
    for k in range(n):
        ds = ArrayDataset(x=np.full((k + 1, 1), 1e-3 * (k + 1), dtype=np.float32), y=np.zeros(k + 1))
        out[SiteId(f"site-{k:03d}")] = SiteData(train=ds, test=ds)
    return out


def _payload_bytes(message: Message) -> int:
    p = message.payload
    n = sum(a.nbytes + len(name) for rec in p.arrays.values() for name, a in rec.items())
    n += sum(len(k) + len(str(v)) for k, v in p.config.items()) + 16 * len(p.metrics)
    return n


def run_fedcare(n: int, p: int, rounds: int, secure: bool) -> dict[str, float]:
    task = Workload1Task(p)
    nodes = build_nodes(_sites(n), task)
    cpu: dict[SiteId, float] = dict.fromkeys(nodes, 0.0)
    sent: dict[SiteId, int] = dict.fromkeys(nodes, 0)

    def wrap(site: SiteId):
        handle = nodes[site].handle

        def timed(message: Message) -> Message:
            t0 = time.thread_time()
            reply = handle(message)
            cpu[site] += time.thread_time() - t0
            sent[site] += _payload_bytes(reply)
            return reply

        return timed

    channel = InProcessChannel({s: wrap(s) for s in nodes}, max_workers=2)
    workflow = (
        SecAggPlusWorkflow(codec=FixedPointCodec(clip_range=1.0, bits=16), degree=2, threshold=2) if secure else None
    )
    coordinator = Coordinator(
        channel=channel,
        strategy=FedAvg(),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=rounds,
        evaluate=False,
        fit_workflow=workflow,
    )
    spec = RunSpec(RunId("bench"), "bench", "workload1", "fedavg", task.name, task_hash(task), 0, rounds)
    x0 = task.init_model(np.random.default_rng(0))
    t_cpu = time.thread_time()
    try:
        result = coordinator.run(x0, spec=spec)
    finally:
        channel.close()
    server_cpu = (time.thread_time() - t_cpu) / rounds
    expected = x0["x"] + rounds * 1e-3 * (2 * n + 1) / 3
    err = float(np.abs(result.state.model["x"] - expected).max())
    durations = [r.duration_s for r in result.rounds]
    site0 = sorted(nodes)[0]
    return {
        "round_s": statistics.median(durations[1:] if len(durations) > 1 else durations),
        "round_s_all": durations,
        "server_cpu_s": server_cpu,
        "site_cpu_s": cpu[site0] / rounds,
        "site_cpu_s_max": max(cpu.values()) / rounds,
        "bytes_per_site": sent[site0] / rounds,
        "max_abs_error": err,
    }


def mask_floor(p: int, neighbours: int, repeats: int = 5) -> float:
    """CPU seconds to expand and add one site's self mask + one mask per neighbour (uint32, numpy)."""
    prg = MaskExpander(p + 1, np.uint32)
    y = np.zeros(p + 1, np.uint32)
    seeds = [os.urandom(16) for _ in range(neighbours + 1)]
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        for seed in seeds:
            prg.apply(y, seed, 1)
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def isolated_site_cpu(p: int, repeats: int = 5) -> float:
    """One site's CPU for all four stages (delta + encode + masks + crypto, no training), single thread."""
    from fedcare.secure.handler import flat_delta
    from fedcare.secure.server import SecAggServer
    from fedcare.secure.site import SecAggSite

    x0 = {"x": np.linspace(-1, 1, p, dtype=np.float32)}
    trained = {"x": x0["x"] + np.float32(0.004)}
    sites = [SiteId(f"s{i}") for i in range(10)]
    times = []
    for r in range(repeats):
        server = SecAggServer(
            sites=sites,
            run_id="bench",
            round_no=r + 1,
            vector_size=p,
            codec=FixedPointCodec(),
            degree=2,
            threshold=2,
            max_site_weight=100,
        )
        clients = {s: SecAggSite(s, run_id="bench", round_no=r + 1) for s in sites}
        me, spent = sites[3], 0.0
        ins = server.start()
        for stage in range(4):
            for s, i in ins.items():
                t0 = time.thread_time()
                if stage == 0:
                    res = clients[s].advertise_keys(i)
                elif stage == 1:
                    res = clients[s].share_keys(i)
                elif stage == 2:
                    clients[s].check_masked_input(i)
                    res = clients[s].masked_input(flat_delta(trained, x0, ["x"], reuse=True), 4, overwrite=True)
                else:
                    res = clients[s].unmask(i)
                if s == me:
                    spent += time.thread_time() - t0
                server.receive(s, res)
            ins = server.advance()
        server.result()
        times.append(spent)
    return statistics.median(times)


def run_flower(python: str, n: int, p: int, rounds: int) -> dict | None:
    script = HERE / "secagg_flower.py"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [python, str(script), "--sites", str(n), "--params", str(p), "--rounds", str(rounds), "--secure"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--params", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--flower-python",
        default=os.environ.get("FEDCARE_FLOWER_PYTHON", ""),
        help="python of a side environment with flwr (default: $FEDCARE_FLOWER_PYTHON)",
    )
    ap.add_argument("--flower-json", help="JSON lines from secagg_flower.py (taken earlier on this machine)")
    ap.add_argument("--no-flower", action="store_true")
    ap.add_argument("--markdown", help="also write the table to this Markdown file")
    args = ap.parse_args()

    flower: dict[tuple[int, int], dict] = {}
    flower_live = not args.flower_json and not args.no_flower and bool(args.flower_python)
    flower_live = flower_live and Path(args.flower_python).exists()
    flower_source = "published (BENCHMARKS.md, flwr 1.42.0)"
    if args.flower_json:
        for line in Path(args.flower_json).read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                flower[(rec["sites"], rec["params"])] = rec
        flower_source = f"measured earlier with secagg_flower.py ({args.flower_json})"
    elif flower_live:
        flower_source = f"measured now with {args.flower_python} (subprocess)"
    elif args.no_flower:
        print("Flower run skipped (--no-flower): printing Flower's published figures (BENCHMARKS.md)")
    else:
        print(
            f"flwr is not installed ({args.flower_python} missing): printing Flower's published figures (BENCHMARKS.md)"
        )

    rows = []
    print("note: 2 shared cores under contention; medians of rounds 2..R; the lead re-runs these")
    header = (
        f"{'N':>4} {'P':>8} | {'plain s/rnd':>11} {'secagg s/rnd':>12} {'x plain':>7} | {'server cpu':>10} "
        f"{'site cpu':>8} {'mask floor':>10} {'site/floor':>10} | {'bytes/site':>10} | "
        f"{'flower s/rnd':>12} {'speedup':>7}"
    )
    print(header)
    for p in args.params:
        for n in args.sites:
            plain = run_fedcare(n, p, args.rounds, secure=False)
            sec = run_fedcare(n, p, args.rounds, secure=True)
            floor = mask_floor(p, neighbours=2)
            isolated = isolated_site_cpu(p)
            fl = flower.get((n, p))
            if (
                fl is None
                and not args.flower_json
                and not args.no_flower
                and args.flower_python
                and Path(args.flower_python).exists()
            ):
                fl = run_flower(args.flower_python, n, p, args.rounds)
            if fl is not None:
                rs = fl["round_s"]
                flower_s = statistics.median(rs[1:] if len(rs) > 1 else rs)
                flower_kind = f"measured flwr {fl.get('flwr')}"
            elif (n, p) in FLOWER_PUBLISHED:
                flower_s, flower_kind = FLOWER_PUBLISHED[(n, p)], "published flwr 1.42.0"
            else:
                flower_s, flower_kind = float("nan"), "none"
            speedup = flower_s / sec["round_s"]
            row = {
                "sites": n,
                "params": p,
                "plain_round_s": plain["round_s"],
                "secagg_round_s": sec["round_s"],
                "secagg_over_plain": sec["round_s"] / plain["round_s"],
                "server_cpu_s": sec["server_cpu_s"],
                "site_cpu_s": sec["site_cpu_s"],
                "site_cpu_s_max": sec["site_cpu_s_max"],
                "plain_site_cpu_s": plain["site_cpu_s"],
                "mask_floor_s": floor,
                "site_cpu_over_floor": sec["site_cpu_s"] / floor,
                # the site's SecAgg+ work alone: its CPU minus what the same site spends in a plain round
                "site_protocol_cpu_s": sec["site_cpu_s"] - plain["site_cpu_s"],
                "site_protocol_cpu_over_floor": (sec["site_cpu_s"] - plain["site_cpu_s"]) / floor,
                # the same work measured alone in one thread (no other site competing for caches)
                "site_isolated_cpu_s": isolated,
                "site_isolated_cpu_over_floor": isolated / floor,
                "bytes_per_site": sec["bytes_per_site"],
                "plain_bytes_per_site": plain["bytes_per_site"],
                "secagg_max_abs_error": sec["max_abs_error"],
                "flower_secagg_round_s": flower_s,
                "flower_source": flower_kind,
                "speedup_vs_flower": speedup,
            }
            rows.append(row)
            print(
                f"{n:>4} {p:>8} | {plain['round_s']:>11.4f} {sec['round_s']:>12.4f} {row['secagg_over_plain']:>7.1f} | "
                f"{sec['server_cpu_s']:>10.4f} {sec['site_cpu_s']:>8.4f} {floor:>10.4f} "
                f"{row['site_cpu_over_floor']:>10.2f} | {sec['bytes_per_site']:>10.0f} | "
                f"{flower_s:>12.3f} {speedup:>7.1f}",
                flush=True,
            )
    ok_speed = all(r["speedup_vs_flower"] >= 5 for r in rows if np.isfinite(r["speedup_vs_flower"]))
    ok_floor = all(r["site_cpu_over_floor"] <= 2 for r in rows)
    ok_proto = all(r["site_protocol_cpu_over_floor"] <= 2 for r in rows)
    for r in rows:
        print(
            f"N={r['sites']:>3} P={r['params']:>7}: site SecAgg+ CPU beyond its plain round "
            f"{r['site_protocol_cpu_s'] * 1e3:.2f} ms = {r['site_protocol_cpu_over_floor']:.2f}x the mask floor; "
            f"alone in one thread {r['site_isolated_cpu_s'] * 1e3:.2f} ms = {r['site_isolated_cpu_over_floor']:.2f}x"
        )
    print(
        f"targets: >= 5x Flower on every measured (N, P): {ok_speed}; site CPU <= 2x mask floor: {ok_floor} "
        f"(site CPU beyond its plain round <= 2x floor: {ok_proto})"
    )
    print(f"Flower figures: {flower_source}")
    if args.markdown:
        write_markdown(Path(args.markdown), rows, args.rounds, flower_source)
    print(json.dumps({"benchmark": "secagg", "rounds": args.rounds, "flower": flower_source, "rows": rows}))


def write_markdown(path: Path, rows: list[dict], rounds: int, flower_source: str) -> None:
    """The results table as Markdown (benchmarks/results/secagg.md)."""
    lines = [
        "# SecAgg+ benchmark (workload 2 of BENCHMARKS.md)",
        "",
        f"`PYTHONPATH=src python benchmarks/secagg.py` — R={rounds} rounds, median of rounds 2..R, "
        "FedAvg over in-process sites, 2 site threads; SecAgg+ with 2 neighbours + the site itself "
        "(Flower's num_shares=3), threshold 2, 16-bit fixed point, mod 2^32. "
        f"Flower: {flower_source}, same N, P and settings. Taken on 2 shared cores under heavy "
        "contention (load average 12-17): ratios are more meaningful than absolute times.",
        "",
        "| N | P | plain s/round | SecAgg+ s/round | × plain | server CPU s/round | site CPU s/round "
        "| site mask floor s | site CPU / floor | site CPU beyond plain / floor | bytes sent/site/round "
        "| Flower SecAgg+ s/round | speedup vs Flower |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sites']} | {r['params']:,} | {r['plain_round_s']:.3f} | {r['secagg_round_s']:.3f} "
            f"| {r['secagg_over_plain']:.1f} | {r['server_cpu_s']:.3f} | {r['site_cpu_s'] * 1e3:.1f} ms "
            f"| {r['mask_floor_s'] * 1e3:.2f} ms | {r['site_cpu_over_floor']:.1f} "
            f"| {r['site_protocol_cpu_over_floor']:.1f} | {r['bytes_per_site']:,.0f} "
            f"| {r['flower_secagg_round_s']:.3f} | {r['speedup_vs_flower']:.1f}× |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
