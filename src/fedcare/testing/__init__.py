"""A contract test suite any task package runs against itself: ``check_task``.

A task package's own test calls::

    from fedcare.testing import check_task

    def test_task_meets_the_fedcare_contract():
        check_task("my-task", params={"width": 8}, data=small_site_data())

It checks, on the package's small sample of data, what a site and a coordinator rely on:
the task is found by name through its entry point, its hash is stable and covers its own
files, initialisation and training are deterministic given the generator, ``fit`` never
writes into the arrays it receives, results are finite and keep the model's layout, the
state round-trips through the wire format, and it trains in real (in-process) federated
runs with every registered strategy, under SecAgg+, under record-level DP-SGD (or refuses
DP with a clear configuration error naming the reason), and with its declared local
entries kept at the site. All problems are collected and raised together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcare.errors import FedcareError
from fedcare.task import ArrayDataset, SiteData, Task, task_hash
from fedcare.task_manifest import task_manifest
from fedcare.types import ConfigValue, ModelState, RunId, SiteId

__all__ = ["ContractReport", "TaskContractError", "check_task", "split_sites"]


class TaskContractError(AssertionError):
    """A task breaks the fedcare task contract (every failed check is listed)."""


@dataclass
class ContractReport:
    """Which checks passed, which were skipped (and why), which failed."""

    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def split_sites(data: SiteData, n: int) -> dict[SiteId, SiteData]:
    """Deal ``data``'s rows round-robin to ``n`` sites (each keeps train and test rows)."""

    def part(ds: ArrayDataset, k: int) -> ArrayDataset:
        return ArrayDataset(ds.x[k::n], ds.y[k::n])

    return {SiteId(f"site-{k}"): SiteData(train=part(data.train, k), test=part(data.test, k)) for k in range(n)}


def _readonly(ds: ArrayDataset) -> ArrayDataset:
    x, y = np.array(ds.x, copy=True), np.array(ds.y, copy=True)
    x.flags.writeable = False
    y.flags.writeable = False
    return ArrayDataset(x, y)


def _same(a: ModelState, b: ModelState) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _finite(state: ModelState) -> list[str]:
    return [k for k, v in state.items() if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()]


