"""One-run privacy audit (Steinke, Nasr & Jagielski, NeurIPS 2023) of fedcare's DP mechanisms.

For every setting, ``m`` Dirac canaries are each included with probability 1/2, the real
mechanism runs once (fedcare.privacy.dpsgd.train_dpsgd through Opacus for record-level DP;
fedcare.privacy.client_dp.ClientLevelDP / privatize_update for client-level DP), each
canary is scored by its own model coordinate, and the correct in/out guesses give an
empirical lower bound on ε at 95% confidence (fedcare.privacy.audit). The bound must stay
below the ε the accountant (Opacus RDP) claims; a "noise off" control (the same mechanism
with its noise switched off, the accountant's claim unchanged) shows what a broken
mechanism looks like. Prints one line per setting; the LAST line is JSON.

    PYTHONPATH=src python benchmarks/privacy_audit.py [--canaries 1000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from fedcare.privacy import client_dp
from fedcare.privacy.accounting import calibrate_noise_multiplier, epsilon_of
from fedcare.privacy.audit import audit_scores, client_dp_canary_scores, dpsgd_canary_scores
from fedcare.privacy.cost import Mechanism, PrivacyCost
from fedcare.privacy.plan import ClientDPMode

DELTA = 1e-5
EPSILONS = (1.0, 3.0, 8.0)
#: (name, mechanism, sample rate, steps): record level runs `steps` DP-SGD steps; client
#: level runs `steps` rounds with every site taking part (no amplification claimed).
SETTINGS: tuple[tuple[str, Mechanism, float, int], ...] = (
    ("record, full batch", Mechanism.DPSGD, 1.0, 4),
    ("record, Poisson q=0.2", Mechanism.DPSGD, 0.2, 20),
    ("client, central noise", Mechanism.CLIENT_CENTRAL, 1.0, 5),
    ("client, distributed noise", Mechanism.CLIENT_DISTRIBUTED, 1.0, 5),
)


def run(
    mechanism: Mechanism, q: float, steps: int, noise: float, included: np.ndarray, seed: int, *, noise_off: bool
) -> np.ndarray:
    """The canary scores of one run of ``mechanism`` (its noise optionally switched off)."""
    if mechanism is Mechanism.DPSGD:
        sigma = 0.0 if noise_off else noise
        return dpsgd_canary_scores(
            included, noise_multiplier=sigma, max_grad_norm=1.0, sample_rate=q, steps=steps, seed=seed
        )
    mode = ClientDPMode.CENTRAL if mechanism is Mechanism.CLIENT_CENTRAL else ClientDPMode.DISTRIBUTED
    if not noise_off:
        return client_dp_canary_scores(
            included, noise_multiplier=noise, clip_norm=1.0, rounds=steps, delta=DELTA, mode=mode, seed=seed
        )
    # the bug a test must catch: the mechanism forgets its noise while the accountant still charges for it
    saved_mean, saved_share = client_dp._NoisyMeanFold.mean, client_dp.ClientDP.share_std
    client_dp._NoisyMeanFold.mean = lambda self: self._inner.mean()  # type: ignore[method-assign]
    client_dp.ClientDP.share_std = property(lambda self: 0.0)  # type: ignore[method-assign,assignment]
    try:
        return client_dp_canary_scores(
            included, noise_multiplier=noise, clip_norm=1.0, rounds=steps, delta=DELTA, mode=mode, seed=seed
        )
    finally:
        client_dp._NoisyMeanFold.mean = saved_mean  # type: ignore[method-assign]
        client_dp.ClientDP.share_std = saved_share  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canaries", type=int, default=1000, help="canaries per run (m)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    rows: list[dict[str, Any]] = []
    violations = 0
    print(f"one-run DP audit: m = {args.canaries} canaries, delta = {DELTA}, 95% confidence")
    for name, mechanism, q, steps in SETTINGS:
        for target in (*EPSILONS, None):
            claimed = target if target is not None else 1.0  # the control claims ε = 1 with its noise off
            noise = calibrate_noise_multiplier(target_epsilon=claimed, delta=DELTA, sample_rate=q, steps=steps)
            accounted = epsilon_of([PrivacyCost(mechanism, noise, q, steps)], delta=DELTA)
            included = rng.random(args.canaries) < 0.5
            start = time.perf_counter()
            scores = run(mechanism, q, steps, noise, included, args.seed, noise_off=target is None)
            result = audit_scores(scores, included, delta=DELTA)
            seconds = time.perf_counter() - start
            broken = result.epsilon_lower > accounted
            violations += int(broken and target is not None)
            label = "NOISE OFF (control)" if target is None else f"target eps {target:g}"
            print(
                f"{name:26s} {label:20s} noise {noise:7.3f}  accounted eps {accounted:6.3f}  "
                f"audit lower bound {result.epsilon_lower:6.3f} ({result.correct}/{result.guesses} guesses)  "
                f"{'VIOLATION' if broken else 'ok'}  {seconds:.1f} s"
            )
            rows.append(
                {
                    "setting": name,
                    "noise_off": target is None,
                    "target_epsilon": claimed,
                    "noise_multiplier": round(noise, 4),
                    "sample_rate": q,
                    "steps": steps,
                    "accounted_epsilon": round(accounted, 4),
                    "epsilon_lower_bound": round(result.epsilon_lower, 4),
                    "guesses": result.guesses,
                    "correct": result.correct,
                    "violation": broken,
                    "seconds": round(seconds, 2),
                }
            )
    caught = sum(r["violation"] for r in rows if r["noise_off"])
    print(f"{violations} violation(s) with the noise on; noise-off controls caught: {caught}/{len(SETTINGS)}")
    print("(measured on a shared 2-core machine under load)")
    print(
        json.dumps(
            {
                "canaries": args.canaries,
                "delta": DELTA,
                "confidence": 0.95,
                "violations": violations,
                "noise_off_caught": caught,
                "runs": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
