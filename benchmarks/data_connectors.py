"""Connector and cohort-statistics throughput, CSV peak memory, and time to the first error.

Runs (``--only`` picks some):

* ``connectors``: the FHIR connector on the 10 Synthea bundles (tests/fixtures/synthea),
  the DICOM connector on pydicom's shipped scanner files, and site_aggregates + combine
  on a synthetic 20-site, 200k-row table.
* ``csv_memory``: peak resident memory (the child process's ru_maxrss) of ``fedcare data
  check`` and of a site's training load (``load_site_data``) on synthetic CSV files of
  growing size (``--csv-mb``), next to the whole-file text read the connector did before
  (``pandas.read_csv(dtype=str)`` + ``check_frame``), and the size of the parsed numbers.
* ``first_error``: wall and CPU time of ``fedcare simulate`` with a study whose
  ``rounds = 0`` (a one-line error), of ``fedcare server`` with a bad server file, and of
  ``fedcare --help`` for reference (best of ``--repeat`` runs, each a fresh process).

Prints figures; the LAST line is JSON.

    PYTHONPATH=src python benchmarks/data_connectors.py [--only csv_memory first_error] [--csv-mb 25 50 100 200]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom

from fedcare.data.config import parse_site_config
from fedcare.data.connect import check_site
from fedcare.data.schema import StudySchema
from fedcare.data.stats import StatsSpec, combine, site_aggregates
from fedcare.types import SiteId

ROOT = Path(__file__).resolve().parents[1]
SYNTHEA = ROOT / "tests" / "fixtures" / "synthea"
DICOM = Path(pydicom.__file__).parent / "data" / "test_files"
SCHEMA = {
    "target": "y",
    "columns": {
        "age": {"type": "number", "min": 0, "max": 120},
        "sbp": {"type": "number", "min": 50, "max": 250},
        "sex": {"type": "category", "codes": ["female", "male"]},
        "y": {"type": "boolean"},
    },
}


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def connectors(results: dict[str, Any]) -> None:
    """FHIR, DICOM and cohort-statistics throughput."""
    fhir = parse_site_config(
        {
            "site": {"id": "s"},
            "source": {"kind": "fhir", "path": str(SYNTHEA)},
            "fhir": {"reference_date": "2021-06-01", "observations": {"bmi": "39156-5"}},
            "schema": {
                "target": "sex",
                "columns": {"age": {}, "bmi": {}, "sex": {"type": "category", "codes": ["female", "male"]}},
            },
        }
    )
    check_site(fhir)  # warm-up: imports and model building
    t = best_of(lambda: check_site(fhir))
    mb = sum(p.stat().st_size for p in SYNTHEA.glob("*.json")) / 1e6
    results["fhir_bundles_per_s"] = 10 / t
    results["fhir_mb_per_s"] = mb / t
    print(f"FHIR: 10 Synthea bundles ({mb:.1f} MB) checked in {t:.2f} s -> {10 / t:.1f} bundles/s, {mb / t:.1f} MB/s")

    names = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "CT_small.dcm", "JPEG2000.dcm"] * 4
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "img"
        folder.mkdir()
        rows = []
        for i, name in enumerate(names):
            shutil.copy(DICOM / name, folder / f"{i:03d}_{name}")
            rows.append(f"{i:03d}_{name},{i % 2}")
        (Path(tmp) / "labels.csv").write_text("file,y\n" + "\n".join(rows) + "\n")
        dicom = parse_site_config(
            {
                "site": {"id": "s"},
                "source": {"kind": "dicom", "path": str(folder), "labels": str(Path(tmp) / "labels.csv")},
                "schema": {"target": "y", "columns": {"y": {"type": "category", "codes": [0, 1]}}},
            }
        )
        check_site(dicom)
        t = best_of(lambda: check_site(dicom))
    results["dicom_images_per_s"] = rate = len(names) / t
    print(f"DICOM: {len(names)} files (MR/RLE/JPEG2000/CT, resized to 64x64) in {t:.2f} s -> {rate:.0f} images/s")

    schema = StudySchema.from_mapping(SCHEMA)
    rng = np.random.default_rng(0)
    frames = {
        SiteId(f"site-{i:02d}"): pd.DataFrame(
            {
                "age": rng.uniform(0, 100, 10_000),
                "sbp": rng.normal(130, 20, 10_000),
                "sex": rng.choice(["female", "male"], 10_000),
                "y": rng.integers(0, 2, 10_000).astype(float),
            }
        )
        for i in range(20)
    }
    spec = StatsSpec()
    t = best_of(lambda: combine(spec.layout(schema), {s: site_aggregates(f, schema, spec) for s, f in frames.items()}))
    results["stats_rows_per_s"] = 200_000 / t
    print(f"stats: 20 sites x 10k rows summarised and combined in {t * 1e3:.0f} ms -> {200_000 / t / 1e6:.1f} M rows/s")


#: The synthetic site table: 10 numbers, one category, the target, and an undeclared text column.
NUMBERS = [f"x{i}" for i in range(10)]
CSV_SCHEMA = (
    "[schema]\ntarget = 'y'\n[schema.columns]\n"
    + "".join(f"{n} = {{ type = 'number', min = -1000, max = 1000 }}\n" for n in NUMBERS)
    + "sex = { type = 'category', codes = ['female', 'male'] }\ny = { type = 'integer', min = 0, max = 1 }\n"
)


def _write_csv(path: Path, megabytes: float) -> int:
    """A CSV of about ``megabytes`` MB (a 4 MB block of random rows repeated); returns its rows."""
    rng = np.random.default_rng(0)
    rows = 40_000
    block = pd.DataFrame({n: rng.normal(0, 50, rows).round(3) for n in NUMBERS})
    block["sex"] = rng.choice(["female", "male"], rows)
    block["y"] = rng.integers(0, 2, rows)
    block["hospital"] = rng.choice(["north", "south", "east"], rows)
    text = block.to_csv(index=False)
    header, body = text.split("\n", 1)
    copies = max(1, round(megabytes * 1e6 / len(body)))
    with open(path, "w") as fh:
        fh.write(header + "\n")
        for _ in range(copies):
            fh.write(body)
    return rows * copies


#: Runs the measured command from a small process: Linux's ru_maxrss of a child starts at
#: the RSS of the process that forked it, so forking from this one (pandas loaded) would
#: inflate every figure by ~100 MB.
LAUNCHER = """
import json, os, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    os.execv(argv[0], argv)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as fh:
    json.dump([usage.ru_maxrss, usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status)], fh)
