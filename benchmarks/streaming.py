"""Streaming site data: RSS growth while training on DICOM folders of 500 / 2,000 / 8,000 images.

For each size, pydicom writes a folder of 28x28 8-bit chest X-rays (PneumoniaMNIST
training images, repeated when more are needed) with a label table; then, in a fresh
child process, a :class:`fedcare.tasks.torch_adapter.TorchTask` CNN trains one epoch on
:class:`fedcare.data.streaming.DicomFolder` (batches of 32 read from the files as needed)
while a thread samples the process's RSS every 20 ms. Reported: RSS before training
(after the task, the label table and one warm-up step), the peak during training, the growth,
and the images read per second. With streaming the growth should not depend on the
number of images; the in-memory figure beside it is what holding the decoded images as
one float32 array would take.

Usage::

    PYTHONPATH=src python benchmarks/streaming.py [--sizes 500 2000 8000] [--workdir DIR]

Prints one line per size and JSON on its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def generate(folder: Path, n: int) -> float:
    """Write ``n`` DICOM files (repeating the training images); return seconds taken."""
    from fedcare.data.streaming import write_dicom_folder
    from fedcare.datasets.pneumonia import load_arrays

    arrays = load_arrays()
    reps = np.arange(n) % len(arrays["train_images"])
    started = time.perf_counter()
    write_dicom_folder(folder, arrays["train_images"][reps], arrays["train_labels"][reps].reshape(-1))
    return time.perf_counter() - started


def train_child(folder: Path) -> dict[str, float]:
    """One epoch over ``folder`` (run in a fresh process so RSS starts clean)."""
    import torch

    from fedcare.data.streaming import DicomFolder
    from fedcare.tasks.torch_adapter import TorchTask

    torch.set_num_threads(1)

    def net() -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(16, 1),
            torch.nn.Flatten(0),
        )

    task = TorchTask(name="stream-bench", model=net, loss=torch.nn.BCEWithLogitsLoss(), input_shape=(1, 28, 28))
    data = DicomFolder(folder, folder / "labels.csv", size=(28, 28))
    model = task.init_model(np.random.default_rng(0))
    # warm-up: one step on one batch, so torch's and pydicom's one-time allocations (thread
    # pools, autograd buffers, lazy imports) are in the baseline, not in the growth
    task.fit(model, data, {"batch_size": 32, "local_steps": 1}, np.random.default_rng(1))  # type: ignore[arg-type]
    baseline = _rss_mb()
    peak = [baseline]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = task.fit(model, data, {"batch_size": 32, "local_epochs": 1}, np.random.default_rng(0))  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], _rss_mb())
    return {
        "images": float(len(data)),
        "rss_before_mb": round(baseline, 1),
        "rss_peak_mb": round(peak[0], 1),
        "rss_growth_mb": round(peak[0] - baseline, 1),
        "train_seconds": round(seconds, 1),
        "images_per_second": round(len(data) / seconds, 1),
        "train_loss": round(float(result.metrics["train_loss"]), 4),
        "in_memory_float32_mb": round(len(data) * 28 * 28 * 4 / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--workdir", type=Path, default=None, help="Where the DICOM folders go (default: a temp dir).")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(train_child(args.child)))
        return
    root = args.workdir or Path(tempfile.mkdtemp(prefix="fedcare-stream-"))
    rows = []
    for n in args.sizes:
        folder = root / f"dicom-{n}"
        written = generate(folder, n) if not (folder / "labels.csv").exists() else 0.0
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(folder)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ},
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["write_seconds"] = round(written, 1)
        rows.append(row)
        print(
            f"{n:>6} images: RSS {row['rss_before_mb']} -> peak {row['rss_peak_mb']} MB "
            f"(growth {row['rss_growth_mb']} MB; decoded in memory would be {row['in_memory_float32_mb']} MB), "
            f"{row['images_per_second']} images/s, written in {row['write_seconds']} s",
            flush=True,
        )
    growth = [r["rss_growth_mb"] for r in rows]
    summary = {
        "benchmark": "streaming",
        "sizes": args.sizes,
        "rss_growth_mb": growth,
        "growth_spread_mb": round(max(growth) - min(growth), 1),
        "rows": rows,
        "cpu_count": os.cpu_count(),
        "note": "shared machine (other jobs running); one epoch, batch 32, 1 torch thread",
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
