"""From model to clinic: ``fedcare release`` (bundle + model card), ``predict`` and ``validate``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from fedcare.cli.app import DbOption, app, console, err_console, fail
from fedcare.errors import FedcareError, StoreError

__all__ = ["predict", "release", "serve", "validate"]


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
    input: Annotated[
        Path,
        typer.Option(
            "--input",
            help="CSV of patients (one row each, the model's predictors), or a FHIR Bundle JSON file or folder "
            "of bundles (read with the study's [data.fhir] mapping kept in the bundle).",
        ),
    ],
    out: Annotated[Path | None, typer.Option("--out", help="Write predictions and problems as JSON here.")] = None,
    top: Annotated[int, typer.Option(help="Features shown per patient.", min=1)] = 3,
) -> None:
    """Score each patient: risk and the features that pushed it up or down; bad rows are named and skipped."""
    import pandas as pd
    from rich.table import Table

    from fedcare.errors import DataError
    from fedcare.release.bundle import load_bundle
    from fedcare.release.predict import predict_fhir, predict_rows

    try:
        loaded = load_bundle(bundle)
        if input.is_dir() or input.suffix.lower() == ".json":
            report = predict_fhir(loaded, input, top=top)
        else:
            try:
                frame = pd.read_csv(input, dtype=str, keep_default_na=False)
            except (OSError, ValueError) as exc:
                raise DataError(f"{input}: cannot read CSV: {exc}") from None
            report = predict_rows(loaded, frame, top=top)
    except FedcareError as exc:
        raise fail(exc) from None
    table = Table(title=f"{len(report.predictions)} patient(s) scored", title_justify="left")
    calibrated = any(p["calibrated_risk"] is not None for p in report.predictions)
    numeric = ("row", "risk", "calibrated") if calibrated else ("row", "risk")
    for col in (*numeric, "pushed up", "pushed down"):
        table.add_column(col, justify="right" if col in numeric else "left")
    for p in report.predictions:
        up = ", ".join(f"{k} +{v:.2f}" for k, v in p["contributions"].items() if v > 0)
        down = ", ".join(f"{k} {v:.2f}" for k, v in p["contributions"].items() if v < 0)
        cells = [str(p["row"]), f"{p['risk']:.3f}"]
        if calibrated:
            cells.append(f"{p['calibrated_risk']:.3f}")
        table.add_row(*cells, up or "—", down or "—")
    console.print(table)
    for problem in report.problems:
        where = f"row {problem.row}" if isinstance(problem.row, int) else str(problem.row)
        err_console.print(
            f"[yellow]{escape(where)}[/]: {escape(problem.field)}: {escape(problem.reason)} (not scored)",
            highlight=False,
            soft_wrap=True,
        )
    if out is not None:
        out.write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
        console.print(f"predictions: {out}", highlight=False, soft_wrap=True)


def _labels(frame: object, outcome: str) -> object:
    """0/1 labels from ``COLUMN`` (values 0/1) or ``COLUMN>THRESHOLD``."""
    from fedcare.errors import DataError

    column, _, threshold = outcome.partition(">")
    if column not in frame.columns:  # type: ignore[attr-defined]
        raise DataError(f"outcome column {column!r} is not in the input")
    try:
        values = frame[column].astype(float).to_numpy()  # type: ignore[index]
    except ValueError:
        raise DataError(f"outcome column {column!r} holds values that are not numbers") from None
    return (values > float(threshold)).astype(float) if threshold else (values >= 0.5).astype(float)


@app.command()
def validate(
    bundle: Annotated[Path, typer.Option("--bundle", help="Release bundle folder (fedcare release).")],
    site: Annotated[
        list[str], typer.Option("--site", help="NAME=patients.csv: one validating site and its rows (repeatable).")
    ],
    outcome: Annotated[str, typer.Option(help="Outcome column (0/1), or COLUMN>THRESHOLD.")],
    min_cell: Annotated[int, typer.Option(help="Cells under this many rows are suppressed at the site.", min=0)] = 5,
    out: Annotated[Path | None, typer.Option("--out", help="Write the validation as JSON here.")] = None,
) -> None:
    """External validation: each site shares only binned score counts and sums; AUC, Brier, ECE, drift combined."""
    import numpy as np
    import pandas as pd
    from rich.table import Table

    from fedcare.errors import ConfigError, DataError
    from fedcare.evaluation.validation import score_statistics, summarise_validation
    from fedcare.release.bundle import load_bundle
    from fedcare.release.predict import encode_rows

    try:
        loaded = load_bundle(bundle)
        pre = loaded.preprocessing
        encoded = list(pre.get("encoded", []))
        dummies = {
            col: [encoded.index(f"{col}_{v}") for v in list(cats)[1:] if f"{col}_{v}" in encoded]
            for col, cats in pre.get("categorical", {}).items()
        }
        stats = {}
        for spec in site:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise ConfigError(f"--site {spec!r}: expected NAME=patients.csv")
            try:
                frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: cannot read CSV: {exc}") from None
            x, good, problems = encode_rows(frame, pre)
            for problem in problems:
                err_console.print(f"[yellow]{name} row {problem.row}[/]: {problem.field}: {problem.reason} (left out)")
            y = np.asarray(_labels(frame.iloc[good], outcome))
            p = loaded.task.predict(loaded.model, x)
            stats[name] = score_statistics(y, p, x, categorical=dummies, min_cell=min_cell)  # computed at the site
        result = summarise_validation(stats, pre, reference=loaded.meta.get("reference"))
    except FedcareError as exc:
        raise fail(exc) from None
    table = Table(title="external validation (95 % CI)", title_justify="left")
    for col in ("site", "n", "events", "AUC", "Brier", "ECE", "drift flags"):
        table.add_column(col, justify="left" if col in ("site", "drift flags") else "right")

    def row(label: str, m: dict[str, object]) -> None:
        auc = m["auc"]  # type: ignore[index]
        table.add_row(
            label,
            str(m["n"]),
            str(m["events"]),
            f"{auc['value']:.3f} ({auc['lo']:.2f}–{auc['hi']:.2f})",  # type: ignore[index]
            f"{m['brier']:.3f}",
            f"{m['ece']:.3f}",
            "; ".join(m["drift"]["flagged"]) or "none",  # type: ignore[index]
        )

    for name, m in result["per_site"].items():
        row(name, m)
    if len(result["per_site"]) > 1:
        row("pooled", result["pooled"])
    console.print(table)
    console.print(
        f"drift: |SMD| > {result['thresholds']['smd']} or PSI > {result['thresholds']['psi']} against the training "
        f"cohort's combined statistics; {len(result['suppressed'])} cell(s) suppressed (< {min_cell} rows)",
        highlight=False,
    )
    if out is not None:
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        console.print(f"validation: {out}", highlight=False, soft_wrap=True)


@app.command()
def serve(
    bundle: Annotated[Path, typer.Option("--bundle", help="Release bundle folder (fedcare release).")],
    host: Annotated[str, typer.Option(help="Address to bind (not loopback: needs --token).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=0, max=65535)] = 8060,
    token: Annotated[
        str | None, typer.Option(envvar="FEDCARE_SERVE_TOKEN", help="Token every call must carry.")
    ] = None,
) -> None:
    """Serve one-patient predictions as JSON (POST /api/predict) on 127.0.0.1."""
    import importlib.util

    from fedcare.errors import ConfigError

    try:
        missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} not installed: pip install 'fedcare[clinic]'")
        from fedcare.dashboard.web import check_bind
        from fedcare.release.bundle import load_bundle
        from fedcare.release.serve import create_serve_app

        check_bind(host, token)
        app_ = create_serve_app(load_bundle(bundle), token=token)
    except FedcareError as exc:
        raise fail(exc) from None
    import uvicorn

    console.print(f"serving {bundle} on http://{host}:{port}/api/predict", highlight=False, soft_wrap=True)
    uvicorn.run(app_, host=host, port=port, log_level="warning")
