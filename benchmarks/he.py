#!/usr/bin/env python
"""Threshold CKKS vs SecAgg+ vs plain FedAvg: seconds per round and bytes per site (issue 17).

Workload 1 of BENCHMARKS.md (site k returns x + 1e-3 (k+1) with k+1 examples: no training,
so a round is pure protocol cost), R rounds of FedAvg over in-process sites for each
N (sites) x P (parameters), side by side in one run:

- ``fedavg``: plain FIT exchange;
- ``secagg+``: SecAggPlusWorkflow (2 neighbours, threshold 2, 16-bit fixed point);
- ``ckks``: CkksWorkflow (threshold CKKS, OpenFHE, 128-bit, ring 8192, scale 2^45) with all
  parties' OpenFHE operations in ONE engine process (simulation), i.e. serialised.

Per configuration: median s/round (rounds 2..R), bytes a site sends per round, max |error|
against the closed form. For CKKS also the per-ciphertext cost of each OpenFHE operation
(measured here) and, from it, the critical path of a deployed round where every site
encrypts on its own machine: ``site = c (enc + partial)``, ``server = c ((N - 1) add + (N + 1)
fuse)`` with ``c = ceil((P + 1) / 4096)`` ciphertexts per site. Configurations whose CKKS
work ``N x P`` exceeds ``--ckks-max-work`` are not run (said so in the output); the
estimate is still printed for them. Last line: JSON.

    nice -n 10 env PYTHONPATH=src python benchmarks/he.py [--sites 3 10 50] [--params 100000 1000000]
        [--rounds 3] [--ckks-max-work 10000000]

Needs OpenFHE's side interpreter (``make openfhe-env`` or ``$FEDCARE_OPENFHE_PYTHON``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedcare.he import OpenFheEngine, find_openfhe_python  # noqa: E402
from fedcare.runtime.coordinator import Coordinator  # noqa: E402
from fedcare.runtime.recorder import RunSpec  # noqa: E402
from fedcare.runtime.simulation import build_nodes  # noqa: E402
from fedcare.secure import FixedPointCodec, SecAggPlusWorkflow  # noqa: E402
from fedcare.secure.ckks import CkksWorkflow  # noqa: E402
from fedcare.strategies import FedAvg  # noqa: E402
from fedcare.task import task_hash  # noqa: E402
from fedcare.transport import InProcessChannel  # noqa: E402
from fedcare.types import Message, RunId, SiteId  # noqa: E402
from secagg import Workload1Task, _payload_bytes, _sites  # noqa: E402  (the same workload and byte count)

MODES = ("fedavg", "secagg+", "ckks")


def run_round(n: int, p: int, rounds: int, mode: str, engine: OpenFheEngine | None) -> dict[str, float]:
    """R rounds of ``mode``; median s/round, bytes per site per round, max |error|."""
    task = Workload1Task(p)
    nodes = build_nodes(_sites(n), task, ckks_backend=engine)
    sent: dict[SiteId, int] = dict.fromkeys(nodes, 0)

    def wrap(site: SiteId):
        handle = nodes[site].handle

        def counted(message: Message) -> Message:
            reply = handle(message)
            sent[site] += _payload_bytes(reply)
            return reply

        return counted

    channel = InProcessChannel({s: wrap(s) for s in nodes}, max_workers=2)
    workflow = {
        "fedavg": None,
        "secagg+": SecAggPlusWorkflow(codec=FixedPointCodec(clip_range=1.0, bits=16), degree=2, threshold=2),
        "ckks": CkksWorkflow(backend=engine) if engine is not None else None,
    }[mode]
    coordinator = Coordinator(
        channel=channel,
        strategy=FedAvg(),
        task_name=task.name,
        task_hash=task_hash(task),
        rounds=rounds,
        evaluate=False,
        fit_workflow=workflow,
        round_timeout_s=3600,
    )
    spec = RunSpec(RunId("bench"), "bench", "workload1", "fedavg", task.name, task_hash(task), 0, rounds)
    x0 = task.init_model(np.random.default_rng(0))
    try:
        result = coordinator.run(x0, spec=spec)
    finally:
        channel.close()
    expected = x0["x"] + rounds * 1e-3 * (2 * n + 1) / 3
    durations = [r.duration_s for r in result.rounds]
    site0 = sorted(nodes)[0]
    return {
        "round_s": statistics.median(durations[1:] if len(durations) > 1 else durations),
        "bytes_per_site": sent[site0] / rounds,
        "max_abs_error": float(np.abs(result.state.model["x"] - expected).max()),
    }


def op_costs(engine: OpenFheEngine, parties: int = 4, cts: int = 8) -> dict[str, float]:
    """Seconds per ciphertext of each OpenFHE operation (through the engine pipe, as a party pays it)."""
    lead, pk0 = engine.keygen()
    keys = [engine.keygen(pk0) for _ in range(parties - 1)]
    joint = engine.join([pk0] + [k for _, k in keys])
    values = np.random.default_rng(0).normal(size=cts * engine.slots) * 0.01
    t = time.perf_counter()
    enc = [engine.encrypt(joint, values) for _ in range(parties)]
    t_enc = (time.perf_counter() - t) / (parties * cts)
    t = time.perf_counter()
    total = engine.add(enc)
    t_add = (time.perf_counter() - t) / ((parties - 1) * cts)
    t = time.perf_counter()
    shares = [engine.partial_decrypt(lead, total, lead=True)]
    shares += [engine.partial_decrypt(h, total, lead=False) for h, _ in keys]
    t_partial = (time.perf_counter() - t) / (parties * cts)
    t = time.perf_counter()
    engine.fuse(shares, values.size)
    t_fuse = (time.perf_counter() - t) / (parties * cts)
    for h in [lead, *(h for h, _ in keys)]:
        engine.forget(h)
    return {
        "encrypt_s": t_enc,
        "add_s": t_add,
        "partial_s": t_partial,
        "fuse_s_per_party": t_fuse,
        "ciphertext_bytes": float(len(enc[0][0])),
    }


def deployed_estimate(n: int, p: int, slots: int, costs: Mapping[str, float]) -> dict[str, float]:
    """Critical path of a deployed CKKS round from the per-ciphertext costs (sites work in parallel)."""
    c = math.ceil((p + 1) / slots)
    site = c * (costs["encrypt_s"] + costs["partial_s"])
    server = c * ((n - 1) * costs["add_s"] + (n + 1) * costs["fuse_s_per_party"])
    return {"ciphertexts_per_site": float(c), "site_s": site, "server_s": server, "round_s_est": site + server}


def heart_accuracy(rounds: int, engine_ok: bool) -> dict[str, object]:
    """Heart disease (examples/heart-study, four hospitals, logistic regression): FedAvg vs CKKS, same seed."""
    import tomllib

    from fedcare.simulate import simulate_study
    from fedcare.study.site import load_site
    from fedcare.study.spec import parse_study

    heart = Path(__file__).resolve().parents[1] / "examples" / "heart-study"
    raw = tomllib.loads((heart / "study.toml").read_text())
    raw["federation"]["rounds"] = rounds
    specs = [load_site(f) for f in sorted((heart / "sites").glob("*.toml"))]
    out: dict[str, object] = {"rounds": rounds}
    for mode in ("fedavg", "ckks") if engine_ok else ("fedavg",):
        study = parse_study(
            {**raw, **({"secure_aggregation": {"enabled": True, "mode": "ckks"}} if mode == "ckks" else {})},
            where=f"heart study ({mode})",
        )
        t = time.perf_counter()
        summary = simulate_study(study, specs, settings=("federated",))
        wall = time.perf_counter() - t
        res = summary["settings"]["fedavg"]
        history = res.get("history") or []
        out[mode] = {
            "pooled_test": res.get("pooled_test", {}),
            "round_s": statistics.median(h["duration_s"] for h in history) if history else None,
            "wall_s": wall,
        }
    if engine_ok:
        a = out["fedavg"]["pooled_test"].get("accuracy")  # type: ignore[index]
        b = out["ckks"]["pooled_test"].get("accuracy")  # type: ignore[index]
        out["accuracy_diff_pt"] = 100 * abs(a - b) if a is not None and b is not None else None
    return out


def main() -> None:
    """Run the grid and print a table, then JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, nargs="+", default=[3, 10, 50])
    ap.add_argument("--params", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ckks-max-work", type=float, default=1e7, help="run CKKS only where N x P <= this")
    ap.add_argument("--heart-rounds", type=int, default=20, help="heart-disease accuracy check (0: skip)")
    args = ap.parse_args()
    python = find_openfhe_python()
    engine = OpenFheEngine() if python else None
    costs: dict[str, float] = {}
    if engine is not None:
        costs = op_costs(engine)
        print(
            f"OpenFHE ring {engine.info['ring_dim']}, {engine.slots} slots, log2 Q {engine.info['log_q']:.0f}; "
            f"per ciphertext: encrypt {costs['encrypt_s'] * 1e3:.1f} ms, add {costs['add_s'] * 1e3:.1f} ms, "
            f"partial {costs['partial_s'] * 1e3:.1f} ms, fuse {costs['fuse_s_per_party'] * 1e3:.1f} ms/party, "
            f"{costs['ciphertext_bytes'] / 1e3:.0f} kB"
        )
    else:
        print("no OpenFHE interpreter (make openfhe-env / FEDCARE_OPENFHE_PYTHON): CKKS not measured")
    rows = []
    print(f"{'N':>4} {'P':>9} {'mode':>8} {'s/round':>9} {'x fedavg':>9} {'MB/site':>9} {'max|err|':>9}")
    for p in args.params:
        for n in args.sites:
            base = None
            for mode in MODES:
                row: dict[str, object] = {"sites": n, "params": p, "mode": mode}
                if mode == "ckks" and engine is None:
                    row["skipped"] = "no OpenFHE"
                elif mode == "ckks" and n * p > args.ckks_max_work:
                    row["skipped"] = f"N x P > {args.ckks_max_work:g} (--ckks-max-work)"
                else:
                    row.update(run_round(n, p, args.rounds, mode, engine))
                    if mode == "fedavg":
                        base = float(row["round_s"])  # type: ignore[arg-type]
                    row["x_fedavg"] = float(row["round_s"]) / base if base else None  # type: ignore[arg-type]
                if mode == "ckks" and engine is not None:
                    row["deployed_estimate"] = deployed_estimate(n, p, engine.slots, costs)
                rows.append(row)
                if "skipped" in row:
                    est = row.get("deployed_estimate", {})
                    print(f"{n:>4} {p:>9} {mode:>8}  skipped: {row['skipped']}; deployed est {est}")
                    continue
                print(
                    f"{n:>4} {p:>9} {mode:>8} {row['round_s']:>9.3f} {row['x_fedavg']:>9.2f} "
                    f"{float(row['bytes_per_site']) / 1e6:>9.2f} {row['max_abs_error']:>9.1e}"  # type: ignore[arg-type]
                    + (
                        f"   deployed est {row['deployed_estimate']['round_s_est']:.2f} s"  # type: ignore[index]
                        if "deployed_estimate" in row
                        else ""
                    )
                )
    if engine is not None:
        engine.close()
    heart: dict[str, object] = {}
    if args.heart_rounds > 0:
        heart = heart_accuracy(args.heart_rounds, engine is not None)
        for mode in ("fedavg", "ckks"):
            if mode in heart:
                h = heart[mode]
                print(
                    f"heart {mode}: pooled accuracy {h['pooled_test'].get('accuracy', float('nan')):.4f}, "  # type: ignore[index]
                    f"auc {h['pooled_test'].get('auc', float('nan')):.4f}, {h['round_s']:.3f} s/round"  # type: ignore[index]
                )
        if "accuracy_diff_pt" in heart:
            print(f"heart accuracy |fedavg - ckks| = {heart['accuracy_diff_pt']:.2f} pt")
    print(
        json.dumps(
            {"benchmark": "he", "rounds": args.rounds, "openfhe_costs": costs, "rows": rows, "heart": heart},
            default=float,
        )
    )


if __name__ == "__main__":
    main()
