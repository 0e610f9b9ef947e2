"""Tasks by name: built-in ones and installed task packages, found through entry points.

A task package registers a factory (a Task class or a function returning a Task) in
the ``fedcare.tasks`` entry-point group of its ``pyproject.toml``::

    [project.entry-points."fedcare.tasks"]
    xray-resnet = "xray_task:make_task"

fedcare's own tasks are registered the same way. When fedcare's installed metadata does
not list them yet (a source checkout used through ``PYTHONPATH`` or an editable install
made before the entry points were added), the built-in table :data:`BUILTIN_TASKS` stands
in for them. Two distributions claiming the same name are refused by name, never resolved
by load order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from fedcare.errors import ConfigError
from fedcare.task import Task
from fedcare.tasks.cnn import CnnTask
from fedcare.tasks.cox import CoxTask
from fedcare.tasks.logreg import LogisticRegressionTask
from fedcare.tasks.mlp import MLPTask

__all__ = [
    "BUILTIN_TASKS",
    "ENTRY_POINT_GROUP",
    "CnnTask",
    "CoxTask",
    "LogisticRegressionTask",
    "MLPTask",
    "TaskEntry",
    "make_task",
    "task_entries",
    "task_factory",
]

#: Entry-point group task packages register their factories in.
ENTRY_POINT_GROUP = "fedcare.tasks"

#: name -> task class of each built-in task (the fallback when metadata lacks them).
BUILTIN_TASKS: dict[str, type[Any]] = {
    LogisticRegressionTask.name: LogisticRegressionTask,
    CoxTask.name: CoxTask,
    MLPTask.name: MLPTask,
    CnnTask.name: CnnTask,
}


@dataclass(frozen=True)
class TaskEntry:
    """One registered task: where its factory is and which distribution ships it.

    Attributes
    ----------
    name : str
        Registry name (the entry point's name).
    target : str
        ``module:attribute`` of the factory.
    distribution : str
        The distribution that registered it (``fedcare`` for built-ins).
    version : str
        That distribution's version.
    conflicts : tuple[str, ...]
        Other distributions registering the same name (the name is then unusable).
    """

    name: str
    target: str
    distribution: str
    version: str
    conflicts: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        """``built-in`` or ``package <distribution> <version>``."""
        if self.distribution == "fedcare":
            return "built-in"
        return f"package {self.distribution} {self.version}".strip()


def _fedcare_version() -> str:
    try:
        return metadata.version("fedcare")
    except metadata.PackageNotFoundError:  # pragma: no cover - a bare source tree
        return ""


def task_entries() -> dict[str, TaskEntry]:
    """Every registered task by name (installed packages and built-ins), sorted by name."""
    found: dict[str, list[TaskEntry]] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.metadata["Name"] if ep.dist is not None else ""
        version = ep.dist.version if ep.dist is not None else ""
        entry = TaskEntry(name=ep.name, target=ep.value, distribution=dist or "", version=version or "")
        same = found.setdefault(ep.name, [])
        if not any(e.distribution == entry.distribution for e in same):  # one dist seen twice on sys.path
            same.append(entry)
    version = _fedcare_version()
    for name, cls in BUILTIN_TASKS.items():
        if not any(e.distribution == "fedcare" for e in found.get(name, [])):
            found.setdefault(name, []).append(
                TaskEntry(
                    name=name, target=f"{cls.__module__}:{cls.__qualname__}", distribution="fedcare", version=version
                )
            )
    out: dict[str, TaskEntry] = {}
    for name in sorted(found):
        first, *others = found[name]
        out[name] = TaskEntry(
            name=first.name,
            target=first.target,
            distribution=first.distribution,
            version=first.version,
            conflicts=tuple(e.distribution for e in others),
        )
    return out


def task_factory(name: str) -> Callable[..., Task]:
    """The factory (class or function) registered as ``name``; a clear error when unknown or ambiguous."""
    entries = task_entries()
    entry = entries.get(name)
    if entry is None:
        raise ConfigError(
            f"unknown task {name!r}; installed: {', '.join(entries)} "
            f"(a task package registers itself in the {ENTRY_POINT_GROUP!r} entry-point group)"
        )
    if entry.conflicts:
        claimants = ", ".join(sorted((entry.distribution, *entry.conflicts)))
        raise ConfigError(f"task {name!r} is registered by several packages ({claimants}); uninstall all but one")
    if entry.distribution == "fedcare" and name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]
    module, _, attr = entry.target.partition(":")
    try:
        ep = metadata.EntryPoint(name=name, value=entry.target, group=ENTRY_POINT_GROUP)
        factory = ep.load()
    except Exception as exc:  # an installed package that fails to import: say which and why
        raise ConfigError(f"task {name!r} ({entry.source}): cannot load {module}:{attr}: {exc}") from None
    if not callable(factory):
        raise ConfigError(f"task {name!r} ({entry.source}): {entry.target} is not a class or function")
    return factory  # type: ignore[no-any-return]


def make_task(name: str, **params: Any) -> Task:
    """Build the registered task ``name`` with its parameters.

    Raises
    ------
    ConfigError
        Unknown name, a name registered twice, bad parameters, or a factory that does not
        return a Task named ``name``.
    """
    factory = task_factory(name)
    try:
        task = factory(**params)
    except TypeError as exc:
        raise ConfigError(f"task {name!r}: bad parameters {sorted(params)}: {exc}") from None
    if not isinstance(task, Task):
        raise ConfigError(f"task {name!r}: its factory returned {type(task).__name__}, which is not a fedcare Task")
    if task.name != name:
        raise ConfigError(f"task {name!r}: its factory returned a task named {task.name!r}")
    return task
