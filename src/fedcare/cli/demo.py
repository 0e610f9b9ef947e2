"""``fedcare demo``: Local vs Pooled vs FedAvg on a built-in real data set (a shipped study)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

import typer

from fedcare.cli.app import DbOption, OutOption, app
from fedcare.cli.privacy import demo_privacy_settings
from fedcare.errors import ConfigError

__all__ = ["DEMO_NAMES", "demo"]

#: The built-in demos (``fedcare.study.builtin.BUILTIN_STUDIES``), named here so that
#: ``--help`` does not import the training stack.
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
    """Train on a built-in data set as Local, Pooled and FedAvg; write report.html and summary.json.

    The demo is a shipped study file (``fedcare simulate --study heart-disease`` runs the
    same); the options here override its seed, rounds, privacy and compression.
    """
    from fedcare.cli.study import run_simulation_command
    from fedcare.compression import Compression
    from fedcare.study.builtin import resolve_study
    from fedcare.study.spec import FederationSpec

    def prepare() -> object:
        if dataset not in DEMO_NAMES:
            raise ConfigError(f"unknown demo dataset {dataset!r}; available: {', '.join(DEMO_NAMES)}")
        study = resolve_study(dataset)
        fed: FederationSpec = replace(study.federation, rounds=rounds or study.rounds)
        study = replace(study, seed=seed, federation=fed)
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
            study = replace(study, privacy=privacy)
        codec = Compression(codec=compression, fraction=topk_fraction)  # type: ignore[arg-type]
        if codec.enabled:
            study = replace(study, fit={**study.fit, **codec.fit_config()})
        return study

    run_simulation_command("demo", prepare, sites=(), out=out, db=db, force=force)
