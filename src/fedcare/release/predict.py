"""Per-patient predictions from a release bundle: risk, and the features behind it.

Every input row is checked against the bundle's preprocessing (the study schema): a
missing value, a value that is not a number, or a category the model never saw names
its row, field and reason, and the other rows are still scored. Contributions:

* linear models (logistic regression): exact, ``w_j * x_j`` on the standardised inputs;
  they sum with the bias to the logit;
* neural networks: integrated gradients (Sundararajan et al., ICML 2017) through Captum,
  against the all-zero (= training mean) input; needs the ``clinic`` extra.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedcare.data.encode import RowProblem, encode_rows
from fedcare.data.fhir import FhirMapping, read_bundles
from fedcare.data.schema import CheckReport
from fedcare.errors import ConfigError, DataError
from fedcare.evaluation.recalibration import apply_platt
from fedcare.release.bundle import Bundle
from fedcare.release.onnx_export import torch_module

__all__ = ["PredictionReport", "RowProblem", "encode_rows", "predict_fhir", "predict_rows", "study_ranges"]


@dataclass
class PredictionReport:
    """Scored rows and refused rows of one input."""

    predictions: list[dict[str, Any]] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready mapping."""
        return {"predictions": self.predictions, "problems": [p.as_dict() for p in self.problems]}


def _linear(model: Mapping[str, npt.NDArray[Any]]) -> bool:
    return set(model) == {"weight", "bias"} and model["weight"].ndim == 2 and model["weight"].shape[0] == 1


def contributions(bundle: Bundle, x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float64], str]:
    """Per-row, per-feature contributions to the logit and the method's name."""
    if _linear(bundle.model):
        w = bundle.model["weight"].astype(np.float64)[0]
        return x.astype(np.float64) * w, "exact (w·x, sums with the bias to the logit)"
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        raise ConfigError(
            "feature contributions of a neural network need Captum: pip install 'fedcare[clinic]'"
        ) from None
    import torch

    module = torch_module(bundle.task, bundle.model)
    if module is None:
        raise ConfigError(f"task {bundle.task.name!r} has no torch module to explain")
    inputs = torch.from_numpy(np.ascontiguousarray(x))
    attr = IntegratedGradients(lambda t: module(t).reshape(-1)).attribute(inputs, baselines=torch.zeros_like(inputs))
    return attr.detach().double().numpy(), "integrated gradients (Captum), baseline = training mean"


def study_ranges(bundle: Bundle) -> dict[str, tuple[float | None, float | None]]:
    """The study schema's ``min``/``max`` per column, when the bundle carries the study."""
    columns = ((bundle.meta.get("study") or {}).get("spec") or {}).get("data", {}).get("columns", {})
    return {n: (c.get("min"), c.get("max")) for n, c in columns.items() if "min" in c or "max" in c}


def predict_rows(
    bundle: Bundle,
    frame: pd.DataFrame,
    *,
    top: int = 5,
    first_row: int = 1,
    labels: Sequence[str] | None = None,
    problems: Sequence[RowProblem] = (),
) -> PredictionReport:
    """Score each valid row of ``frame``; name each invalid row's field and reason.

    ``labels`` name the rows (FHIR: bundle and patient) instead of numbers; ``problems``
    found before (a FHIR bundle that could not be read) lead the report.
    """
    pre = bundle.preprocessing
    x, good, found = encode_rows(frame, pre, first_row=first_row, labels=labels, ranges=study_ranges(bundle))
    report = PredictionReport(problems=[*problems, *found])
    if not good:
        return report
    risk = np.asarray(bundle.task.predict(bundle.model, x), dtype=np.float64).ravel()
    contrib, method = contributions(bundle, x)
    names = list(pre.get("encoded", [])) or [f"x{j}" for j in range(x.shape[1])]
    bias = float(bundle.model["bias"].ravel()[0]) if _linear(bundle.model) else None
    recal = bundle.meta.get("calibration") or {}
    calibrated = apply_platt(risk, float(recal["a"]), float(recal["b"])) if "a" in recal else None
    for k, i in enumerate(good):
        order = np.argsort(-np.abs(contrib[k]))[:top]
        entry: dict[str, Any] = {
            "row": labels[i] if labels is not None else first_row + i,
            "risk": float(risk[k]),
            # Platt scaling fitted federatedly after the last round, where the study asked for it
            "calibrated_risk": float(calibrated[k]) if calibrated is not None else None,
            "contributions": {names[j]: float(contrib[k, j]) for j in order},
            "method": method,
        }
        if bias is not None:
            entry["logit"] = float(bias + contrib[k].sum())
            entry["bias"] = bias
        report.predictions.append(entry)
    return report


def predict_fhir(bundle: Bundle, path: Path, *, top: int = 5) -> PredictionReport:
    """Score the patients of a FHIR Bundle file or a folder of them, read by the site's FHIR connector.

    The columns come from the study's ``[data.fhir]`` mapping kept in the release bundle.
    A bundle that cannot be read or fails FHIR validation is reported with its file and
    location; a patient with a missing, malformed or out-of-range value is reported with
    bundle, patient, field and reason; every other patient is scored.

    Raises
    ------
    ConfigError
        The bundle's study has no FHIR mapping (it was not trained on FHIR data).
    """
    data = ((bundle.meta.get("study") or {}).get("spec") or {}).get("data", {})
    if not data.get("fhir"):
        raise ConfigError(
            "this model's study reads no FHIR data (no [data.fhir] mapping in the bundle): give a CSV of its predictors"
        )
    mapping = FhirMapping.from_mapping(data["fhir"])
    report = CheckReport()
    with tempfile.TemporaryDirectory() as tmp:
        folder = path
        if path.is_file():  # one bundle: the connector reads folders
            folder = Path(tmp)
            (folder / path.name).symlink_to(path.resolve())
        elif not path.is_dir():
            raise DataError(f"{path}: no such FHIR bundle or folder")
        raw = read_bundles(folder, mapping, report, needs=frozenset(bundle.preprocessing.get("features", [])))
    before = [RowProblem(p.source, p.location or "bundle", p.message) for p in report.problems]
    labels = [f"{b} (Patient {p})" for b, p in zip(raw["bundle"], raw["patient_id"], strict=True)]
    return predict_rows(bundle, raw.reset_index(drop=True), top=top, labels=labels, problems=before)
