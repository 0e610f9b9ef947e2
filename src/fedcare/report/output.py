"""Write an experiment's outputs atomically: nothing half-written on failure."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcare.report.html import render_report

__all__ = ["write_outputs"]


def _clean(value: Any) -> Any:
    """Replace NaN/Inf (not valid JSON) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_outputs(summary: Mapping[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``report.html`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = render_report(summary)  # render first: a failure leaves no file behind
    summary_path, report_path = out_dir / "summary.json", out_dir / "report.html"
    _atomic_write(summary_path, json.dumps(_clean(summary), indent=2, sort_keys=False))
    _atomic_write(report_path, report)
    return summary_path, report_path
