"""Deployment commands: ``server``, ``node``, ``doctor``, ``certs init|issue``, ``audit verify``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedcare.cli.app import app, console, err_console, fail
from fedcare.errors import ConfigError, FedcareError

if TYPE_CHECKING:
    from fedcare.protocols import RoundReport
    from fedcare.study.spec import StudySpec

__all__ = ["audit_app", "certs_app"]

certs_app = typer.Typer(help="Create a study CA and issue server and site certificates.", no_args_is_help=True)
audit_app = typer.Typer(help="Check a hash-chained audit log.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")
app.add_typer(audit_app, name="audit")

ConfigArg = Annotated[Path, typer.Option("--config", "-c", help="TOML config file.")]


def _info_logging() -> None:
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


StudyArg = Annotated[
    str | None,
    typer.Option("--study", "-s", help="The study file (study.toml) or a built-in study's name."),
]


def _study(study: str | None, fallback: Path | None, where: Path) -> StudySpec:
    from fedcare.study.builtin import resolve_study

    if study is not None:
        return resolve_study(study)
    if fallback is not None:
        return resolve_study(fallback)
    raise ConfigError(f"{where}: no study: pass --study STUDY (or set study = 'study.toml' in the server config)")


@app.command()
def server(
    config: ConfigArg,
    study: StudyArg = None,
    dashboard: Annotated[
        bool, typer.Option("--dashboard", help="Also serve the live dashboard while the study runs.")
    ] = False,
    dashboard_port: Annotated[int, typer.Option(help="Dashboard port.", min=0, max=65535)] = 8050,
    dashboard_host: Annotated[str, typer.Option(help="Dashboard address (not loopback: needs a token).")] = "127.0.0.1",
    dashboard_token: Annotated[
        str | None, typer.Option(envvar="FEDCARE_DASHBOARD_TOKEN", help="Dashboard token.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where report.html and summary.json go (default: <audit log folder>/reports/<run>)."
        ),
    ] = None,
) -> None:
    """Coordinate a study: serve sites over gRPC + mutual TLS, run (or resume) its rounds.

    The study file is the same one `fedcare simulate` and `fedcare up` run; the server
    config says where (listen address, certificates, allowed sites, store).
    """
    from fedcare.deploy.config import load_server_config

    _info_logging()
    web = None
    try:
        cfg = load_server_config(config)
        spec = _study(study, cfg.study_path, config)
        from fedcare.deploy.server import run_server  # the training stack, once both files are checked

        if dashboard:
            from fedcare.cli.dashboard import require_extra

            require_extra("dashboard")
            from fedcare.dashboard.app import start_beside

            web = start_beside(
                cfg.store_url, audit_log=cfg.audit_log, host=dashboard_host, port=dashboard_port, token=dashboard_token
            )
            console.print(f"dashboard: {web.url}/ (read-only; stops with the study)", highlight=False)
        console.print(
            f"[bold]fedcare server[/] · study {spec.name} ({spec.hash[:12]}…) · run {cfg.run_id or spec.name} · "
            f"{cfg.listen} · sites {', '.join(cfg.allowed_sites)} · store {cfg.store_url.split('@')[-1]}",
            highlight=False,
        )

        def on_round(r: RoundReport) -> None:
            auc = r.eval_metrics.get("auc")
            failed = ", ".join(f"{site} ({why[:100]})" for site, why in sorted(r.failures.items()))
            console.print(
                f"round {r.round_no}: {len(r.site_fit)}/{len(r.sampled)} sites"
                + (f", eval auc {auc:.3f}" if auc is not None else "")
                + (f", failed: {failed}" if failed else ""),
                highlight=False,
            )

        outcome = run_server(
            cfg, spec, on_round=on_round, on_listening=lambda p: console.print(f"listening on port {p}")
        )
        console.print(f"run {outcome.run_id}: {outcome.status}")
        if outcome.status == "completed":  # the run's report, from the store like `fedcare report`
            from fedcare.report.from_store import write_report_from_store
            from fedcare.store import SqlStore

            store = SqlStore(cfg.store_url, checkpoint_dir=cfg.checkpoint_dir)
            try:
                target = out or cfg.out_dir or cfg.audit_log.parent / "reports" / outcome.run_id
                paths = write_report_from_store(store, outcome.run_id, target)
            finally:
                store.close()
            console.print(f"report:  {paths[1]}\nsummary: {paths[0]}", highlight=False, soft_wrap=True)
    except FedcareError as exc:
        raise fail(exc) from None
    finally:
        if web is not None:
            web.stop()


@app.command()
def node(
    config: ConfigArg,
    study: StudyArg = None,
    show_task_hash: Annotated[
        bool, typer.Option("--show-task-hash", help="Print the installed task's hash (to review and approve) and exit.")
    ] = False,
    once: Annotated[
        bool, typer.Option("--once", help="Exit once the coordinator says its run is over (default: wait for the next)")
    ] = False,
) -> None:
    """Run a site: dial out to the coordinator and answer what this site's policy allows.

    The site reads its data through its site file's connector, checked against the
    study's schema, before it connects.
    """
    from fedcare.deploy.config import load_site_config

    _info_logging()
    try:
        from fedcare.study.builtin import resolve_study

        spec = resolve_study(study) if study is not None else None
        if show_task_hash:
            if spec is None:
                raise ConfigError("--show-task-hash needs --study STUDY: the task and its parameters are the study's")
            from fedcare.build.run import build_task
            from fedcare.build.site import load_site_data
            from fedcare.study.site import load_site
            from fedcare.task import task_hash

            inputs = load_site_data(load_site(config), spec)
            task = build_task(spec, n_features=inputs.n_features)
            console.print(f"{task.name} {task_hash(task)}", highlight=False, soft_wrap=True)
            console.print(f"study {spec.name} {spec.hash}", highlight=False, soft_wrap=True)
            return
        cfg = load_site_config(config)
        from fedcare.deploy.node import run_node  # the training stack, once the files are checked

        def started(info: object) -> None:
            task = ""
            if info.task:  # type: ignore[attr-defined]
                approved = "approved" if info.approved else "[red]NOT approved by [policy][/]"  # type: ignore[attr-defined]
                task = f" · task {info.task} {info.task_hash[:12]}… {approved}"  # type: ignore[attr-defined]
            console.print(
                f"[bold]fedcare node[/] · site {cfg.site} · coordinator {cfg.address} · studies "
                f"{', '.join(cfg.studies)}{task}",
                highlight=False,
            )

        run_node(cfg, spec, on_start=started, once=once)
    except FedcareError as exc:
        raise fail(exc) from None


@app.command()
def doctor(config: ConfigArg, timeout: Annotated[float, typer.Option(help="Seconds per network step.")] = 5.0) -> None:
    """Check this site's path to the coordinator step by step, and say what to fix."""
    from fedcare.deploy.config import load_site_config
    from fedcare.deploy.doctor import Check, run_doctor

    def show(check: Check) -> None:
        word, colour = ("FAIL", "red") if not check.ok else (("warn", "yellow") if check.warning else ("ok", "green"))
        # pad the word, not the markup around it, so the columns line up whatever the outcome
        console.print(f"  [{colour}]{word:>4}[/] {check.step:16s} {check.detail}", highlight=False, soft_wrap=True)
        if check.advice:
            console.print(f"{'':24}→ {check.advice}", highlight=False, soft_wrap=True)

    try:
        checks = run_doctor(load_site_config(config), timeout_s=timeout, report=show)
    except FedcareError as exc:
        raise fail(exc) from None
    if not all(c.ok for c in checks):
        failed = next(c for c in checks if not c.ok)
        err_console.print(f"[red]failed at step:[/] {failed.step}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=8)
    console.print("all checks passed")


@certs_app.command("init")
def certs_init(
    study: Annotated[str, typer.Option(help="Study name (goes into the CA's name).")],
    out: Annotated[Path, typer.Option(help="Folder for ca.pem and ca.key.")] = Path("certs"),
    days: Annotated[int, typer.Option(help="CA validity in days.", min=1)] = 3650,
) -> None:
    """Create the study CA (keep ca.key offline; it signs every certificate of the study)."""
    from fedcare.transport.tls import create_ca

    try:
        cert, key = create_ca(out, study=study, days=days)
    except FedcareError as exc:
        raise fail(exc) from None
    console.print(f"CA certificate: {cert}\nCA key (0600):  {key}", highlight=False, soft_wrap=True)


@certs_app.command("issue")
def certs_issue(
    name: Annotated[
        str, typer.Argument(help="Subject CN: the site's name (what the server allow-lists) or the server's.")
    ],
    kind: Annotated[str, typer.Option(help="'site' (client certificate) or 'server'.")] = "site",
    ca_dir: Annotated[Path, typer.Option(help="Folder holding ca.pem and ca.key.")] = Path("certs"),
    out: Annotated[Path | None, typer.Option(help="Output folder (default: the CA folder).")] = None,
    host: Annotated[list[str] | None, typer.Option(help="Server DNS name or IP (repeatable).")] = None,
    days: Annotated[int, typer.Option(help="Validity in days.", min=1)] = 825,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing certificate and key of NAME.")] = False,
) -> None:
    """Issue a server or site certificate signed by the study CA."""
    from fedcare.transport.tls import issue_certificate

    try:
        cert, key = issue_certificate(
            ca_dir,
            out or ca_dir,
            name=name,
            kind=kind,
            hosts=tuple(host or ()),
            days=days,  # type: ignore[arg-type]
            force=force,
        )
    except FedcareError as exc:
        raise fail(exc) from None
    console.print(f"certificate: {cert}\nkey (0600):  {key}", highlight=False, soft_wrap=True)


@audit_app.command("verify")
def audit_verify(
    path: Annotated[Path, typer.Argument(help="Audit log (JSON lines) to verify.")],
    anchors: Annotated[
        Path | None,
        typer.Option(help="The coordinator's audit log: also check every head of PATH it recorded."),
    ] = None,
    site: Annotated[
        str | None,
        typer.Option(
            help="With --anchors: the site whose log PATH is (its certificate CN), instead of the actor the log claims."
        ),
    ] = None,
) -> None:
    """Recompute the hash chain; exit 1 and name the first edited or deleted entry."""
    from fedcare.store.audit import verify_audit_log

    report = verify_audit_log(path, anchors=anchors, site=site)
    if not report.ok:
        err_console.print(
            f"[red]audit log {path} FAILS verification:[/] {report.problem}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(code=1)
    anchored = f"; {report.anchors} heads recorded by the coordinator match" if anchors is not None else ""
    console.print(
        f"audit log {path}: {report.entries} entries, chain intact, head {report.head}{anchored}",
        highlight=False,
        soft_wrap=True,
    )
