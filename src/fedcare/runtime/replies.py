"""What the Coordinator's fit phases share: per-site seeds and validation of fit replies.

Kept apart from the Coordinator so that every fit workflow (plain, buffered
asynchronous) validates a reply the same way.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping

import numpy as np

from fedcare.compression import COMPRESSED_RECORD, decompress_update
from fedcare.errors import SerdeError
from fedcare.serde import StateSpec, check_state
from fedcare.types import FitResult, Message, Metrics, ModelState, SiteId

__all__ = ["finite_metrics", "fit_result", "site_seed"]


def site_seed(seed: int, round_no: int, site: SiteId) -> int:
    """Derive the seed a site uses in a round: stable across processes and orders."""
    entropy = [seed, round_no, zlib.crc32(site.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


def finite_metrics(metrics: Mapping[str, float], where: str) -> Metrics:
    """Check that every metric is a finite number; return them as floats."""
    out: Metrics = {}
    for key, value in metrics.items():
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise SerdeError(f"{where}: metric {key!r} is not a finite number")
        out[key] = float(value)
    return out


def fit_result(reply: Message, spec: StateSpec, reference: ModelState | None = None) -> FitResult:
    """Validate a fit reply; a ``"compressed"`` record is decoded against ``reference``."""
    where = f"fit reply from {reply.site}"
    model = reply.payload.arrays.get("model")
    packed = reply.payload.arrays.get(COMPRESSED_RECORD)
    if model is None and packed is not None and reference is not None:
        check_state(packed, where=f"{where}, record {COMPRESSED_RECORD!r}")
        model = decompress_update(packed, reference, where=where)
    if model is None:
        raise SerdeError(f"{where}: no 'model' record")
    check_state(model, spec, where=where)
    metrics = finite_metrics(reply.payload.metrics, where)
    num_examples = metrics.pop("num_examples", 0.0)
    if num_examples < 1 or num_examples != int(num_examples):
        raise SerdeError(f"{where}: num_examples must be a positive integer, got {num_examples}")
    extras = {k: v for k, v in reply.payload.arrays.items() if k not in ("model", COMPRESSED_RECORD)}
    for name, arrays in extras.items():
        check_state(arrays, where=f"{where}, record {name!r}")
    return FitResult(state=model, num_examples=int(num_examples), metrics=metrics, extras=extras)
