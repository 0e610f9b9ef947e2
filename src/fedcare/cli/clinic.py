"""From model to clinic: ``fedcare release`` (bundle + model card) and ``fedcare predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedcare.cli.app import DbOption, app, console, err_console, fail
from fedcare.errors import FedcareError, StoreError

__all__ = ["predict", "release"]


def _store_url(db: str | None) -> str:
    url = db or f"sqlite:///{(Path('fedcare-out') / 'fedcare.db').resolve()}"
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise StoreError(f"no store at {url.removeprefix('sqlite:///')} (pass --db URL)")
    return url


@app.command()
def release(
    run: Annotated[str, typer.Argument(help="Run id or experiment id (its federated run) or 'latest'.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the bundle.")],
    db: DbOption = None,
    audit_log: Annotated[
        Path | None, typer.Option(help="The coordinator's audit log: its verified head goes into the model card.")
    ] = None,
) -> None:
    """Write a release bundle: final model, task hash, preprocessing, model card (JSON + HTML), digest."""
    from fedcare.release.bundle import build_bundle
    from fedcare.store import SqlStore

    created = None if out.exists() else out
    try:
        head = None
        if audit_log is not None:
            from fedcare.store.audit import verify_audit_log

            checked = verify_audit_log(audit_log)
            if not checked.ok:
                raise StoreError(f"audit log {audit_log} fails verification: {checked.problem}")
            head = checked.head
        store = SqlStore(_store_url(db))
        try:
            manifest = build_bundle(store, run, out, audit_head=head)
        finally:
            store.close()
    except FedcareError as exc:
        raise fail(exc, created) from None
    console.print(f"bundle: {out}\ndigest: {manifest['digest']}", highlight=False, soft_wrap=True)


@app.command()
def predict(
    bundle: Annotated[Path, typer.Option("--bundle", help="Release bundle folder (fedcare release).")],
    input: Annotated[Path, typer.Option("--input", help="CSV of patients, one row each, the model's predictors.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write predictions and problems as JSON here.")] = None,
    top: Annotated[int, typer.Option(help="Features shown per patient.", min=1)] = 3,
) -> None:
    """Score each patient: risk and the features that pushed it up or down; bad rows are named and skipped."""
    import pandas as pd
    from rich.table import Table

    from fedcare.errors import DataError
    from fedcare.release.bundle import load_bundle
    from fedcare.release.predict import predict_rows

    try:
        loaded = load_bundle(bundle)
        try:
            frame = pd.read_csv(input, dtype=str, keep_default_na=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{input}: cannot read CSV: {exc}") from None
        report = predict_rows(loaded, frame, top=top)
    except FedcareError as exc:
        raise fail(exc) from None
    table = Table(title=f"{len(report.predictions)} patient(s) scored", title_justify="left")
    for col in ("row", "risk", "pushed up", "pushed down"):
        table.add_column(col, justify="right" if col in ("row", "risk") else "left")
    for p in report.predictions:
        up = ", ".join(f"{k} +{v:.2f}" for k, v in p["contributions"].items() if v > 0)
        down = ", ".join(f"{k} {v:.2f}" for k, v in p["contributions"].items() if v < 0)
        table.add_row(str(p["row"]), f"{p['risk']:.3f}", up or "—", down or "—")
    console.print(table)
    for problem in report.problems:
        err_console.print(
            f"[yellow]row {problem.row}[/]: {problem.field}: {problem.reason} (not scored)", highlight=False
        )
    if out is not None:
        out.write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
        console.print(f"predictions: {out}", highlight=False, soft_wrap=True)
