"""``fedcare strategies``: list the registered server strategies, run one on a built-in data set."""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Annotated, Any

import typer
from rich.table import Table

from fedcare.cli.app import DbOption, OutOption, app, console
from fedcare.cli.demo import DEMO_NAMES
from fedcare.errors import ConfigError

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
    """Train one strategy on a built-in data set; write report.html and summary.json.

    The data set's shipped study with its strategy, parameters and fit config replaced
    (`fedcare simulate --study FILE` runs the same from a study file).
    """
    from fedcare.cli.study import run_simulation_command

    def prepare() -> Any:
        from fedcare.study.builtin import resolve_study
        from fedcare.study.spec import parse_study

        base = resolve_study(dataset)
        described = base.describe()
        raw = {
            "study": {"name": base.name, "description": base.description, "seed": seed},
            "task": described["task"],
            "data": {"dataset": base.data.dataset},
            "strategy": {"name": strategy, "params": parse_assignments(param, "--param")},
            "federation": {"rounds": rounds or base.rounds},
            "fit": {**base.fit, **parse_assignments(fit, "--fit")},
            "baseline": dict(base.baseline),
        }
        return replace(parse_study(raw, where=f"strategies run {strategy}"), path=None)

    settings = ("local", "pooled", "federated") if baselines else ("federated",)
    run_simulation_command(f"strategies run {strategy}", prepare, sites=(), out=out, db=db, settings=settings)
