"""From model to clinic: release bundles with a model card, and per-patient predictions."""

from fedcare.release.bundle import Bundle, build_bundle, load_bundle
from fedcare.release.predict import PredictionReport, predict_rows

__all__ = ["Bundle", "PredictionReport", "build_bundle", "load_bundle", "predict_rows"]
