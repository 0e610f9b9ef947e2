"""``fedcare tasks``: list installed tasks, show what a hash covers, sign an approval, start a package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from fedcare.cli.app import app, console, fail
from fedcare.cli.strategies import parse_assignments
from fedcare.errors import ConfigError, FedcareError

__all__ = ["tasks_app"]

tasks_app = typer.Typer(
    help="Task packages: list them, show what a hash covers, sign approvals, start a new one.",
    no_args_is_help=True,
)
app.add_typer(tasks_app, name="tasks")

ParamOption = Annotated[
    list[str] | None, typer.Option("--param", "-p", help="Task parameter key=value (repeatable), as in the study.")
]


def _build(name: str, param: list[str] | None) -> Any:
    from fedcare.tasks import make_task

    return make_task(name, **parse_assignments(param, "--param"))


@tasks_app.command("list")
def list_tasks() -> None:
    """Every installed task with its hash (default parameters), version and source."""
    from fedcare.task import task_hash
    from fedcare.tasks import make_task, task_entries

    rows = [("name", "hash (default parameters)", "version", "source")]
    for name, entry in task_entries().items():
        try:
            digest = task_hash(make_task(name))
        except FedcareError as exc:
            digest = f"needs parameters ({str(exc).split(': ')[-1][:60]})"
        if entry.conflicts:
            digest = f"registered by {', '.join(sorted((entry.distribution, *entry.conflicts)))}"
        rows.append((name, digest, entry.version or "-", entry.source))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for i, row in enumerate(rows):  # plain lines: hashes are copied into site.toml whole
        line = "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        console.print(f"[bold]{line}[/]" if i == 0 else line, highlight=False, soft_wrap=True, markup=i == 0)


@tasks_app.command("show")
def show_task(
    name: Annotated[str, typer.Argument(help="Task name (see `fedcare tasks list`).")],
    param: ParamOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the manifest as JSON (what a reviewer signs).")
    ] = False,
) -> None:
    """Print what the task hash covers: files and their digests, version, parameters."""
    from fedcare.task_manifest import task_manifest
    from fedcare.tasks import task_entries

    try:
        manifest = task_manifest(_build(name, param))
    except FedcareError as exc:
        raise fail(exc) from None
    if as_json:
        print(json.dumps(manifest.to_dict(), indent=2, sort_keys=True))
        return
    entry = task_entries()[name]
    console.print(f"[bold]{name}[/] · {entry.source} · factory {entry.target}", highlight=False)
    console.print(f"task hash  {manifest.digest}", highlight=False)
    console.print(f"parameters {json.dumps(dict(manifest.params), sort_keys=True)}", highlight=False)
    table = Table(title=f"{len(manifest.files)} files covered by the hash")
    table.add_column("file")
    table.add_column("sha256")
    for label, digest in sorted(manifest.files.items()):
        table.add_row(label, digest)
    console.print(table)


@tasks_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Folder for the key pair.")] = Path("."),
    reviewer: Annotated[str, typer.Option("--name", help="File stem of the key pair (the reviewer).")] = "reviewer",
) -> None:
    """Create a reviewer's Ed25519 key pair: NAME.key (keep it private) and NAME.pub (give it to sites)."""
    from fedcare.runtime.approval import generate_reviewer_key

    try:
        fp = generate_reviewer_key(out / f"{reviewer}.key", out / f"{reviewer}.pub")
    except FedcareError as exc:
        raise fail(exc) from None
    console.print(f"private key {out / f'{reviewer}.key'}\npublic key  {out / f'{reviewer}.pub'}\nfingerprint {fp}")


@tasks_app.command("sign")
def sign(
    name: Annotated[str, typer.Argument(help="Installed task to approve (as reviewed).")],
    key: Annotated[Path, typer.Option("--key", help="The reviewer's private key (fedcare tasks keygen).")],
    param: ParamOption = None,
    out: Annotated[Path | None, typer.Option("--out", help="Signature file (default: NAME-HASH12.sig.json).")] = None,
    reviewer: Annotated[str, typer.Option("--reviewer", help="Who signs (recorded and signed).")] = "",
) -> None:
    """Sign the installed task's hash; sites that trust the key approve exactly these files."""
    from fedcare.runtime.approval import sign_manifest
    from fedcare.task_manifest import task_manifest

    try:
        manifest = task_manifest(_build(name, param))
        doc = sign_manifest(manifest, key, reviewer=reviewer)
        path = out or Path(f"{name}-{manifest.digest[:12]}.sig.json")
        if path.exists():
            raise ConfigError(f"{path} exists; refusing to overwrite a signature")
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    except FedcareError as exc:
        raise fail(exc) from None
    console.print(f"signed {name} {manifest.digest} ({len(manifest.files)} files) -> {path}", highlight=False)


@tasks_app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="Task name (also the distribution name), e.g. xray-resnet.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to create the package in.")] = Path("."),
) -> None:
    """Write a task package skeleton: pyproject with the entry point, the task, a contract test."""
    from fedcare.cli.task_template import write_task_package

    try:
        files = write_task_package(name, out)
    except FedcareError as exc:
        raise fail(exc) from None
    for path in files:
        console.print(f"wrote {path}", highlight=False)
    console.print(f"next: pip install -e {out / name} && pytest {out / name / 'tests'}", highlight=False)
