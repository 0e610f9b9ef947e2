"""Long fuzz run of every decoder: cases per second, total cases, escapes (must be zero).

The same targets and mutators as ``tests/robustness/test_fuzz_decoders.py`` (Hypothesis,
10,000 cases per decoder in CI), here driven by a seeded ``random.Random`` for as long as
asked. An *escape* is any exception other than a ``FedcareError`` (or a broken invariant
such as a damaged site-memory file left in place). Prints one line per decoder; the LAST
line is JSON.

    python benchmarks/fuzz.py --cases 50000            # per decoder
    python benchmarks/fuzz.py --seconds 60 --only serde.decode_state
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.robustness.targets import TARGETS, run_case, scratch_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20_000, help="cases per decoder (default 20,000)")
    parser.add_argument("--seconds", type=float, default=None, help="instead: run each decoder this long")
    parser.add_argument("--seed", type=int, default=0, help="first case seed (cases are seed, seed+1, ...)")
    parser.add_argument("--only", nargs="*", default=None, help="decoders to run (default: all)")
    args = parser.parse_args()
    names = args.only or list(TARGETS)
    results: dict[str, dict[str, object]] = {}
    for name in names:
        target = TARGETS[name]
        workdir = scratch_dir()
        try:
            seed_blob = target.seed(workdir)
            assert run_case(target, seed_blob, workdir) is None, f"{name}: the valid seed input does not decode"
            escapes: dict[str, int] = {}
            example: dict[str, int] = {}
            cases, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
            while True:
                if args.seconds is None and cases >= args.cases:
                    break
                if args.seconds is not None and time.perf_counter() - wall0 >= args.seconds:
                    break
                case = args.seed + cases
                escape = run_case(target, target.mutate(seed_blob, random.Random(case)), workdir)
                cases += 1
                if escape:
                    key = escape[:100]
                    escapes[key] = escapes.get(key, 0) + 1
                    example.setdefault(key, case)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        results[name] = {
            "cases": cases,
            "cases_per_s": round(cases / wall, 1),
            "cpu_ms_per_case": round(1e3 * cpu / max(cases, 1), 3),
            "escapes": sum(escapes.values()),
            "escape_kinds": {k: {"count": v, "first_case": example[k]} for k, v in escapes.items()},
        }
        print(
            f"{name:24s} {cases:8d} cases  {cases / wall:8.0f} cases/s  "
            f"{1e3 * cpu / max(cases, 1):6.2f} ms CPU/case  escapes {sum(escapes.values())}",
            flush=True,
        )
        for key, count in escapes.items():
            print(f"    {count:6d} x {key} (first case {example[key]})", flush=True)
    total = sum(int(r["escapes"]) for r in results.values())  # type: ignore[call-overload]
    print(json.dumps({"benchmark": "fuzz", "decoders": results, "total_escapes": total}))


if __name__ == "__main__":
    main()
