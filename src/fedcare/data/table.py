"""Tabular connector: CSV and Parquet exports read as they are, checked against the schema.

CSV cells are read as text (``dtype=str``) so that a value such as ``"forty"`` in a
numeric column is reported with its row instead of silently turning the column into
text or NaN; :func:`fedcare.data.schema.check_frame` then coerces each column to its
declared type. Parquet keeps its stored types (read with pyarrow) and goes through the
same check. Files are opened read-only and never written.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fedcare.data.schema import CheckReport

__all__ = ["DEFAULT_NA", "read_csv", "read_parquet"]

#: Cell texts read as missing values in CSV files (``[source] na_values`` overrides).
DEFAULT_NA: tuple[str, ...] = ("", "NA", "N/A", "NaN", "nan", "null", "NULL", "?")


def read_csv(
    path: Path, report: CheckReport, *, delimiter: str = ",", na_values: Sequence[str] = DEFAULT_NA
) -> pd.DataFrame | None:
    """Read a CSV file as text cells; an unreadable file is a problem named in ``report``."""
    try:
        frame = pd.read_csv(path, dtype=str, sep=delimiter, keep_default_na=False, na_values=list(na_values))
    except FileNotFoundError:
        report.add(path.name, "", f"does not exist ({path})")
        return None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        report.add(path.name, "", f"cannot be read as CSV: {str(exc).splitlines()[0]}")
        return None
    report.sources[path.name] = len(frame)
    return frame


def read_parquet(path: Path, report: CheckReport) -> pd.DataFrame | None:
    """Read a Parquet file with pyarrow; an unreadable file is a problem named in ``report``."""
    import pyarrow as pa

    try:
        frame = pd.read_parquet(path, engine="pyarrow")
    except FileNotFoundError:
        report.add(path.name, "", f"does not exist ({path})")
        return None
    except (pa.ArrowException, OSError, ValueError) as exc:
        report.add(path.name, "", f"cannot be read as Parquet: {str(exc).splitlines()[0]}")
        return None
    report.sources[path.name] = len(frame)
    return frame
