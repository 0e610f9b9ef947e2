"""``fedcare report``: report.html and summary.json of any recorded run, from the store alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fedcare.cli.app import DbOption, OutOption, app, console, fail
from fedcare.errors import FedcareError, StoreError

__all__ = ["report"]


def _comparison_table(comp: dict[str, Any]) -> Table:
    """Mean ± sd over seeds of each task and setting the comparison holds."""
    metrics = [m for m in ("accuracy", "auc", "c_index") if any(m in g for g in comp["by_task"])]
    table = Table(title="compared runs: pooled test, mean ± sd over seeds")
    for col in ("task", "hash", "setting", "runs", *metrics):
        table.add_column(col)
    for g in comp["by_task"]:
        cells = [f"{g[m]['mean']:.3f} ± {g[m]['std']:.3f}" if m in g else "—" for m in metrics]
        table.add_row(g["task"], g["task_hash"][:12], g["setting"], str(g["runs"]), *cells)
    return table


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="Run id, experiment id (all its settings) or 'latest'.")],
    db: DbOption = None,
    out: OutOption = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            "--compare",
            help="Show these runs beside it (run or experiment id, or a pattern like 'cnn-s*'; repeatable): "
            "pooled test metrics per run and the mean over seeds per task.",
        ),
    ] = None,
) -> None:
    """Write report.html and summary.json for a simulated or deployed run, read from the store."""
    from fedcare.cli.console import results_table
    from fedcare.report.compare import comparison
    from fedcare.report.from_store import summary_from_store
    from fedcare.report.output import write_outputs
    from fedcare.store import SqlStore

    url = db or f"sqlite:///{(Path('fedcare-out') / 'fedcare.db').resolve()}"
    try:
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
            raise StoreError(f"no store at {url.removeprefix('sqlite:///')} (pass --db URL)")
        store = SqlStore(url)
        try:
            summary = summary_from_store(store, run)
            if compare:
                summary["comparison"] = comparison(store, summary, compare)
        finally:
            store.close()
        out_dir = out or Path("fedcare-out") / summary["experiment"]
        metrics = [
            m
            for m in ("accuracy", "auc", "c_index")
            if any(m in r["per_site"].get(s, {}) for r in summary["settings"].values() for s in summary["sites"])
        ]
        for metric in metrics:
            console.print(results_table(summary, metric))
        if compare:
            console.print(_comparison_table(summary["comparison"]))
        summary_path, report_path = write_outputs(summary, out_dir)
    except FedcareError as exc:
        raise fail(exc) from None
    console.print(f"report:  {report_path}\nsummary: {summary_path}", highlight=False, soft_wrap=True)
