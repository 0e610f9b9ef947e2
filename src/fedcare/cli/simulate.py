"""``fedcare simulate``: Local vs Pooled vs a federated strategy on the user's own tables."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from fedcare.cli.app import DbOption, OutOption, app, console, default_db_url, fail
from fedcare.cli.outputs import check_db_url, check_out_dir
from fedcare.errors import ConfigError, FedcareError

__all__ = ["simulate"]


@app.command()
def simulate(
    config: Annotated[Path, typer.Option("--config", help="The run file (TOML); see docs/simulate.md.")],
    out: OutOption = None,
    db: DbOption = None,
    backend: Annotated[
        str, typer.Option(help="Where simulated sites run: inprocess (threads) or ray (Ray actors; the ray extra).")
    ] = "inprocess",
    address: Annotated[
        str | None, typer.Option(help="With --backend ray: the Ray cluster to join (default: start a local Ray).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Write into an --out folder that already holds files (overwriting them).")
    ] = False,
) -> None:
    """Train on your own CSV tables as Local, Pooled and a federated strategy; write report.html and summary.json.

    The config and the data are checked completely before anything is recorded or
    written: a problem is one line naming the file, line, column or site, and the exit
    code says its kind (2 config, 3 data).
    """
    from fedcare.cli.console import ExperimentProgress, results_table
    from fedcare.data.byo import load_table
    from fedcare.experiment import new_run_id, run_experiment
    from fedcare.report import write_outputs
    from fedcare.runconfig import check_training, load_simulate_config
    from fedcare.store import SqlStore
    from fedcare.tasks import make_task

    run_id = new_run_id()
    out_dir = out or Path("fedcare-out") / run_id
    created: Path | None = None
    try:
        if backend not in ("inprocess", "ray"):
            raise ConfigError(f"--backend must be inprocess or ray, got {backend!r}")
        cfg = load_simulate_config(config)
        created = check_out_dir(out_dir, force=force)  # before any training or write
        check_db_url(db or default_db_url(out_dir))
        data, recipe = load_table(cfg.table)
        task = make_task(cfg.task, n_features=data.n_features)
        check_training(cfg, task, data)
        exp = replace(cfg.experiment, backend=backend, ray_address=address or "")
        console.print(
            f"[bold]fedcare simulate[/] · {data.name}: {len(data.sites)} sites, {data.n_features} features, "
            f"{exp.strategy}, {exp.rounds} rounds"
        )
        for site in data.site_ids():
            d = data.sites[site]
            console.print(f"  {site:32s} train {len(d.train):5d}  test {len(d.test):5d}")
        store = SqlStore(db or default_db_url(out_dir))
        try:
            with ExperimentProgress(console, exp.rounds) as progress:
                summary = run_experiment(data, task, exp, recorder=store, experiment_id=run_id, progress=progress)
        finally:
            store.close()
        summary["config"].update(cfg.describe())
        summary["config"]["data"]["resolved"] = {
            "features": list(recipe.features),
            "categories": {c: list(v) for c, v in recipe.categorical.items()},
            "encoded_features": list(data.feature_names),
        }
        summary["store"] = store.url.split("@")[-1]
        for metric in ("accuracy", "auc"):
            console.print(results_table(summary, metric))
        summary_path, report_path = write_outputs(summary, out_dir)
    except FedcareError as exc:
        raise fail(exc, created) from None
    console.print(f"report:  {report_path}\nsummary: {summary_path}\nstore:   {summary['store']} (experiment {run_id})")
