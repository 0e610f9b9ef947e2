"""Shared builders: a tiny synthetic task and sites (the shipped fakes for unit tests)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

from fedcare.task import ArrayDataset, SiteData
from fedcare.types import ConfigValue, EvalResult, FitResult, ModelState, SiteId


class ShiftTask:
    """Adds ``shift`` (config) + site offset to every parameter: closed-form FedAvg."""

    name = "shift"

    def __init__(self, size: int = 8) -> None:
        self.size = size

    def params(self) -> Mapping[str, ConfigValue]:
        return {"size": self.size}

    def init_model(self, rng: np.random.Generator) -> ModelState:
        return {"w": np.linspace(-1, 1, self.size, dtype=np.float32)}

    def fit(self, model, data: ArrayDataset, config, rng) -> FitResult:
        offset = float(data.x[0, 0])
        return FitResult(
            state={"w": model["w"] + np.float32(offset)}, num_examples=len(data), metrics={"train_loss": offset}
        )

    def evaluate(self, model, data: ArrayDataset) -> EvalResult:
        return EvalResult(loss=float(np.abs(model["w"]).mean()), num_examples=len(data), metrics={"accuracy": 0.5})

    def predict(self, model, x):
        return np.zeros(len(x))


def shift_sites(n: int) -> dict[SiteId, SiteData]:
    """Site k has k+1 rows whose feature is 1e-3 * (k+1) (the BENCHMARKS workload 1)."""
    sites = {}
    for k in range(n):
        x = np.full((k + 1, 1), 1e-3 * (k + 1), dtype=np.float32)
        ds = ArrayDataset(x=x, y=np.zeros(k + 1))
        sites[SiteId(f"site-{k:02d}")] = SiteData(train=ds, test=ds)
    return sites


@pytest.fixture
def shift_task() -> ShiftTask:
    return ShiftTask()
