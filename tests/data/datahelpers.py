"""Shared constants and helpers of the data-connector tests (imported by name; conftest holds fixtures)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pydicom

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SYNTHEA = FIXTURES / "synthea"
#: pydicom's wheel ships real scanner files here (read directly; get_testdata_files() would download).
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def tree_hashes(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of ``path`` itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


HEART_COLUMNS = "age,sex,cp,trestbps,chol,fbs,restecg,thalach,exang,oldpeak,slope,ca,thal,num".split(",")
HEART_FILES = {
    "cleveland": "processed.cleveland.data",
    "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data",
    "va-long-beach": "processed.va.data",
}
#: The study schema of the UCI heart-disease files (values as in heart-disease.names).
HEART_SCHEMA = """
[schema]
target = "num"
[schema.columns.age]
min = 0
max = 100
[schema.columns.sex]
type = "category"
codes = [0, 1]
[schema.columns.cp]
type = "category"
codes = [1, 2, 3, 4]
[schema.columns.trestbps]
min = 0
max = 250
[schema.columns.chol]
min = 0
max = 700
[schema.columns.fbs]
type = "boolean"
[schema.columns.thalach]
min = 50
max = 250
[schema.columns.oldpeak]
min = -5
max = 10
[schema.columns.num]
type = "category"
codes = [0, 1, 2, 3, 4]
"""


def write_heart_csvs(folder: Path) -> dict[str, Path]:
    """The four shipped UCI files as header CSVs (one per hospital) plus a pooled one with a ``hospital`` column."""
    from importlib import resources

    root = resources.files("fedcare.datasets.heart_disease")
    header = ",".join(HEART_COLUMNS)
    out, pooled = {}, [header + ",hospital"]
    for site, name in HEART_FILES.items():
        lines = (root / name).read_text().strip().splitlines()
        out[site] = folder / f"{site}.csv"
        out[site].write_text("\n".join([header, *lines]) + "\n")
        pooled += [f"{line},{site}" for line in lines]
    out["pooled"] = folder / "pooled.csv"
    out["pooled"].write_text("\n".join(pooled) + "\n")
    return out
