"""Per-site evaluation a clinician can trust: calibration and subgroup metrics."""

from fedcare.evaluation.calibration import calibration_report, expected_calibration_error, reliability_curve
from fedcare.evaluation.subgroups import subgroup_metrics

__all__ = ["calibration_report", "expected_calibration_error", "reliability_curve", "subgroup_metrics"]
