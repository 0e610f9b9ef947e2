"""The Task contract: what a site runs on its own data, and the hash sites approve.

A task is code a site already has (built in, or a package it installed and reviewed).
The coordinator names a task and its content hash; a site runs it only when that hash
is on its approved list. The hash covers every file that decides what runs on the data
(the task package's files, the fedcare training code it imports, shipped weights) and its
parameters (:mod:`fedcare.task_manifest`), so any change to them changes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from fedcare.task_manifest import task_manifest
from fedcare.types import ConfigValue, EvalResult, FitResult, ModelState

__all__ = ["ArrayDataset", "FitContext", "RecordSource", "SiteData", "Task", "task_hash"]


@dataclass(frozen=True)
class ArrayDataset:
    """Features and targets as numpy arrays (rows are examples).

    ``y`` is a label vector for classification, or an ``(n, 2)`` array of
    (time, event) for survival tasks.
    """

    x: npt.NDArray[np.floating[Any]]
    y: npt.NDArray[Any]

    def __post_init__(self) -> None:
        """Check that features and targets have the same number of rows."""
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} rows but y has {len(self.y)}")

    def __len__(self) -> int:
        """Number of examples."""
        return len(self.x)

    def read(self, index: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """The records at ``index`` (the in-memory case of :class:`RecordSource`)."""
        return self.x[index]


@runtime_checkable
class RecordSource(Protocol):
    """Records read on demand, a batch at a time, for site data larger than memory.

    Targets (``y``) are small and held in memory; features are read by row index, so a
    task's memory is bounded by its batch size, not by the data set. :class:`ArrayDataset`
    is the in-memory case; :mod:`fedcare.data.streaming` reads DICOM folders and Parquet
    files. Tasks that accept one set ``streams = True`` (the adapter
    :class:`~fedcare.tasks.torch_adapter.TorchTask` does).
    """

    y: npt.NDArray[Any]

    def __len__(self) -> int:
        """Number of records."""
        ...

    def read(self, index: npt.NDArray[np.int64]) -> npt.NDArray[Any]:
        """Features of the records at ``index`` (in that order)."""
        ...


@dataclass(frozen=True)
class SiteData:
    """One site's local data: a training and a test split. It never leaves the site.

    Either split may be a :class:`RecordSource` (files read a batch at a time) for a task
    that streams; every other task gets arrays.
    """

    train: ArrayDataset
    test: ArrayDataset


@dataclass(frozen=True)
class FitContext:
    """What a node passes a task's ``fit`` besides the model (tasks opt in).

    A task whose class sets ``accepts_context = True`` gets ``fit(..., context=ctx)``.
    Strategies that need site-side state (SCAFFOLD's ``c_i``, a personal model) use it;
    a node refuses instructions carrying extra records for a task that does not opt in.

    Attributes
    ----------
    inputs : Mapping[str, ModelState]
        The instruction's records other than ``"model"`` (e.g. ``"scaffold_c"``),
        validated (finite, allowed dtypes) by the node.
    state : dict[str, ModelState]
        This site's memory for the current run, kept by the node between rounds and
        never sent anywhere. A task should write it only once its fit has succeeded.
    """

    inputs: Mapping[str, ModelState]
    state: dict[str, ModelState]


@runtime_checkable
class Task(Protocol):
    """A training plan: model factory, local fit, evaluation, prediction.

    Implementations must be deterministic given ``rng`` and must not modify the
    arrays they receive (the in-process channel shares read-only views).
    """

    #: Registry name, e.g. ``"logreg"``.
    name: str

    def params(self) -> Mapping[str, ConfigValue]:
        """Hyperparameters that define the task (part of its content hash)."""
        ...

    def init_model(self, rng: np.random.Generator) -> ModelState:
        """Return freshly initialised model parameters."""
        ...

    def fit(
        self,
        model: ModelState,
        data: ArrayDataset,
        config: Mapping[str, ConfigValue],
        rng: np.random.Generator,
    ) -> FitResult:
        """Train ``model`` on ``data`` and return the new state and sample count."""
        ...

    def evaluate(self, model: ModelState, data: ArrayDataset) -> EvalResult:
        """Evaluate ``model`` on ``data``; metrics computed at the site."""
        ...

    def predict(self, model: ModelState, x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """Return one score per row of ``x`` (probability or risk score)."""
        ...


def task_hash(task: Task) -> str:
    """Return the content hash a site approves: sha256 of the task's manifest.

    The manifest (:func:`fedcare.task_manifest.task_manifest`) lists the digests of the
    task package's files, of the fedcare modules it imports and of any extra files it
    names (weights), with the task's parameters.

    >>> from fedcare.tasks.logreg import LogisticRegressionTask
    >>> len(task_hash(LogisticRegressionTask(n_features=13)))
    64
    """
    return task_manifest(task).digest
