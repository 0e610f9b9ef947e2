"""Flower's SecAgg+ on workload 2 of BENCHMARKS.md (run by benchmarks/secagg.py in a separate venv).

Usage (inside a venv with ``flwr[simulation]``, NOT fedcare's):
    python benchmarks/secagg_flower.py --sites 10 --params 100000 --rounds 3 --secure
Prints one JSON object on its last line: per-round fit seconds and the final-model check.
Flower's compatibility path: DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...)), LegacyContext,
legacy FedAvg, secaggplus_mod on the clients; 1 CPU per client actor.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
from flwr.client import ClientApp, NumPyClient  # noqa: E402
from flwr.client.mod import secaggplus_mod  # noqa: E402
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays  # noqa: E402
from flwr.server import LegacyContext, ServerApp, ServerConfig  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, required=True)
    ap.add_argument("--params", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secure", action="store_true")
    ap.add_argument("--num-shares", type=int, default=3)
    ap.add_argument("--threshold", type=int, default=2)
    args = ap.parse_args()
    n, p, rounds = args.sites, args.params, args.rounds
    x0 = np.linspace(-1, 1, p, dtype=np.float32)
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    final: list[np.ndarray] = []

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):
            starts[server_round] = time.perf_counter()
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            out = super().aggregate_fit(server_round, results, failures)
            ends[server_round] = time.perf_counter()
            if out[0] is not None:
                final[:] = parameters_to_ndarrays(out[0])
            return out

    class ShiftClient(NumPyClient):
        def __init__(self, k: int) -> None:
            self.k = k

        def fit(self, parameters, config):
            return [parameters[0] + np.float32(1e-3 * (self.k + 1))], self.k + 1, {}

    def client_fn(context: Context):
        return ShiftClient(int(context.node_config["partition-id"])).to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod] if args.secure else [])
    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context: Context) -> None:
        strategy = TimedFedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            initial_parameters=ndarrays_to_parameters([x0]),
        )
        ctx = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        fit_workflow = (
            SecAggPlusWorkflow(num_shares=args.num_shares, reconstruction_threshold=args.threshold)
            if args.secure
            else None
        )
        workflow = DefaultWorkflow(fit_workflow=fit_workflow) if fit_workflow else DefaultWorkflow()
        workflow(grid, ctx)

    wall = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=n,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    wall = time.perf_counter() - wall
    per_round = [ends[r] - starts[r] for r in sorted(ends) if r in starts]
    expected = x0 + rounds * 1e-3 * (2 * n + 1) / 3
    err = float(np.abs(final[0] - expected).max()) if final else float("nan")
    import flwr

    print(
        json.dumps(
            {
                "flwr": flwr.__version__,
                "sites": n,
                "params": p,
                "secure": args.secure,
                "round_s": per_round,
                "wall_s": wall,
                "max_abs_error": err,
                "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            }
        )
    )


if __name__ == "__main__":
    main()