def check_task(
    name: str,
    *,
    data: SiteData,
    params: Mapping[str, Any] | None = None,
    fit_config: Mapping[str, ConfigValue] | None = None,
    strategies: Sequence[str] | None = None,
    sites: int = 5,
    rounds: int = 1,
    secagg: bool = True,
    dp: bool = True,
    personal: bool = True,
) -> ContractReport:
    """Run the task contract against the installed task ``name``; raise if anything fails.

    Parameters
    ----------
    name : str
        The task's registry name (its entry point).
    data : SiteData
        A small sample (tens of rows) in the shape the task reads; it is dealt to ``sites``.
    params : Mapping[str, Any] or None (default: None)
        Task parameters, as in a study file.
    fit_config : Mapping[str, ConfigValue] or None (default: None)
        Extra fit config for every run (e.g. a small ``batch_size``).
    strategies : Sequence[str] or None (default: None)
        Strategies to run; ``None``: every registered one.
    sites, rounds : int (default: 5, 1)
        Sites and rounds of each federated run.
    secagg, dp, personal : bool (default: True)
        Also run under SecAgg+, record-level DP-SGD, and with local entries/Ditto.

    Returns
    -------
    ContractReport
        The checks passed and skipped.

    Raises
    ------
    TaskContractError
        Listing every failed check.
    """
    from fedcare.tasks import make_task

    report = ContractReport()
    params = dict(params or {})
    cfg: dict[str, ConfigValue] = {"local_steps": 2, **(fit_config or {})}

    def check(label: str, fn: Callable[[], str | None]) -> None:
        try:
            skipped = fn()
        except TaskContractError as exc:
            report.failed[label] = str(exc)
        except Exception as exc:  # the contract reports every failure, whatever raised it
            report.failed[label] = f"{type(exc).__name__}: {exc}"
        else:
            if skipped:
                report.skipped[label] = skipped
            else:
                report.passed.append(label)

    task: Task = make_task(name, **params)

    def registered() -> None:
        if not isinstance(task, Task) or task.name != name:
            raise TaskContractError(f"make_task({name!r}) returned {type(task).__name__} named {task.name!r}")

    def hash_is_stable() -> None:
        again = make_task(name, **params)
        if task_hash(task) != task_hash(again):
            raise TaskContractError("two instances with the same parameters have different hashes")
        files = task_manifest(task).files
        named = getattr(task, "source_modules", None)
        modules = [type(task).__module__, *(named() if callable(named) else [])]
        for module in modules:
            top = module.split(".")[0]
            if not any(label.startswith(top + "/") or label == f"{module.rsplit('.')[-1]}.py" for label in files):
                raise TaskContractError(f"the hash covers none of the files of {module} ({sorted(files)[:5]})")

    def init_is_deterministic() -> None:
        a, b = task.init_model(np.random.default_rng(1)), task.init_model(np.random.default_rng(1))
        if not _same(a, b):
            raise TaskContractError("init_model with the same seed gave different models")
        if _finite(a):
            raise TaskContractError(f"init_model gave non-finite entries {_finite(a)}")

    def fit_is_sound() -> None:
        from fedcare.serde import decode_state, encode_state

        model = task.init_model(np.random.default_rng(0))
        frozen = {k: np.array(v, copy=True) for k, v in model.items()}
        for v in model.values():
            v.flags.writeable = False
        train = _readonly(data.train)
        one = task.fit(model, train, cfg, np.random.default_rng(7))
        two = task.fit(model, train, cfg, np.random.default_rng(7))
        if not _same(model, frozen):
            raise TaskContractError("fit changed the model it received")
        if not _same(one.state, two.state):
            raise TaskContractError("fit with the same generator gave different models (randomness must come from rng)")
        if one.num_examples != len(train):
            raise TaskContractError(f"fit reported {one.num_examples} examples, the site has {len(train)}")
        bad = _finite(one.state)
        if bad:
            raise TaskContractError(f"fit returned non-finite entries {bad}")
        if any(one.state[k].shape != model[k].shape or one.state[k].dtype != model[k].dtype for k in model):
            raise TaskContractError("fit changed the shape or dtype of an entry")
        if set(one.state) != set(model):
            raise TaskContractError(f"fit returned entries {sorted(set(one.state) ^ set(model))} it did not receive")
        if not _same(decode_state(encode_state(one.state)), one.state):
            raise TaskContractError("the trained state does not survive the wire format")

    def evaluate_is_sound() -> None:
        model = task.init_model(np.random.default_rng(0))
        result = task.evaluate(model, _readonly(data.test))
        if not math.isfinite(result.loss) or result.num_examples != len(data.test):
            raise TaskContractError(f"evaluate gave loss {result.loss} on {result.num_examples} examples")
        scores = task.predict(model, data.test.x)
        if len(scores) != len(data.test):
            raise TaskContractError(f"predict gave {len(scores)} scores for {len(data.test)} records")

    for label, fn in (
        ("registered", registered),
        ("hash is stable", hash_is_stable),
        ("init is deterministic", init_is_deterministic),
        ("fit is sound", fit_is_sound),
        ("evaluate is sound", evaluate_is_sound),
    ):
        check(label, fn)  # type: ignore[arg-type]
    _federated_checks(task, data, cfg, report, check, strategies, sites, rounds, secagg, dp, personal)
    if report.failed:
        lines = [f"task {name!r} breaks the fedcare task contract:"]
        lines += [f"  - {label}: {why}" for label, why in report.failed.items()]
        raise TaskContractError("\n".join(lines))
    return report


