"""``fedcare privacy ...``: inspect a site's ledger, calibrate noise; DP options of ``fedcare demo``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.table import Table

from fedcare.cli.app import app, console, fail
from fedcare.errors import ConfigError, FedcareError

__all__ = ["audit", "calibrate", "demo_privacy_settings", "ledger", "privacy_app", "privacy_table"]

privacy_app = typer.Typer(
    help="Differential privacy: site ledgers, noise calibration, an empirical audit.", no_args_is_help=True
)
app.add_typer(privacy_app, name="privacy")


def demo_privacy_settings(
    *,
    dp: str,
    epsilon: float | None,
    delta: float,
    site_budget: float | None,
    clip_norm: float,
    adaptive_clipping: bool,
    secure_noise: bool,
    trust_central_noise: bool,
    accountant: str,
) -> dict[str, Any]:
    """The ``privacy`` entry of the demo's ExperimentConfig for the CLI options ({} = none)."""
    from fedcare.privacy.setup import PrivacySettings

    if dp == "none" and site_budget is None:
        if epsilon is not None:
            raise ConfigError("--epsilon needs --dp record, client or client-distributed")
        return {}
    values: dict[str, Any] = {
        "level": dp,
        "epsilon": math.inf if epsilon is None else epsilon,
        "delta": delta,
        "site_max_epsilon": site_budget,
        "clip_norm": clip_norm,
        "adaptive_clipping": adaptive_clipping,
        "seeded_noise": not secure_noise,
        "trust_central_noise": trust_central_noise,
        "accountant": accountant,
    }
    if dp == "record":
        values["lr"] = 0.5  # full-batch DP gradient descent: one large step per round
    PrivacySettings.from_mapping(values)  # validate now, with a one-line error
    return values


def privacy_table(privacy: Mapping[str, Any]) -> Table:
    """ε spent per site in this run and in the study, with the mechanism's parameters."""
    table = Table(title="privacy spent per site", title_justify="left")
    for col in ("site", "ε run", "ε study", "δ", "budget", "mechanism", "noise σ", "q", "steps/round"):
        table.add_column(col, justify="left" if col in ("site", "mechanism") else "right")

    def num(v: Any, fmt: str = ".3f") -> str:
        return "—" if v is None else format(v, fmt)

    for site, row in privacy["sites"].items():
        table.add_row(
            site,
            num(row["epsilon_run"]),
            num(row["epsilon_study"]),
            num(row["delta"], "g"),
            num(row["max_epsilon"], "g"),
            ", ".join(row["mechanisms"]) or "—",
            num(row["noise_multiplier"]),
            num(row["sample_rate"]),
            num(row["steps_per_round"], "d"),
        )
    return table


