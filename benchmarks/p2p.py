#!/usr/bin/env python
"""Peer-to-peer rounds vs SecAgg+ vs plain FedAvg: bytes per site per round and seconds per round.

Workload 1 of BENCHMARKS.md (site k returns x + 1e-3 (k+1) with k+1 examples: no training,
so a round is pure protocol cost), R rounds of FedAvg over in-process sites for each N
(sites) x P (parameters), side by side in one run:

- ``fedavg``: plain FIT exchange (the coordinator sees every update);
- ``secagg+``: SecAggPlusWorkflow, default graph (complete up to 4 sites, degree
  ``2 ceil(log2 N)`` above), threshold 1/2, 16-bit fixed point: the coordinator unmasks the sum;
- ``p2p``: PeerToPeerFit (complete graph, threshold 1/2, same codec): every site unmasks and
  averages itself; the coordinator relays every masked vector to every site;
- ``p2p-sum``: the same with ``relay = "sum"``: the coordinator adds the masked vectors it
  cannot read and relays their sum (one vector down per site).

Per configuration: bytes a site sends (``up``) and receives (``down``) per round (array bytes
+ config, as the in-process channel passes them; the same count as benchmarks/secagg.py;
the last site by id, since in p2p the first also returns the final model once),
bytes the coordinator relays per round (all sites' ``down``), median s/round (rounds 2..R; all
sites share one machine, so the sites' work is serialised over its cores), max |error|
against the closed form. Last line: JSON.

    nice -n 10 env PYTHONPATH=src python benchmarks/p2p.py [--sites 3 10] [--params 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fedcare.runtime.coordinator import Coordinator  # noqa: E402
from fedcare.runtime.recorder import RunSpec  # noqa: E402
from fedcare.runtime.simulation import build_nodes  # noqa: E402
from fedcare.secure import FixedPointCodec, SecAggPlusWorkflow  # noqa: E402
from fedcare.secure.p2p import PeerToPeerFit  # noqa: E402
from fedcare.strategies import FedAvg  # noqa: E402
from fedcare.task import task_hash  # noqa: E402
from fedcare.transport import InProcessChannel  # noqa: E402
from fedcare.types import Message, RunId, SiteId  # noqa: E402
from secagg import Workload1Task, _payload_bytes, _sites  # noqa: E402  (the same workload and byte count)

MODES = ("fedavg", "secagg+", "p2p", "p2p-sum")


def run_mode(n: int, p: int, rounds: int, mode: str) -> dict[str, float]:
    """R rounds of ``mode``: bytes per site per round (up, down), relay bytes, median s/round, max |error|."""
    task = Workload1Task(p)
    nodes = build_nodes(_sites(n), task)
    up: dict[SiteId, int] = dict.fromkeys(nodes, 0)
    down: dict[SiteId, int] = dict.fromkeys(nodes, 0)

    def wrap(site: SiteId):
        handle = nodes[site].handle

        def counted(message: Message) -> Message:
            down[site] += _payload_bytes(message)
            reply = handle(message)
            up[site] += _payload_bytes(reply)
            return reply

        return counted

    channel = InProcessChannel({s: wrap(s) for s in nodes}, max_workers=2)
    codec = FixedPointCodec(clip_range=1.0, bits=16)
    workflow = {
        "fedavg": None,
        "secagg+": SecAggPlusWorkflow(codec=codec),
        "p2p": PeerToPeerFit(codec=codec),
        "p2p-sum": PeerToPeerFit(codec=codec, relay="sum"),
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
    site = sorted(nodes)[-1]  # not the first site, which in p2p also returns the final model once
    final = result.state.model["x"]
    if isinstance(workflow, PeerToPeerFit):  # every site's own copy, not only the released one
        copies = [node.site_state[RunId("bench")]["p2p_model"]["x"] for node in nodes.values()]
        assert all(np.array_equal(c, final) for c in copies)
    return {
        "round_s": statistics.median(durations[1:] if len(durations) > 1 else durations),
        "up_bytes_per_site": up[site] / rounds,
        "down_bytes_per_site": down[site] / rounds,
        "relay_bytes": sum(down.values()) / rounds,
        "max_abs_error": float(np.abs(final - expected).max()),
    }


def main() -> None:
    """Run every (N, P, mode) and print a table, then one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--params", type=int, nargs="+", default=[100_000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for n in args.sites:
        for p in args.params:
            for mode in MODES:
                r = run_mode(n, p, args.rounds, mode)
                rows.append({"sites": n, "params": p, "mode": mode, **r})
                print(
                    f"N={n:3d} P={p:8d} {mode:8s} up {r['up_bytes_per_site'] / 1e6:7.3f} MB  "
                    f"down {r['down_bytes_per_site'] / 1e6:7.3f} MB  relay {r['relay_bytes'] / 1e6:8.2f} MB  "
                    f"{r['round_s']:7.3f} s/round  err {r['max_abs_error']:.1e}",
                    flush=True,
                )
    print(json.dumps({"benchmark": "p2p", "rounds": args.rounds, "results": rows}))


if __name__ == "__main__":
    main()
