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
