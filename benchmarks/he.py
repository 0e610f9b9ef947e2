#!/usr/bin/env python
"""Threshold CKKS vs SecAgg+ vs plain FedAvg: seconds per round and bytes per site (issue 17).

Workload 1 of BENCHMARKS.md (site k returns x + 1e-3 (k+1) with k+1 examples: no training,
so a round is pure protocol cost), R rounds of FedAvg over in-process sites for each
N (sites) x P (parameters), side by side in one run:

- ``fedavg``: plain FIT exchange;
- ``secagg+``: SecAggPlusWorkflow (2 neighbours, threshold 2, 16-bit fixed point);
- ``ckks``: CkksWorkflow (threshold CKKS, OpenFHE, 128-bit, ring 4096, complex packing, scale 2^45);
  with ``--engines site`` (default) every simulated site has its own OpenFHE engine process, as
  ``fedcare simulate`` builds them, so two sites' homomorphic work runs at once on two workers
  (``max_workers=2``); ``--engines shared`` puts every party's operations through one process.

Per configuration: median s/round (rounds 2..R), bytes a site sends per round, max |error|
against the closed form. For CKKS also the per-ciphertext cost of each OpenFHE operation
(measured here) and, from it, the critical path of a deployed round where every site
encrypts on its own machine: ``site = c (enc + partial)``, ``server = c (N fold + take + (N + 1)
fuse)`` (fold: check one site's ciphertexts and add them into the running sum; take: serialise
the sum) with ``c = ceil((P + 1) / 4096)`` ciphertexts per site (4096 values each). Configurations whose CKKS
work ``N x P`` exceeds ``--ckks-max-work`` are not run (said so in the output); the
estimate is still printed for them. Last line: JSON.

    nice -n 10 env PYTHONPATH=src python benchmarks/he.py [--sites 3 10 50] [--params 100000 1000000]
        [--rounds 3] [--ckks-max-work 10000000]

``--workload train`` measures what NVIDIA FLARE's 2.7x is a figure of: rounds with real local
training. Chest X-rays (PneumoniaMNIST, 4708 training images) shared out IID to N sites, an
MLP 784-1024-256-1 (P = 1,066,497 parameters), ``--local-epochs`` of Adam (lr 1e-3, batch
32) per round; FedAvg and CKKS runs alternate ``--repeats`` times in the one invocation
(same seed, same data). Reported per mode: median s/round in simulation (all sites on this
machine, two at a time, ``max_workers=2``), the sites' measured training time, pooled test
accuracy of the final model, and the deployed estimate: the slowest site's training (measured
in the FedAvg runs, where no engine process competes with it) plus,
for CKKS, ``c (enc + partial)`` at a site and ``c (N fold + take + (N + 1) fuse)`` at the
coordinator (``c`` ciphertexts per site), transfer time not counted for either mode.

    nice -n 10 env PYTHONPATH=src python benchmarks/he.py --workload train --sites 10 --rounds 3 --repeats 2

Needs OpenFHE's side interpreter (``make openfhe-env`` or ``$FEDCARE_OPENFHE_PYTHON``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedcare.datasets.pneumonia import load_arrays  # noqa: E402
from fedcare.he import OpenFheEngine, find_openfhe_python  # noqa: E402
from fedcare.runtime.coordinator import Coordinator, RunResult  # noqa: E402
from fedcare.runtime.node import SiteNode  # noqa: E402
from fedcare.runtime.recorder import RunSpec  # noqa: E402
from fedcare.runtime.simulation import build_nodes  # noqa: E402
from fedcare.secure import FixedPointCodec, SecAggPlusWorkflow  # noqa: E402
from fedcare.secure.ckks import CkksWorkflow  # noqa: E402
from fedcare.strategies import FedAvg  # noqa: E402
from fedcare.task import ArrayDataset, SiteData, task_hash  # noqa: E402
from fedcare.tasks.mlp import MLPTask  # noqa: E402
from fedcare.transport import InProcessChannel  # noqa: E402
from fedcare.types import Message, ModelState, RunId, SiteId  # noqa: E402
from secagg import Workload1Task, _payload_bytes, _sites  # noqa: E402  (the same workload and byte count)

MODES = ("fedavg", "secagg+", "ckks")


#: ``--engines``: "site" gives every simulated site its own OpenFHE engine process, as ``fedcare
#: simulate`` does (build_site); "shared" puts every party's operations through one process.
ENGINES = {"per_site": True}


def _run_then_close(
    coordinator: Coordinator, x0: ModelState, spec: RunSpec, channel: InProcessChannel, engines: list[OpenFheEngine]
) -> RunResult:
    """Run the coordinator, then close the channel and every OpenFHE engine whatever happened."""
    try:
        return coordinator.run(x0, spec=spec)
    finally:
        channel.close()
        for e in engines:
            e.close()


def site_nodes(
    sites: Mapping[SiteId, SiteData], task: object, engine: OpenFheEngine | None
) -> tuple[dict[SiteId, SiteNode], list[OpenFheEngine]]:
    """The simulated sites; with ``--engines site`` each holds its own (started) engine process."""
    if engine is None or not ENGINES["per_site"]:
        return build_nodes(sites, task, ckks_backend=engine), []  # type: ignore[arg-type]
    engines = {s: OpenFheEngine(engine.params) for s in sites}
    for e in engines.values():
        _ = e.slots  # start the process now, not inside the first timed round
    nodes = {s: build_nodes({s: d}, task, ckks_backend=engines[s])[s] for s, d in sites.items()}  # type: ignore[arg-type]
    return nodes, list(engines.values())


def run_round(n: int, p: int, rounds: int, mode: str, engine: OpenFheEngine | None) -> dict[str, float]:
    """R rounds of ``mode``; median s/round, bytes per site per round, max |error|."""
    task = Workload1Task(p)
    nodes, engines = site_nodes(_sites(n), task, engine if mode == "ckks" else None)
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
    result = _run_then_close(coordinator, x0, spec, channel, engines)
    expected = x0["x"] + rounds * 1e-3 * (2 * n + 1) / 3
    durations = [r.duration_s for r in result.rounds]
    site0 = sorted(nodes)[0]
    return {
        "round_s": statistics.median(durations[1:] if len(durations) > 1 else durations),
        "bytes_per_site": sent[site0] / rounds,
        "max_abs_error": float(np.abs(result.state.model["x"] - expected).max()),
    }


def op_costs(engine: OpenFheEngine, repeats: int = 5) -> dict[str, float]:
    """Median over ``repeats`` of :func:`op_costs_once` (the machine is shared: one sample is noisy)."""
    samples = [op_costs_once(engine) for _ in range(repeats)]
    return {k: statistics.median(c[k] for c in samples) for k in samples[0]}


def op_costs_once(engine: OpenFheEngine, parties: int = 4, cts: int = 16) -> dict[str, float]:
    """Seconds per ciphertext of each OpenFHE operation (through the engine pipe, as a party pays it)."""
    lead, pk0 = engine.keygen()
    keys = [engine.keygen(pk0) for _ in range(parties - 1)]
    joint = engine.join([pk0] + [k for _, k in keys])
    values = np.random.default_rng(0).normal(size=cts * engine.slots) * 0.01
    t = time.perf_counter()
    enc = [engine.encrypt(joint, values) for _ in range(parties)]
    t_enc = (time.perf_counter() - t) / (parties * cts)
    t = time.perf_counter()
    acc = None
    for party in enc:  # the coordinator checks and folds each site's ciphertexts as they arrive
        acc = engine.fold(acc, party)
    t_fold = (time.perf_counter() - t) / (parties * cts)
    t = time.perf_counter()
    total = engine.take(acc)  # type: ignore[arg-type]
    t_take = (time.perf_counter() - t) / cts
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
        "fold_s": t_fold,
        "take_s": t_take,
        "partial_s": t_partial,
        "fuse_s_per_party": t_fuse,
        "ciphertext_bytes": float(len(enc[0][0])),
    }


def deployed_estimate(n: int, p: int, slots: int, costs: Mapping[str, float]) -> dict[str, float]:
    """Critical path of a deployed CKKS round from the per-ciphertext costs (sites work in parallel)."""
    c = math.ceil((p + 1) / slots)
    site = c * (costs["encrypt_s"] + costs["partial_s"])  # the coordinator's lead share is made meanwhile
    server = c * (n * costs["fold_s"] + costs["take_s"] + (n + 1) * costs["fuse_s_per_party"])
    return {"ciphertexts_per_site": float(c), "site_s": site, "server_s": server, "round_s_est": site + server}


class _TimedTask:
    """A task whose ``fit`` calls are timed (site, seconds); everything else is the wrapped task's."""

    def __init__(self, task: MLPTask) -> None:
        self._task = task
        self.name = task.name
        self.fits: list[float] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> object:
        return getattr(self._task, name)

    def fit(self, *args: object, **kwargs: object) -> object:
        t = time.perf_counter()
        out = self._task.fit(*args, **kwargs)  # type: ignore[arg-type]
        with self._lock:
            self.fits.append(time.perf_counter() - t)
        return out


