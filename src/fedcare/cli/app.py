"""The typer application and the error boundary that maps FedcareError to exit codes."""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from fedcare.errors import FedcareError

__all__ = ["COMMAND_MODULES", "INTERNAL_ERROR_EXIT", "PANELS", "app", "arrange_commands", "main", "register_commands"]

app = typer.Typer(
    name="fedcare",
    help="Federated learning for healthcare: train together, keep patient records where they are.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL of the run store (default: SQLite file in the output folder's parent)."),
]
OutOption = Annotated[Path | None, typer.Option("--out", help="Output folder (default: ./fedcare-out/<run id>).")]


def default_db_url(out_dir: Path) -> str:
    """The embedded SQLite store beside the run folders: ``<parent>/fedcare.db``."""
    return f"sqlite:///{(out_dir.parent / 'fedcare.db').resolve()}"


def fail(exc: FedcareError, created: Path | None = None) -> typer.Exit:
    """Print a one-line error, remove a half-made output folder, return the exit."""
    err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    if created is not None and created.exists():
        shutil.rmtree(created, ignore_errors=True)
    return typer.Exit(code=exc.exit_code)


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    register_commands(sys.argv[1:])
    arrange_commands()
    try:
        app()
    except FedcareError as exc:  # pragma: no cover - commands catch their own
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the CLI boundary: a bug is one line and a log, never a traceback
        log_path = _write_crash_log(exc)
        first = (str(exc).splitlines() or [""])[0][:300]
        err_console.print(
            f"[red]internal error:[/] {escape(type(exc).__name__)}: {escape(first)} "
            f"(a fedcare bug, not your input); see log {log_path}",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(INTERNAL_ERROR_EXIT)


#: The module that registers each top-level command or group. Running one command imports only
#: its module (the others cost a third of a second of typer's set-up); ``--help`` and unknown
#: names import them all. Each module imports its heavy libraries (torch, opacus, scikit-learn)
#: inside the commands, so the deployment commands and configuration errors stay fast.
COMMAND_MODULES: dict[str, str] = {
    "demo": "fedcare.cli.demo",
    "simulate": "fedcare.cli.study",
    "up": "fedcare.cli.study",
    "study": "fedcare.cli.study",
    "report": "fedcare.cli.report",
    "server": "fedcare.cli.deploy",
    "node": "fedcare.cli.deploy",
    "doctor": "fedcare.cli.deploy",
    "certs": "fedcare.cli.deploy",
    "audit": "fedcare.cli.deploy",
    "tasks": "fedcare.cli.tasks",
    "strategies": "fedcare.cli.strategies",
    "data": "fedcare.cli.data",
    "stats": "fedcare.cli.data",
    "console": "fedcare.cli.dashboard",
    "dashboard": "fedcare.cli.dashboard",
    "export": "fedcare.cli.dashboard",
    "privacy": "fedcare.cli.privacy",
    "release": "fedcare.cli.clinic",
    "predict": "fedcare.cli.clinic",
    "validate": "fedcare.cli.clinic",
    "serve": "fedcare.cli.clinic",
}


def register_commands(argv: Sequence[str]) -> None:
    """Import the module of the command ``argv`` names, or every command module when it names none."""
    name = next((arg for arg in argv if not arg.startswith("-")), None)
    modules = [COMMAND_MODULES[name]] if name in COMMAND_MODULES else sorted(set(COMMAND_MODULES.values()))
    for module in modules:
        importlib.import_module(module)


#: ``fedcare --help`` in the order a new user meets the commands: one panel per stage.
PANELS: dict[str, tuple[str, ...]] = {
    "Start here": ("demo", "simulate", "up", "report"),
    "Across hospitals": ("server", "node", "doctor", "certs", "study", "tasks", "strategies"),
    "At a site": ("data", "stats", "console", "privacy", "audit"),
    "To the clinic": ("release", "predict", "validate", "serve"),
    "Watch": ("dashboard", "export"),
}


def arrange_commands() -> None:
    """Put every registered command and group in its help panel, panels in :data:`PANELS` order.

    One table here instead of a panel name on each command keeps the help's order in one
    place; a command missing from the table goes to "More" at the end.
    """
    rank = {name: i for i, name in enumerate(n for names in PANELS.values() for n in names)}
    panel = {name: title for title, names in PANELS.items() for name in names}

    def name_of(info: typer.models.CommandInfo | typer.models.TyperInfo) -> str:
        if info.name or isinstance(info, typer.models.TyperInfo) or info.callback is None:
            return str(info.name)
        return info.callback.__name__.replace("_", "-")  # typer's own default name

    for infos in (app.registered_commands, app.registered_groups):
        for info in infos:
            info.rich_help_panel = panel.get(name_of(info), "More")
        infos.sort(key=lambda info: rank.get(name_of(info), len(rank)))


#: Exit code of an unexpected (non-FedcareError) failure: EX_SOFTWARE from sysexits.h.
INTERNAL_ERROR_EXIT = 70


def _write_crash_log(exc: BaseException) -> Path:
    """Write the traceback of an unexpected error to a log file; return its path."""
    import tempfile
    import time
    import traceback

    path = Path(tempfile.gettempdir()) / f"fedcare-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = "".join(traceback.format_exception(exc))
    try:
        path.write_text(f"fedcare {' '.join(sys.argv[1:])}\n\n{text}", encoding="utf-8")
    except OSError:  # nowhere to write it: the traceback goes to stderr after all
        print(text, file=sys.stderr)
    return path


@app.callback()
def root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    """Federated learning for healthcare: train together, keep patient records where they are."""
    if verbose:
        logging.getLogger().setLevel(logging.INFO)