"""


def _peak(argv: list[str], cwd: Path) -> tuple[float, float, float, str]:
    """Run ``argv``; return (peak RSS MB, wall s, CPU s, stderr's last line) of that one process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    report = cwd / ".usage.json"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, str(report), *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    maxrss_kb, cpu, _ = json.loads(report.read_text())
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return maxrss_kb / 1024, wall, cpu, last


WHOLE_TEXT = """
import sys
from pathlib import Path
import pandas as pd
from fedcare.data.check import check_frame
from fedcare.data.schema import CheckReport
from fedcare.study.site import load_site
cfg = load_site(sys.argv[1]).data_config(None)
text = pd.read_csv(cfg.path, dtype=str, keep_default_na=False, na_values=['', 'NA', '?'])
frame = check_frame(text, cfg.schema, source=cfg.path.name, report=CheckReport())
print(len(frame))
"""

TRAINING_LOAD = """
import sys
from fedcare.build.site import load_site_data
from fedcare.study.spec import load_study
from fedcare.study.site import load_site
inputs = load_site_data(load_site(sys.argv[1]), load_study(sys.argv[2]))
print(len(inputs.data.train))
"""


def csv_memory(results: dict[str, Any], sizes: list[float]) -> None:
    """Peak memory of data check and of a site's training load as the CSV grows."""
    python = sys.executable
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "site.toml").write_text(f"[site]\nid = 'big'\n[data]\nkind = 'csv'\npath = 'site.csv'\n{CSV_SCHEMA}")
        (folder / "study.toml").write_text(
            "[study]\nname = 'big'\n[task]\nname = 'logreg'\n[data]\ntarget = 'y'\npositive = [1]\n"
            "[data.columns]\n"
            + "".join(f"{n} = {{ type = 'number', min = -1000, max = 1000 }}\n" for n in NUMBERS)
            + "sex = { type = 'category', codes = ['female', 'male'] }\ny = { type = 'integer', min = 0, max = 1 }\n"
            "[federation]\nrounds = 1\n"
        )
        for mb in sizes:
            n = _write_csv(folder / "site.csv", mb)
            size = (folder / "site.csv").stat().st_size / 1e6
            numbers = n * (len(NUMBERS) + 2) * 8 / 1e6  # the schema's columns as float64
            check = _peak([python, "-m", "fedcare", "data", "check", "--config", "site.toml"], folder)
            load = _peak([python, "-c", TRAINING_LOAD, "site.toml", "study.toml"], folder)
            whole = _peak([python, "-c", WHOLE_TEXT, "site.toml"], folder)
            row = {
                "file_mb": round(size, 1),
                "rows": n,
                "parsed_numbers_mb": round(numbers, 1),
                "data_check_peak_mb": round(check[0], 1),
                "data_check_s": round(check[1], 1),
                "training_load_peak_mb": round(load[0], 1),
                "whole_text_read_peak_mb": round(whole[0], 1),
            }
            rows_out.append(row)
            print(
                f"CSV {size:6.1f} MB, {n:>9,} rows (numbers {numbers:6.1f} MB): data check peak {check[0]:7.1f} MB "
                f"in {check[1]:5.1f} s; training load peak {load[0]:7.1f} MB; whole-file text read (before) "
                f"{whole[0]:7.1f} MB"
            )
    results["csv_memory"] = rows_out
    if len(rows_out) > 1:
        a, b = rows_out[0], rows_out[-1]
        grow = (b["data_check_peak_mb"] - a["data_check_peak_mb"]) / (b["file_mb"] - a["file_mb"])
        grow_load = (b["training_load_peak_mb"] - a["training_load_peak_mb"]) / (b["file_mb"] - a["file_mb"])
        grow_text = (b["whole_text_read_peak_mb"] - a["whole_text_read_peak_mb"]) / (b["file_mb"] - a["file_mb"])
        per_number = (b["data_check_peak_mb"] - a["data_check_peak_mb"]) / (
            b["parsed_numbers_mb"] - a["parsed_numbers_mb"]
        )
        results["csv_rss_growth_mb_per_file_mb"] = {
            "data_check": round(grow, 2),
            "training_load": round(grow_load, 2),
            "whole_text_read": round(grow_text, 2),
        }
        results["csv_data_check_growth_per_parsed_number_mb"] = round(per_number, 2)
        print(
            f"RSS growth per MB of file: data check {grow:.2f}, training load {grow_load:.2f}, whole text read "
            f"{grow_text:.2f}; data check per MB of parsed numbers {per_number:.2f}"
        )


