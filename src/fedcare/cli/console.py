"""Terminal output for experiments: round progress and the results table (rich)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedcare.protocols import RoundReport

__all__ = ["ExperimentProgress", "results_table"]


class ExperimentProgress:
    """Show a progress bar per federated setting and a line per finished baseline."""

    def __init__(self, console: Console, rounds: int) -> None:
        self.console = console
        self.rounds = rounds
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> ExperimentProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, setting: str, report: RoundReport | None) -> None:
        """Progress callback for :func:`fedcare.experiment.run_experiment`."""
        if report is None:
            self.console.print(f"[green]✓[/] {setting} baseline trained")
            return
        if setting not in self._tasks:
            self._tasks[setting] = self.progress.add_task(setting, total=self.rounds, status="")
        m = report.eval_metrics
        status = "  ".join(f"{k} {m[k]:.3f}" for k in ("loss", "accuracy", "auc", "c_index") if k in m)
        if report.failures:
            status += f"  [yellow]{len(report.failures)} site(s) failed[/]"
        self.progress.update(self._tasks[setting], advance=1, status=f"round {report.round_no}: {status}")


def results_table(summary: Mapping[str, Any], metric: str) -> Table:
    """Per-site, mean-over-sites and pooled-test ``metric`` for every setting."""
    sites = list(summary["sites"])
    table = Table(title=f"test {metric}", title_justify="left")
    table.add_column("setting")
    for site in sites:
        table.add_column(site, justify="right")
    table.add_column("mean over sites", justify="right")
    table.add_column("pooled test", justify="right")

    def cell(value: float | None) -> str:
        return "—" if value is None or value != value else f"{value:.3f}"

    for name, res in summary["settings"].items():
        table.add_row(
            name,
            *(cell(res["per_site"].get(s, {}).get(metric)) for s in sites),
            cell(res["site_mean"].get(metric)),
            cell(res["pooled_test"].get(metric)),
        )
    return table
