"""CPU time of one training step of the chest X-ray CNN in float32 and in bfloat16 autocast.

The shipped chest X-ray study trains with ``precision = "auto"``: bf16 where the CPU has
bf16 units, float32 elsewhere. This measures why: one step of the demo's network (16
channels, BatchNorm, batch 64 of 28x28 images, augmentation, Adam, one torch thread) in
each arithmetic, on this CPU as it is and with oneDNN held to older instruction sets
(``ONEDNN_MAX_CPU_ISA``: AVX-512 without BF16, AVX2), each in a fresh process. Best of 5
blocks of 30 steps, after 10 warm-up steps. Prints a table, then JSON on its last line.

Usage::

    PYTHONPATH=src python benchmarks/cnn_precision.py [--isa default AVX512_CORE AVX2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F  # noqa: N812

from fedcare.tasks.cnn import CnnTask, _random_affine
from fedcare.tasks.torch_common import native_bf16, training_arithmetic

WARMUP, BLOCKS, STEPS = 10, 5, 30


def step_ms(precision: str) -> float:
    """Best-of-blocks CPU milliseconds per training step of the demo's CNN in ``precision``."""
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 28, 28, generator=generator)
    y = (torch.rand(64, generator=generator) > 0.5).float()
    module = CnnTask(channels=16, norm="batch", dropout=0.2)._module()
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    blocks = []
    for block in range(BLOCKS + 1):  # block 0 warms up
        start = time.process_time()
        for _ in range(WARMUP if block == 0 else STEPS):
            with training_arithmetic(precision):
                logits = module(_random_affine(x, generator), generator)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if block:
            blocks.append((time.process_time() - start) / STEPS * 1000)
    return min(blocks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--isa", nargs="+", default=["default", "AVX512_CORE", "AVX2"], help="ONEDNN_MAX_CPU_ISA values")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps({"fp32": step_ms("fp32"), "bf16": step_ms("bf16")}))
        return
    rows = []
    for isa in args.isa:
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        if isa != "default":
            env["ONEDNN_MAX_CPU_ISA"] = isa
        done = subprocess.run(
            [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True
        )
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"isa": isa, **result, "bf16_over_fp32": result["bf16"] / result["fp32"]})
    print(f"{'oneDNN ISA':14s} {'fp32 ms':>8s} {'bf16 ms':>8s} {'bf16/fp32':>9s}")
    for r in rows:
        print(f"{r['isa']:14s} {r['fp32']:8.1f} {r['bf16']:8.1f} {r['bf16_over_fp32']:9.2f}")
    print(
        json.dumps(
            {
                "benchmark": "cnn_precision",
                "cpu_has_bf16_units": native_bf16(),
                "load_average": os.getloadavg()[0],
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