def first_error(results: dict[str, Any], repeat: int) -> None:
    """Time from start to the one-line error of a bad study / server file (fresh process each time)."""
    python = sys.executable
    heart = ROOT / "examples" / "heart-study"
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "study.toml").write_text((heart / "study.toml").read_text().replace("rounds = 20", "rounds = 0"))
        (folder / "server.toml").write_text(
            "[server]\nlisten = '127.0.0.1:0'\nca = 'ca.pem'\ncert = 'hub.pem'\nkey = 'hub.key'\n"
            "allowed_sites = ['a']\nwait_timeout_s = -3\naudit_log = 'a.jsonl'\n[store]\nurl = 'sqlite:///hub.db'\n"
        )
        site = str(heart / "sites" / "cleveland.toml")
        runs = {
            "simulate_bad_study": [python, "-m", "fedcare", "simulate", "--study", "study.toml", "--site", site]
            + ["--out", "out"],
            "server_bad_config": [python, "-m", "fedcare", "server", "--config", "server.toml"],
            "help": [python, "-m", "fedcare", "--help"],
        }
        for name, argv in runs.items():
            best = min((_peak(argv, folder) for _ in range(repeat)), key=lambda r: r[2])
            out[name] = {"wall_s": round(best[1], 2), "cpu_s": round(best[2], 2), "peak_mb": round(best[0], 1)}
            print(f"{name:20s} wall {best[1]:5.2f} s, CPU {best[2]:5.2f} s, peak {best[0]:6.1f} MB  | {best[3][:90]}")
    results["first_error"] = out


def main() -> None:
    parser = argparse.ArgumentParser(description="fedcare data connector benchmarks")
    parser.add_argument("--only", nargs="+", choices=["connectors", "csv_memory", "first_error"])
    parser.add_argument("--csv-mb", nargs="+", type=float, default=[25, 50, 100, 200])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    only = set(args.only or ["connectors", "csv_memory", "first_error"])
    results: dict[str, Any] = {}
    if "connectors" in only:
        connectors(results)
    if "first_error" in only:
        first_error(results, args.repeat)
    if "csv_memory" in only:
        csv_memory(results, args.csv_mb)
    print(f"(measured on a shared 2-core machine, load average {os.getloadavg()[0]:.1f}; re-run for final figures)")
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in results.items()}))


if __name__ == "__main__":
    main()
