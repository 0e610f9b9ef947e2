"""Built-in tasks, resolved by name."""

from __future__ import annotations

from typing import Any

from fedcare.errors import ConfigError
from fedcare.task import Task
from fedcare.tasks.cnn import CnnTask
from fedcare.tasks.cox import CoxTask
from fedcare.tasks.logreg import LogisticRegressionTask
from fedcare.tasks.mlp import MLPTask

__all__ = ["BUILTIN_TASKS", "CnnTask", "CoxTask", "LogisticRegressionTask", "MLPTask", "make_task"]

#: name -> task class of each built-in task.
BUILTIN_TASKS: dict[str, type[Any]] = {
    LogisticRegressionTask.name: LogisticRegressionTask,
    CoxTask.name: CoxTask,
    MLPTask.name: MLPTask,
    CnnTask.name: CnnTask,
}


def make_task(name: str, **params: Any) -> Task:
    """Build the built-in task ``name`` with its architecture parameters."""
    try:
        cls = BUILTIN_TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; built in: {', '.join(sorted(BUILTIN_TASKS))}") from None
    task: Task = cls(**params)
    return task
