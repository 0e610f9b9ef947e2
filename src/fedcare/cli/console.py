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
    """Test ``metric`` with its 95 % CI: sites as rows (readable at 4 sites and at 50), settings as columns.

    Below the sites: the mean over sites, the random-effects pooled estimate with I², and
    the pooled test set.
    """
    sites = list(summary["sites"])
    settings = summary["settings"]
    table = Table(title=f"test {metric} (95 % CI)", title_justify="left")
    # In an 80-column log the settings' cells must leave room for the site names (min widths).
    table.add_column("site", overflow="fold", min_width=13, max_width=32)
    table.add_column("n", justify="right", min_width=3)
    for name in settings:
        table.add_column(name, justify="right", no_wrap=True)

    def cell(value: float | None, interval: Mapping[str, Any] | None = None) -> str:
        if value is None or value != value:
            return "—"
        text = f"{value:.3f}"
        lo, hi = (interval or {}).get("lo"), (interval or {}).get("hi")
        if lo is not None and hi is not None and lo == lo and hi == hi:
            text += f" [dim]({lo:.2f}–{hi:.2f})[/]".replace("0.", ".")  # (.68–.84): fits 80 columns
        return text

    def unc(res: Mapping[str, Any], site: str) -> Mapping[str, Any] | None:
        return res.get("uncertainty", {}).get("per_site", {}).get(site, {}).get(metric)

    for site in sites:
        n = next((r["per_site"][site].get("n_test") for r in settings.values() if site in r["per_site"]), None)
        table.add_row(
            summary["sites"][site],
            f"{n:.0f}" if n else "—",
            *(cell(r["per_site"].get(site, {}).get(metric), unc(r, site)) for r in settings.values()),
        )
    table.add_section()
    table.add_row("mean over sites", "", *(cell(r["site_mean"].get(metric)) for r in settings.values()))
    metas = [r.get("uncertainty", {}).get("meta", {}).get(metric) or {} for r in settings.values()]
    table.add_row("pooled (random effects)", "", *(cell(m.get("random"), m) if m.get("k") else "—" for m in metas))
    table.add_row(
        "heterogeneity I²",
        "",
        *(f"{100 * m['i2']:.0f} %" if m.get("k") and m.get("i2") is not None else "—" for m in metas),
    )
    table.add_row(
        "pooled test set",
        "",
        *(
            cell(r["pooled_test"].get(metric), r.get("uncertainty", {}).get("pooled_test", {}).get(metric))
            for r in settings.values()
        ),
    )
    return table
