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
