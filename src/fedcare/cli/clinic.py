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
        list[str] | None,
        typer.Option("--site", help="NAME=patients.csv: one validating site and its rows (repeatable)."),
    ] = None,
    outcome: Annotated[
        str | None, typer.Option(help="Outcome column (0/1), or COLUMN>THRESHOLD (with --site).")
    ] = None,
    server: Annotated[
        Path | None,
        typer.Option(
            "--server",
            help="Validate at deployed nodes: listen as this server.toml's coordinator (mTLS), announce the "
            "bundle's study and ask each node for its statistics (the outcome is the study's).",
        ),
    ] = None,
    min_cell: Annotated[int, typer.Option(help="Cells under this many rows are suppressed at the site.", min=0)] = 5,
    timeout_s: Annotated[
        float | None, typer.Option("--timeout", help="With --server: seconds to wait for the sites' answers.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the validation as JSON here.")] = None,
) -> None:
    """External validation: each site shares only binned score counts and sums; AUC, Brier, ECE, drift combined.

    With ``--site NAME=rows.csv`` every site is computed in this process (a rehearsal);
    with ``--server server.toml`` the new sites are deployed nodes (``fedcare node``
    with their own site file) that compute the same statistics behind their policy.
    """
    import numpy as np
    import pandas as pd
    from rich.table import Table

    from fedcare.data.encode import categorical_dummies
    from fedcare.errors import ConfigError, DataError
    from fedcare.evaluation.validation import score_statistics, summarise_validation
    from fedcare.release.bundle import load_bundle
    from fedcare.release.predict import encode_rows

    run_id = ""
    try:
        loaded = load_bundle(bundle)
        pre = loaded.preprocessing
        stats: dict[str, dict[str, object]] = {}
        if server is not None:
            if site or outcome:
                raise ConfigError("with --server the sites' nodes read their own rows: no --site or --outcome")
            stats, left_out, failures, run_id = _deployed_validation(loaded, server, min_cell, timeout_s)
            for name, n in left_out.items():
                if n:
                    err_console.print(f"[yellow]{escape(name)}[/]: {n} row(s) left out at the site (bad predictors)")
            for name, why in failures.items():
                err_console.print(f"[yellow]{escape(name)}[/]: {escape(why)}", highlight=False, soft_wrap=True)
        else:
            if not site or outcome is None:
                raise ConfigError("give --site NAME=rows.csv (repeatable) and --outcome, or --server server.toml")
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
                    err_console.print(
                        f"[yellow]{name} row {problem.row}[/]: {problem.field}: {problem.reason} (left out)"
                    )
                y = np.asarray(_labels(frame.iloc[good], outcome))
                p = loaded.task.predict(loaded.model, x)
                stats[name] = score_statistics(  # computed at the site
                    y, p, x, categorical=categorical_dummies(pre), min_cell=min_cell
                )
        result = summarise_validation(stats, pre, reference=loaded.meta.get("reference"))
        if run_id:
            result["run_id"] = run_id
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


def _deployed_validation(
    loaded: object, server: Path, min_cell: int, timeout_s: float | None
) -> tuple[dict[str, dict[str, object]], dict[str, int], dict[str, str], str]:
    """Listen as the coordinator of ``server``, announce the bundle's study, ask the nodes."""
    from fedcare.deploy.config import load_server_config
    from fedcare.deploy.validation import serve_validation
    from fedcare.release.bundle import Bundle, BundleError
    from fedcare.study.spec import study_from_json

    assert isinstance(loaded, Bundle)
    named = loaded.meta.get("study") or {}
    if not named.get("spec"):
        raise BundleError(f"{loaded.path}: this bundle records no study, so no node can check its data against it")
    study = study_from_json(json.dumps(named["spec"]), where=f"{loaded.path} study")
    if study.hash != named.get("hash"):
        raise BundleError(f"{loaded.path}: the bundle's study hashes to {study.hash}, it records {named.get('hash')}")
    cfg = load_server_config(server)
    console.print(
        f"[bold]fedcare validate[/] · study {escape(study.name)} ({study.hash[:12]}) · {cfg.listen} · "
        f"sites {escape(', '.join(cfg.allowed_sites))}",
        highlight=False,
        soft_wrap=True,
    )
    outcome = serve_validation(
        listen=cfg.listen,
        tls=cfg.tls,
        allowed_sites=cfg.allowed_sites,
        study=study,
        model=loaded.model,
        preprocessing=loaded.preprocessing,
        task=loaded.meta["task"]["name"],
        task_hash=loaded.meta["task"]["hash"],
        min_cell=min_cell,
        store_url=cfg.store_url,
        audit_log=cfg.audit_log,
        wait_for_sites=cfg.wait_for_sites,
        wait_timeout_s=cfg.wait_timeout_s,
        timeout_s=timeout_s if timeout_s is not None else study.federation.round_timeout_s,
        min_sites=1,
        on_listening=lambda port: console.print(f"listening on port {port}"),
    )
    return outcome.statistics, outcome.left_out, dict(outcome.failures), outcome.run_id


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