@privacy_app.command()
def ledger(
    db: Annotated[str, typer.Option("--db", help="SQLAlchemy URL of the store holding the ledger.")],
    site: Annotated[str | None, typer.Option(help="Only this site.")] = None,
    study: Annotated[str | None, typer.Option(help="Budget scope (default: every study of the site).")] = None,
) -> None:
    """Show privacy ledger entries: ε per round, run and study, with the accountant's parameters."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from fedcare.store import SqlStore
    from fedcare.store.models import PrivacyLedgerRow

    try:
        store = SqlStore(db)
        with Session(store.engine) as s:
            q = select(PrivacyLedgerRow).order_by(PrivacyLedgerRow.id)
            if site is not None:
                q = q.where(PrivacyLedgerRow.site == site)
            if study is not None:
                q = q.where(PrivacyLedgerRow.study == study)
            rows = list(s.scalars(q))
        store.close()
    except FedcareError as exc:
        raise fail(exc) from None
    table = Table(title=f"privacy ledger ({len(rows)} entries)", title_justify="left")
    for col in ("site", "study", "run", "round", "mechanism", "σ", "q", "steps", "δ", "ε round", "ε run", "ε study"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.site,
            r.study,
            r.run_id,
            str(r.round_no),
            r.mechanism,
            f"{r.noise_multiplier:.3f}",
            f"{r.sample_rate:.3f}",
            str(r.steps),
            f"{r.delta:g}",
            f"{r.epsilon_round:.3f}",
            f"{r.epsilon_run:.3f}",
            f"{r.epsilon_total:.3f}",
        )
    console.print(table)


@privacy_app.command()
def calibrate(
    epsilon: Annotated[float, typer.Option(help="Target ε.")],
    sample_rate: Annotated[float, typer.Option(help="Poisson sampling rate q (batch / records; 1 = full batch).")],
    steps: Annotated[int, typer.Option(help="Total number of noisy steps (rounds x steps per round).", min=1)],
    delta: Annotated[float, typer.Option(help="Target δ.")] = 1e-5,
    accountant: Annotated[str, typer.Option(help="rdp or prv.")] = "rdp",
) -> None:
    """Print the noise multiplier that spends ε at δ over the given steps (Opacus accountant)."""
    from fedcare.privacy.accounting import Accountant, Mechanism, PrivacyCost, calibrate_noise_multiplier, epsilon_of

    try:
        try:
            acc = Accountant(accountant)
        except ValueError:
            raise ConfigError(f"--accountant must be rdp or prv, got {accountant!r}") from None
        sigma = calibrate_noise_multiplier(
            target_epsilon=epsilon, delta=delta, sample_rate=sample_rate, steps=steps, accountant=acc
        )
        cost = PrivacyCost(
            mechanism=Mechanism.DPSGD, noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, accountant=acc
        )
        spent = epsilon_of([cost], delta=delta, accountant=acc)
    except FedcareError as exc:
        raise fail(exc) from None
    console.print(f"noise multiplier {sigma:.4f}  (ε = {spent:.4f} at δ = {delta:g}, {acc.value} accountant)")


@privacy_app.command()
def audit(
    epsilon: Annotated[float, typer.Option(help="The ε the mechanism is calibrated to (and the accountant claims).")],
    level: Annotated[str, typer.Option(help="record, client-central or client-distributed.")] = "record",
    steps: Annotated[int, typer.Option(help="DP-SGD steps (record) or rounds (client level).", min=1)] = 4,
    sample_rate: Annotated[float, typer.Option(help="Record level: Poisson sampling rate q.")] = 1.0,
    canaries: Annotated[int, typer.Option(help="Canaries, each included with probability 1/2.")] = 1000,
    delta: Annotated[float, typer.Option(help="δ of the guarantee.")] = 1e-5,
    seed: Annotated[int | None, typer.Option(help="Seed of the canaries and the run (default: random).")] = None,
) -> None:
    """Audit fedcare's DP in one training run (Steinke, Nasr & Jagielski 2023): an empirical lower bound on ε.

    Canaries are inserted at random, the real mechanism runs once, and the correct guesses
    of which were in bound ε from below at 95% confidence. A bound above the accountant's
    ε means the implementation is broken (exit code 1).
    """
    from fedcare.privacy.audit import audit_mechanism

    try:
        result, accounted, noise = audit_mechanism(
            level,
            epsilon=epsilon,
            delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            canaries=canaries,
            seed=seed,
        )
    except FedcareError as exc:
        raise fail(exc) from None
    broken = result.epsilon_lower > accounted
    console.print(
        f"{level}: noise multiplier {noise:.4f}, accountant ε = {accounted:.4f} at δ = {delta:g}; "
        f"audit lower bound ε ≥ {result.epsilon_lower:.4f} (95%, {result.correct}/{result.guesses} correct guesses, "
        f"{result.canaries} canaries) — {'VIOLATION: the mechanism leaks more than it claims' if broken else 'ok'}",
        highlight=False,
        soft_wrap=True,
    )
    if broken:
        raise typer.Exit(code=1)