def xray_sites(n: int, seed: int = 0) -> tuple[dict[SiteId, SiteData], ArrayDataset]:
    """PneumoniaMNIST's training and test images shared out IID to ``n`` sites; and the pooled test set."""
    arrays = load_arrays()

    def split(name: str) -> tuple[np.ndarray, np.ndarray]:
        x = arrays[f"{name}_images"].reshape(len(arrays[f"{name}_images"]), -1).astype(np.float32) / 255.0
        return x, arrays[f"{name}_labels"].ravel().astype(np.float64)

    (xtr, ytr), (xte, yte) = split("train"), split("test")
    rng = np.random.default_rng(seed)
    tr = np.array_split(rng.permutation(len(xtr)), n)
    te = np.array_split(rng.permutation(len(xte)), n)
    sites = {
        SiteId(f"site-{k:03d}"): SiteData(
            train=ArrayDataset(x=xtr[tr[k]], y=ytr[tr[k]]), test=ArrayDataset(x=xte[te[k]], y=yte[te[k]])
        )
        for k in range(n)
    }
    return sites, ArrayDataset(x=xte, y=yte)


def train_round(n: int, rounds: int, mode: str, engine: OpenFheEngine | None, local_epochs: int) -> dict[str, float]:
    """R rounds of FedAvg with real local training (chest X-ray MLP, P ~ 1M); s/round, training time, accuracy."""
    sites, pooled = xray_sites(n)
    task = _TimedTask(MLPTask(n_features=784, hidden=(1024, 256)))
    nodes, engines = site_nodes(sites, task, engine if mode == "ckks" else None)
    channel = InProcessChannel({s: nd.handle for s, nd in nodes.items()}, max_workers=2)
    fit_config = {"lr": 1e-3, "optimizer": "adam", "batch_size": 32, "local_epochs": local_epochs}
    coordinator = Coordinator(
        channel=channel,
        strategy=FedAvg(fit_config=fit_config),
        task_name=task.name,
        task_hash=task_hash(task),  # type: ignore[arg-type]
        rounds=rounds,
        evaluate=False,
        fit_workflow=CkksWorkflow(backend=engine) if mode == "ckks" and engine is not None else None,
        round_timeout_s=3600,
    )
    spec = RunSpec(RunId("bench"), "bench", "pneumonia-iid", "fedavg", task.name, task_hash(task), 0, rounds)  # type: ignore[arg-type]
    x0 = task.init_model(np.random.default_rng(0))
    result = _run_then_close(coordinator, x0, spec, channel, engines)
    durations = [r.duration_s for r in result.rounds]
    fits = task.fits
    per_round = [fits[i : i + n] for i in range(0, len(fits), n)][1:] or [fits]  # rounds 2..R
    quality = task.evaluate(result.state.model, pooled)
    return {
        "params": float(sum(v.size for v in x0.values())),
        "round_s": statistics.median(durations[1:] if len(durations) > 1 else durations),
        "train_s_mean": statistics.fmean(fits),
        "train_s_slowest": statistics.median(max(r) for r in per_round),
        "accuracy": float(quality.metrics["accuracy"]),
        "auc": float(quality.metrics["auc"]),
    }


