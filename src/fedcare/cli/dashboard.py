"""Watching and exporting runs: ``dashboard``, ``console`` (a site's own view), ``export``."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from fedcare.cli.app import app, console, default_db_url, fail
from fedcare.errors import ConfigError, FedcareError

__all__ = ["require_extra"]

#: what each optional extra brings (module checked -> extra that installs it)
_EXTRAS = {
    "dashboard": ("fastapi", "uvicorn"),
    "mlflow": ("mlflow",),
    "tensorboard": ("tensorboard",),
}


def require_extra(extra: str) -> None:
    """Raise a one-line ConfigError naming the extra when one of its packages is missing."""
    missing = [m for m in _EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{' and '.join(missing)} not installed: pip install 'fedcare[{extra}]'")


def _default_db() -> str:
    return default_db_url(Path("fedcare-out") / "run")


DbOpt = Annotated[
    str | None, typer.Option("--db", help="SQLAlchemy URL of the run store (default: ./fedcare-out/fedcare.db).")
]
PortOpt = Annotated[int, typer.Option("--port", help="Port to listen on.", min=0, max=65535)]


@app.command()
def dashboard(
    db: DbOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback needs --token.")] = "127.0.0.1",
    port: PortOpt = 8050,
    token: Annotated[
        str | None,
        typer.Option(envvar="FEDCARE_DASHBOARD_TOKEN", help="Required from every client (at least 16 characters)."),
    ] = None,
    audit: Annotated[Path | None, typer.Option(help="The coordinator's audit log, to show its chain's state.")] = None,
) -> None:
    """Serve the runs of a store in the browser: curves per site, participation, refusals, ε, live."""
    try:
        require_extra("dashboard")
        from fedcare.dashboard.app import create_app
        from fedcare.dashboard.web import check_bind, serve

        check_bind(host, token)
        url = db or _default_db()
        web = create_app(url, token=token, audit_log=audit)
    except FedcareError as exc:
        raise fail(exc) from None
    shown = f"[{host}]" if ":" in host else host
    console.print(
        f"[bold]fedcare dashboard[/] · http://{shown}:{port}/ · read-only"
        + (" · token required" if token else "")
        + " · Ctrl-C stops",
        highlight=False,
    )
    serve(web, host=host, port=port)


@app.command("console")
def site_console(
    config: Annotated[Path, typer.Option("--config", "-c", help="This site's site.toml.")],
    port: PortOpt = 8051,
) -> None:
    """Serve this site's own view on 127.0.0.1: instructions, refusals, what left, ε against the budget, audit."""
    try:
        require_extra("dashboard")
        from fedcare.dashboard.site_console import create_console_app
        from fedcare.dashboard.web import serve

        web = create_console_app(config)
    except FedcareError as exc:
        raise fail(exc) from None
    site = web.state.view.cfg.site
    console.print(f"[bold]fedcare console[/] · site {site} · http://127.0.0.1:{port}/ · local only · Ctrl-C stops")
    serve(web, host="127.0.0.1", port=port)


@app.command("export")
def export(
    run: Annotated[str, typer.Argument(help="Run id (see fedcare dashboard, or the store).")],
    to: Annotated[str, typer.Option("--to", help="mlflow or tensorboard.")],
    db: DbOpt = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI (http://..., or file:PATH for a file store).")
    ] = None,
    logdir: Annotated[Path | None, typer.Option(help="TensorBoard log folder (the run goes in a subfolder).")] = None,
    experiment: Annotated[str | None, typer.Option(help="MLflow experiment (default: fedcare/<study>).")] = None,
    artifact: Annotated[
        list[Path] | None, typer.Option(help="Extra file to attach, e.g. a model card (repeatable).")
    ] = None,
) -> None:
    """Export a run's metrics per round and per site, parameters and report to MLflow or TensorBoard."""
    try:
        if to == "mlflow":
            if tracking_uri is None:
                raise ConfigError("--to mlflow needs --tracking-uri (http://host:5000, or file:PATH)")
            require_extra("mlflow")
            from fedcare.dashboard.export import to_mlflow

            result = to_mlflow(
                db or _default_db(), run, tracking_uri=tracking_uri, experiment=experiment, artifacts=artifact or ()
            )
        elif to == "tensorboard":
            if logdir is None:
                raise ConfigError("--to tensorboard needs --logdir DIR")
            require_extra("tensorboard")
            from fedcare.dashboard.export import to_tensorboard

            result = to_tensorboard(db or _default_db(), run, logdir=logdir, artifacts=artifact or ())
        else:
            raise ConfigError(f"--to must be mlflow or tensorboard, got {to!r}")
    except FedcareError as exc:
        raise fail(exc) from None
    attached = f"; artefacts: {', '.join(result.artifacts)}" if result.artifacts else ""
    console.print(
        f"exported run {run} to {result.target}: {result.metrics} metrics ({result.points} points), "
        f"{result.params} parameters{attached}\n→ {result.location}",
        highlight=False,
        soft_wrap=True,
    )