def _federated_checks(
    task: Task,
    data: SiteData,
    cfg: Mapping[str, ConfigValue],
    report: ContractReport,
    check: Callable[[str, Callable[[], str | None]], None],
    strategies: Sequence[str] | None,
    n_sites: int,
    rounds: int,
    secagg: bool,
    dp: bool,
    personal: bool,
) -> None:
    import fedcare.strategies  # noqa: F401  (registers the built-in strategies)
    from fedcare.personal.site import LOCAL_RECORD, local_keys
    from fedcare.privacy.plan import PrivacyPlan, RecordDP
    from fedcare.runtime.policy import SitePolicy
    from fedcare.runtime.simulation import build_nodes, run_simulation
    from fedcare.secure import FixedPointCodec, SecAggPlusWorkflow
    from fedcare.strategies.registry import available_strategies, make_strategy

    sites = split_sites(data, n_sites)

    def run(strategy: str, config: Mapping[str, ConfigValue], **kw: Any) -> Any:
        try:
            result = run_simulation(
                sites=sites,
                task=task,
                strategy=make_strategy(strategy, fit_config=dict(config)),
                rounds=rounds,
                seed=0,
                run_id=RunId(f"contract-{strategy}"),
                max_workers=1,
                **kw,
            )
        except FedcareError as exc:
            raise TaskContractError(f"{type(exc).__name__}: {exc}") from None
        failures = {s: why for r in result.rounds for s, why in r.failures.items()}
        if failures:
            raise TaskContractError(f"sites failed: {failures}")
        return result

    for name in strategies if strategies is not None else available_strategies():
        config = {**cfg, "optimizer": "sgd", "momentum": 0.0} if name == "scaffold" else cfg

        def one(name: str = name, config: Mapping[str, ConfigValue] = config) -> None:
            run(name, config)

        check(f"strategy {name}", one)  # type: ignore[arg-type]

    if secagg and n_sites < 3:
        report.skipped["SecAgg+"] = "needs at least 3 sites"
    elif secagg:

        def under_secagg() -> None:
            run("fedavg", cfg, fit_workflow=SecAggPlusWorkflow(codec=FixedPointCodec(clip_range=4.0), seed=0))

        check("SecAgg+", under_secagg)  # type: ignore[arg-type]

    if dp:

        def under_dp() -> str | None:
            plan = PrivacyPlan(record=RecordDP(epsilon=5.0, delta=1e-5, rounds=rounds, batch_size=8, seeded_noise=True))
            policies = {s: SitePolicy(allow_seeded_noise=True) for s in sites}
            try:
                run("fedavg", {**cfg, **plan.to_config()}, policies=policies)
            except TaskContractError as exc:
                if "cannot train with DP-SGD" in str(exc):  # a clear refusal is within the contract
                    return str(exc).split("cannot train with DP-SGD: ")[1].split("; site-")[0].rstrip(")")
                raise
            return None

        check("record-level DP-SGD", under_dp)

    if personal and local_keys(task):

        def local_entries_stay() -> None:
            nodes = build_nodes(sites, task)
            run("fedavg", cfg, nodes=nodes)
            keys = local_keys(task)
            kept = [n.site_state for n in nodes.values()]
            if not all(any(LOCAL_RECORD in mem for mem in state.values()) for state in kept):
                raise TaskContractError("a site kept no local entries")
            for state in kept:
                for mem in state.values():
                    if LOCAL_RECORD in mem and set(mem[LOCAL_RECORD]) != set(keys):
                        raise TaskContractError(
                            f"local entries kept {sorted(mem[LOCAL_RECORD])}, declared {sorted(keys)}"
                        )

        check("local entries stay at the site", local_entries_stay)  # type: ignore[arg-type]
    elif personal:
        report.skipped["local entries stay at the site"] = "the task declares no local entries"
    if personal and callable(getattr(task, "fit_toward", None)):

        def ditto() -> None:
            run("fedavg", {**cfg, "ditto_lambda": 0.1})

        check("Ditto personal model", ditto)  # type: ignore[arg-type]