def train_workload(args: argparse.Namespace, engine: OpenFheEngine | None, costs: Mapping[str, float]) -> list[dict]:
    """FedAvg and CKKS with real training, alternated ``--repeats`` times; one row per (N, mode)."""
    rows: list[dict] = []
    print(
        f"{'N':>4} {'P':>9} {'mode':>8} {'s/round':>9} {'x fedavg':>9} {'train s':>8} {'deployed':>9} "
        f"{'x fedavg':>9} {'accuracy':>9}"
    )
    for n in args.sites:
        runs: dict[str, list[dict[str, float]]] = {"fedavg": [], "ckks": []}
        samples = [dict(costs)] if costs else []
        for _ in range(args.repeats):
            for mode in ("fedavg", "ckks") if engine is not None else ("fedavg",):
                runs[mode].append(train_round(n, args.rounds, mode, engine, args.local_epochs))
            if engine is not None:  # the per-ciphertext costs again, under the load of this repeat
                samples.append(op_costs(engine))
        if samples:
            costs = {k: statistics.median(c[k] for c in samples) for k in samples[0]}
            print(
                "per-ciphertext costs (median of the samples around the runs): "
                + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in costs.items() if k != "ciphertext_bytes")
            )
        base_sim = base_dep = 0.0
        # deployed, a site trains alone on its machine: the slowest site's training as measured in the
        # FedAvg runs (in the CKKS runs the simulated sites' training competes with the engine process)
        trained = statistics.median(g["train_s_slowest"] for g in runs["fedavg"])
        for mode, got in runs.items():
            if not got:
                continue
            row: dict[str, object] = {"sites": n, "mode": mode, "workload": "train", "repeats": got}
            p = int(got[0]["params"])
            sim = statistics.median(g["round_s"] for g in got)
            slowest = statistics.median(g["train_s_slowest"] for g in got)
            deployed = trained
            if mode == "ckks":
                est = deployed_estimate(n, p, engine.slots, costs)  # type: ignore[union-attr]
                row["deployed_estimate"] = est
                row["openfhe_costs"] = costs
                deployed += est["round_s_est"]
            else:
                base_sim, base_dep = sim, deployed
            row.update(
                params=p,
                round_s=sim,
                x_fedavg=sim / base_sim,
                train_s_slowest=slowest,
                deployed_round_s=deployed,
                deployed_x_fedavg=deployed / base_dep,
                accuracy=statistics.median(g["accuracy"] for g in got),
            )
            rows.append(row)
            print(
                f"{n:>4} {p:>9} {mode:>8} {sim:>9.2f} {sim / base_sim:>9.2f} {slowest:>8.2f} {deployed:>9.2f} "
                f"{deployed / base_dep:>9.2f} {row['accuracy']:>9.4f}"
            )
    return rows


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
    ap.add_argument(
        "--workload",
        choices=("protocol", "train"),
        default="protocol",
        help="protocol: no training (workload 1); train: chest X-ray MLP, P ~ 1M, real local training",
    )
    ap.add_argument("--local-epochs", type=int, default=1, help="train workload: local epochs per round")
    ap.add_argument("--repeats", type=int, default=2, help="train workload: FedAvg/CKKS runs alternated")
    ap.add_argument(
        "--engines",
        choices=("site", "shared"),
        default="site",
        help="site: one OpenFHE engine process per simulated site (as fedcare simulate); shared: one for all",
    )
    args = ap.parse_args()
    ENGINES["per_site"] = args.engines == "site"
    python = find_openfhe_python()
    engine = OpenFheEngine() if python else None
    costs: dict[str, float] = {}
    if engine is not None:
        costs = op_costs(engine)
        print(
            f"OpenFHE ring {engine.info['ring_dim']}, {engine.info.get('packing')} packing, "
            f"{engine.slots} values per ciphertext, log2 Q {engine.info['log_q']:.0f}; "
            f"per ciphertext: encrypt {costs['encrypt_s'] * 1e3:.1f} ms, fold {costs['fold_s'] * 1e3:.1f} ms/party, "
            f"take {costs['take_s'] * 1e3:.1f} ms, "
            f"partial {costs['partial_s'] * 1e3:.1f} ms, fuse {costs['fuse_s_per_party'] * 1e3:.1f} ms/party, "
            f"{costs['ciphertext_bytes'] / 1e3:.0f} kB"
        )
    else:
        print("no OpenFHE interpreter (make openfhe-env / FEDCARE_OPENFHE_PYTHON): CKKS not measured")
    rows: list[dict] = []
    if args.workload == "train":
        rows = train_workload(args, engine, costs)
        args.params = []
    else:
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
            {
                "benchmark": "he",
                "workload": args.workload,
                "rounds": args.rounds,
                "local_epochs": args.local_epochs if args.workload == "train" else None,
                "openfhe": engine.info if engine is not None else {},
                "engines": args.engines,
                "load_avg": os.getloadavg(),
                "openfhe_costs": costs,
                "rows": rows,
                "heart": heart,
            },
            default=float,
        )
    )


if __name__ == "__main__":
    main()
