"""Connector and cohort-statistics throughput on the real sample files.

Runs: the FHIR connector on the 10 Synthea bundles (tests/fixtures/synthea), the DICOM
connector on pydicom's shipped scanner files, and site_aggregates + combine on a
synthetic 20-site, 200k-row table. Prints figures; the LAST line is JSON.

    PYTHONPATH=src python benchmarks/data_connectors.py
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    results: dict[str, float] = {}
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
    print("(measured on a shared 2-core machine under load; re-run for final figures)")
    print(json.dumps({k: round(v, 2) for k, v in results.items()}))


if __name__ == "__main__":
    main()
