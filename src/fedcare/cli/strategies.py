"""``fedcare strategies``: list the registered server strategies, run one on a built-in data set."""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fedcare.cli.app import DbOption, OutOption, app, console, default_db_url, fail
from fedcare.cli.demo import DEMO_NAMES
from fedcare.errors import ConfigError, FedcareError

__all__ = ["parse_assignments", "strategies_app"]

strategies_app = typer.Typer(help="Server strategies: list them, run one by name.", no_args_is_help=True)
app.add_typer(strategies_app, name="strategies")


def _value(text: str) -> bool | int | float | str:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_assignments(items: list[str] | None, what: str) -> dict[str, Any]:
    """Parse ``["key=value", ...]`` into a dict of scalars (bool, int, float or str)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{what} {item!r} must look like key=value")
        out[key.strip()] = _value(value.strip())
    return out


@strategies_app.command("list")
def list_strategies() -> None:
    """Show every registered strategy with its parameters."""
    import fedcare.strategies  # noqa: F401  (registers the built-in strategies)
    from fedcare.strategies.registry import _REGISTRY, available_strategies

    table = Table(title="server strategies")
    table.add_column("name", style="bold")
    table.add_column("what")
    table.add_column("parameters (default)")
    for name in available_strategies():
        cls = _REGISTRY[name]
        doc = (inspect.getdoc(cls) or "").splitlines()[0] if inspect.getdoc(cls) else ""
        params = [
            f"{p.name}={p.default!r}"
            for p in inspect.signature(cls.__init__).parameters.values()
            if p.name not in ("self", "fit_config")
        ]
        table.add_row(name, doc, ", ".join(params))
    console.print(table)


@strategies_app.command("run")
def run_strategy(
    strategy: Annotated[str, typer.Argument(help="Registered strategy name (see `fedcare strategies list`).")],
    dataset: Annotated[str, typer.Option(help=f"Built-in data set: {', '.join(DEMO_NAMES)}.")] = "heart-disease",
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Strategy parameter key=value (repeatable).")
    ] = None,
    fit: Annotated[
        list[str] | None, typer.Option("--fit", "-f", help="Site training config key=value (repeatable).")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds (default: the demo's recipe).", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, batching and sampling.")] = 0,
    baselines: Annotated[bool, typer.Option(help="Also train the Local and Pooled baselines.")] = False,
    out: OutOption = None,
    db: DbOption = None,
) -> None:
    """Train one strategy on a built-in data set; write report.html and summary.json."""
    from fedcare.cli.console import ExperimentProgress, results_table
    from fedcare.demos import get_demo
    from fedcare.experiment import new_run_id, run_experiment
    from fedcare.report import write_outputs
    from fedcare.store import SqlStore

    run_id = new_run_id()
    out_dir = out or Path("fedcare-out") / run_id
    created = None if out_dir.exists() else out_dir
    try:
        recipe = get_demo(dataset)
        fit_config = {**recipe.config.fit_config, **parse_assignments(fit, "--fit")}
        cfg = replace(
            recipe.config,
            seed=seed,
            rounds=rounds or recipe.config.rounds,
            strategy=strategy,
            strategy_params=parse_assignments(param, "--param"),
            fit_config=fit_config,
        )
        data = recipe.load()
        task = recipe.make_task(data)
        settings = ("local", "pooled", "federated") if baselines else ("federated",)
        store = SqlStore(db or default_db_url(out_dir))
        with ExperimentProgress(console, cfg.rounds) as progress:
            summary = run_experiment(
                data, task, cfg, recorder=store, experiment_id=run_id, progress=progress, settings=settings
            )
        store.close()
        summary["store"] = store.url.split("@")[-1]
        metrics = summary["settings"][strategy]["site_mean"]
        for metric in [m for m in ("accuracy", "auc", "c_index") if m in metrics]:
            console.print(results_table(summary, metric))
        summary_path, report_path = write_outputs(summary, out_dir)
    except FedcareError as exc:
        raise fail(exc, created) from None
    console.print(f"report:  {report_path}\nsummary: {summary_path}\nstore:   {summary['store']} (experiment {run_id})")
