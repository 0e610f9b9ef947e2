"""``fedcare demo``: Local vs Pooled vs FedAvg on a built-in real data set."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from fedcare.cli.app import DbOption, OutOption, app, console, default_db_url, fail
from fedcare.cli.outputs import check_db_url, check_out_dir
from fedcare.cli.privacy import demo_privacy_settings, privacy_table
from fedcare.errors import FedcareError

__all__ = ["DEMO_NAMES", "demo"]

#: The built-in demos (``fedcare.demos.DEMOS``), named here so that ``--help`` does not
#: import the training stack.
DEMO_NAMES = ("heart-disease", "pneumonia", "tcga-brca")


@app.command()
def demo(
    dataset: Annotated[str, typer.Option(help=f"Built-in data set: {', '.join(DEMO_NAMES)}.")] = "heart-disease",
    rounds: Annotated[int | None, typer.Option(help="Federated rounds (default: the demo's recipe).", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, batching and sampling.")] = 0,
    out: OutOption = None,
    db: DbOption = None,
    dp: Annotated[
        str, typer.Option(help="Differential privacy: none, record (DP-SGD at sites), client, client-distributed.")
    ] = "none",
    epsilon: Annotated[float | None, typer.Option(help="Target ε over the run (with --dp).")] = None,
    delta: Annotated[float, typer.Option(help="Target δ (and the sites' budget δ).")] = 1e-5,
    site_budget: Annotated[
        float | None, typer.Option(help="Give every site a fail-closed budget: max ε at δ for the study.")
    ] = None,
    clip_norm: Annotated[float, typer.Option(help="Client-level DP: L2 bound of each site's update.")] = 0.5,
    adaptive_clipping: Annotated[bool, typer.Option(help="Client-level DP: quantile-based adaptive clipping.")] = False,
    secure_noise: Annotated[
        bool, typer.Option(help="Draw DP noise from the OS CSPRNG (not repeatable) instead of the run seed.")
    ] = False,
    trust_central_noise: Annotated[
        bool, typer.Option(help="Sites with a budget accept server-added noise (--dp client).")
    ] = False,
    accountant: Annotated[str, typer.Option(help="Privacy accountant: rdp or prv.")] = "rdp",
    compression: Annotated[
        str, typer.Option(help="Compress the sites' updates: none, q8, q4 (stochastic quantisation), topk.")
    ] = "none",
    topk_fraction: Annotated[float, typer.Option(help="Share of entries --compression topk keeps.")] = 0.01,
    force: Annotated[
        bool, typer.Option("--force", help="Write into an --out folder that already holds files (overwriting them).")
    ] = False,
) -> None:
    """Train on a built-in data set as Local, Pooled and FedAvg; write report.html and summary.json."""
    from fedcare.cli.console import ExperimentProgress, results_table
    from fedcare.compression import Compression
    from fedcare.demos import get_demo
    from fedcare.experiment import new_run_id, run_experiment
    from fedcare.report import write_outputs
    from fedcare.store import SqlStore

    run_id = new_run_id()
    out_dir = out or Path("fedcare-out") / run_id
    created: Path | None = None
    try:
        recipe = get_demo(dataset)
        cfg = replace(recipe.config, seed=seed, rounds=rounds or recipe.config.rounds)
        privacy = demo_privacy_settings(
            dp=dp,
            epsilon=epsilon,
            delta=delta,
            site_budget=site_budget,
            clip_norm=clip_norm,
            adaptive_clipping=adaptive_clipping,
            secure_noise=secure_noise,
            trust_central_noise=trust_central_noise,
            accountant=accountant,
        )
        if privacy:
            cfg = replace(cfg, privacy=privacy)
        codec = Compression(codec=compression, fraction=topk_fraction)  # type: ignore[arg-type]
        if codec.enabled:
            cfg = replace(cfg, fit_config={**cfg.fit_config, **codec.fit_config()})
        created = check_out_dir(out_dir, force=force)  # before any training or write
        check_db_url(db or default_db_url(out_dir))
        console.print(f"[bold]fedcare demo[/] · {recipe.description}")
        data = recipe.load()
        for site in data.site_ids():
            d = data.sites[site]
            console.print(f"  {data.display_names.get(site, site):32s} train {len(d.train):5d}  test {len(d.test):5d}")
        task = recipe.make_task(data)
        store = SqlStore(db or default_db_url(out_dir))
        with ExperimentProgress(console, cfg.rounds) as progress:
            summary = run_experiment(data, task, cfg, recorder=store, experiment_id=run_id, progress=progress)
        store.close()
        summary["store"] = store.url.split("@")[-1]
        metrics = [m for m in ("accuracy", "auc", "c_index") if m in summary["settings"]["pooled"]["pooled_test"]]
        for metric in metrics:
            console.print(results_table(summary, metric))
        if "privacy" in summary:
            console.print(privacy_table(summary["privacy"]))
        summary_path, report_path = write_outputs(summary, out_dir)
    except FedcareError as exc:
        raise fail(exc, created) from None
    console.print(f"report:  {report_path}\nsummary: {summary_path}\nstore:   {summary['store']} (experiment {run_id})")
