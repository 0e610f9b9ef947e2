"""The ``fedcare simulate`` run file: TOML parsed and validated into typed settings.

Every problem is a :class:`~fedcare.errors.ConfigError` whose one-line message starts
with the file name; problems of one kind are collected (all unknown keys at once, with
a "did you mean" hint, then all bad values at once). Relative paths resolve against the
folder of the config file. The keys are documented in ``docs/simulate.md``::

    name = "my-study"            # optional; default: the config file's stem
    seed = 0                     # model initialisation, batching, sampling
    rounds = 20

    [sites]                      # one CSV per site: site id = path ...
    north = "north.csv"
    south = "south.csv"

    [data]                       # ... or: file = "all.csv" and site_column = "hospital"
    target = "outcome"
    positive = "yes"             # a value or a list of values
    exclude = ["patient_id"]     # or: features = [...]
    categorical = ["smoker"]
    missing = ["", "?", -9999]
    test_fraction = 0.25
    split_seed = 0
    normalization = "federated"  # or "site"

    [task]
    name = "logreg"

    [federated]
    strategy = "fedavg"
    fraction_fit = 1.0
    min_sites = 1
    fit = { optimizer = "sgd", lr = 0.05, batch_size = 4, local_epochs = 1 }
    # params = { ... }           # extra keyword arguments of the strategy

    compression = "none"         # or "q8", "q4", "topk", or { codec = "topk", fraction = 0.01 }

    [baseline]                   # Local and Pooled training
    optimizer = "adam"
    lr = 0.001
    batch_size = 4
    local_epochs = 50
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np

import fedcare.strategies  # noqa: F401  (registers the built-in strategies)
from fedcare.compression import Compression
from fedcare.data.byo import CsvSource, TableSpec
from fedcare.data.federated import FederatedDataset
from fedcare.errors import ConfigError
from fedcare.experiment import ExperimentConfig
from fedcare.strategies.registry import available_strategies, make_strategy
from fedcare.study.toml import Checker, read_toml
from fedcare.task import ArrayDataset, Task
from fedcare.tasks import BUILTIN_TASKS
from fedcare.types import ConfigValue, SiteId

__all__ = ["DEFAULT_BASELINE", "DEFAULT_FIT", "SimulateConfig", "check_training", "load_simulate_config"]

#: Local training per round when ``[federated] fit`` is not given (the heart-disease demo's recipe).
DEFAULT_FIT: dict[str, ConfigValue] = {"optimizer": "sgd", "lr": 0.05, "batch_size": 4, "local_epochs": 1}
#: Local and Pooled baseline training when ``[baseline]`` is not given (FLamby's recipe).
DEFAULT_BASELINE: dict[str, ConfigValue] = {"optimizer": "adam", "lr": 0.001, "batch_size": 4, "local_epochs": 50}

_TOP = {"name", "seed", "rounds", "sites", "data", "task", "federated", "baseline"}
_DATA = {
    "file",
    "site_column",
    "target",
    "positive",
    "features",
    "exclude",
    "categorical",
    "missing",
    "test_fraction",
    "split_seed",
    "normalization",
    "delimiter",
}
_TASK = {"name"}
_FEDERATED = {"strategy", "fraction_fit", "min_sites", "fit", "params", "compression"}
_PLACES = {"": _TOP - {"sites", "data", "task", "federated", "baseline"}, "data.": _DATA, "federated.": _FEDERATED}


@dataclass(frozen=True)
class SimulateConfig:
    """A validated ``fedcare simulate`` run file.

    Attributes
    ----------
    path : Path
        The config file.
    table : TableSpec
        What data to read and how to prepare it.
    task : str
        Built-in task name (``"logreg"``).
    experiment : ExperimentConfig
        Rounds, seed, strategy and the training configs of every setting.
    """

    path: Path
    table: TableSpec
    task: str
    experiment: ExperimentConfig

    def describe(self) -> dict[str, Any]:
        """The resolved configuration for summary.json (beside the experiment config)."""
        return {"config_file": str(self.path), "task": self.task, "data": self.table.describe()}


def _compression(c: Checker, value: Any) -> dict[str, ConfigValue]:
    """The fit-config keys of ``[federated] compression`` (a codec name or a table)."""
    table = {"codec": value} if isinstance(value, str) else value
    if not isinstance(table, Mapping) or not set(table) <= {"codec", "fraction", "error_feedback"}:
        c.bad.append(
            f"federated.compression must be a codec name or a table of codec, fraction, error_feedback, got {value!r}"
        )
        return {}
    try:
        return Compression(**table).fit_config()
    except ConfigError as exc:
        c.bad.append(f"federated.compression: {exc}")
        return {}


def load_simulate_config(path: Path) -> SimulateConfig:
    """Parse and validate a ``fedcare simulate`` config file.

    Parameters
    ----------
    path : Path
        The TOML file; relative data paths resolve against its folder.

    Raises
    ------
    ConfigError
        One line starting with ``path``: unknown keys (with a hint), wrong types or
        values, an unknown task or strategy, strategy parameters it does not accept.
    """
    raw = read_toml(path)
    where = str(path)
    c = Checker(where, _PLACES)
    c.keys(raw, _TOP, "")
    data = c.table(raw, "data", "[data]")
    task_t = c.table(raw, "task", "[task]")
    fed = c.table(raw, "federated", "[federated]")
    sites_t = c.table(raw, "sites", "[sites]")
    baseline_t = c.table(raw, "baseline", "[baseline]")
    c.keys(data, _DATA, "data.")
    c.keys(task_t, _TASK, "task.")
    c.keys(fed, _FEDERATED, "federated.")
    fit_t = c.table(fed, "fit", "federated.fit")
    params_t = c.table(fed, "params", "federated.params")
    task_name = c.string(task_t, "name", "task.name", "logreg") or "logreg"
    task_cls = BUILTIN_TASKS.get(task_name)
    known_fit = getattr(task_cls, "fit_config_keys", None)
    if known_fit is not None:
        c.keys(fit_t, known_fit, "federated.fit.")
        c.keys(baseline_t, known_fit, "baseline.")
    c.raise_unknown()
    if task_cls is None:
        raise ConfigError(f"{where}: unknown task {task_name!r}; built in: {', '.join(sorted(BUILTIN_TASKS))}")

    name = c.string(raw, "name", "name", path.stem) or path.stem
    seed = c.integer(raw, "seed", "seed", 0)
    rounds = c.integer(raw, "rounds", "rounds", 20, minimum=1)
    target = c.string(data, "target", "data.target")
    if target is None:
        c.bad.append("data.target is required (the label column)")
    positive = c.scalars(data, "positive", "data.positive")
    if positive is None and "positive" not in data:
        c.bad.append("data.positive is required (the value, or values, of the positive class)")
    features = c.names(data, "features", "data.features")
    exclude = c.names(data, "exclude", "data.exclude") or ()
    if features is not None and exclude:
        c.bad.append("give data.features or data.exclude, not both")
    categorical = c.names(data, "categorical", "data.categorical") or ()
    missing = c.scalars(data, "missing", "data.missing")
    test_fraction = c.fraction(data, "test_fraction", "data.test_fraction", 0.25, closed=False)
    split_seed = c.integer(data, "split_seed", "data.split_seed", 0)
    normalization = data.get("normalization", "federated")
    if normalization not in ("federated", "site"):
        c.bad.append(f"data.normalization must be 'federated' or 'site', got {normalization!r}")
        normalization = "federated"
    delimiter = data.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        c.bad.append(f"data.delimiter must be one character, got {delimiter!r}")
        delimiter = ","
    site_column = c.string(data, "site_column", "data.site_column")
    file = c.string(data, "file", "data.file")
    sources = _sources(c, path, sites_t, file, site_column)
    if site_column is not None and (site_column == target or site_column in (features or ())):
        c.bad.append(f"data.site_column {site_column!r} cannot also be the target or a feature")
    if target is not None and target in (features or ()):
        c.bad.append(f"data.target {target!r} cannot also be a feature")
    strategy = c.string(fed, "strategy", "federated.strategy", "fedavg") or "fedavg"
    fraction_fit = c.fraction(fed, "fraction_fit", "federated.fraction_fit", 1.0, closed=True)
    min_sites = c.integer(fed, "min_sites", "federated.min_sites", 1, minimum=1)
    fit = {**DEFAULT_FIT, **c.config(fit_t, "federated.fit")}
    fit.update(_compression(c, fed.get("compression", "none")))
    baseline = {**DEFAULT_BASELINE, **c.config(baseline_t, "baseline")}
    params = dict(params_t)
    c.raise_bad()

    if strategy not in available_strategies():
        raise ConfigError(
            f"{where}: unknown strategy {strategy!r} in federated.strategy; "
            f"available: {', '.join(available_strategies())}"
        )
    if strategy in ("local", "pooled"):
        raise ConfigError(f"{where}: strategy name {strategy!r} clashes with a baseline setting")
    try:
        make_strategy(strategy, fit_config=fit, **params)
    except ConfigError as exc:
        raise ConfigError(f"{where}: federated: {exc}") from None

    table = TableSpec(
        name=name,
        sources=sources,
        target=cast(str, target),
        positive=cast(tuple[str | int | float, ...], positive),
        site_column=site_column,
        features=features,
        exclude=exclude,
        categorical=categorical,
        missing=missing if missing is not None else ("",),
        test_fraction=test_fraction,
        split_seed=split_seed,
        normalization=cast(Literal["federated", "site"], normalization),
        delimiter=delimiter,
    )
    experiment = ExperimentConfig(
        rounds=rounds,
        seed=seed,
        strategy=strategy,
        strategy_params=params,
        fit_config=fit,
        baseline_config=baseline,
        fraction_fit=fraction_fit,
        min_sites=min_sites,
    )
    return SimulateConfig(path=path, table=table, task=task_name, experiment=experiment)


def _sources(
    c: Checker, path: Path, sites: Mapping[str, Any], file: str | None, site_column: str | None
) -> tuple[CsvSource, ...]:
    base = path.parent

    def resolve(text: str) -> Path:
        p = Path(text).expanduser()
        return (p if p.is_absolute() else base / p).resolve()

    if sites and (file is not None or site_column is not None):
        c.bad.append("give either a [sites] table (one CSV per site) or data.file with data.site_column, not both")
        return ()
    if sites:
        out = []
        for site, text in sites.items():
            if not isinstance(text, str) or not text.strip():
                c.bad.append(f"sites.{site} must be the path of a CSV file, got {text!r}")
                continue
            out.append(CsvSource(path=resolve(text), label=text, site=SiteId(site)))
        return tuple(out)
    if file is None or site_column is None:
        c.bad.append("no data: give a [sites] table (site = CSV path) or data.file with data.site_column")
        return ()
    return (CsvSource(path=resolve(file), label=file),)


def check_training(cfg: SimulateConfig, task: Task, dataset: FederatedDataset) -> None:
    """Run the task once on a few training rows with each training config.

    Catches a wrong type or value in ``[federated] fit`` or ``[baseline]`` (say
    ``lr = "fast"``) before anything is recorded or written, with the config file and
    the section in the message.
    """
    first = dataset.sites[dataset.site_ids()[0]].train
    rows = ArrayDataset(first.x[:8], first.y[:8])
    for section, config in (("federated.fit", cfg.experiment.fit_config), ("baseline", cfg.experiment.baseline_config)):
        try:
            task.fit(task.init_model(np.random.default_rng(0)), rows, config, np.random.default_rng(0))
        except ConfigError as exc:
            raise ConfigError(f"{cfg.path}: {section}: {exc}") from None
        except (ValueError, TypeError, RuntimeError, ArithmeticError) as exc:  # e.g. batch_size = 0
            raise ConfigError(f"{cfg.path}: {section}: the task rejects this config ({exc})") from None
