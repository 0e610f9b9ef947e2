"""Study commands: ``fedcare simulate`` (a study in one process) and ``fedcare study hash|check``.

``demo``, ``simulate`` and ``strategies run`` share :func:`run_simulation_command`: the
study and every site file are checked completely before anything is recorded or
written; a problem is one line naming the file, and the exit code says its kind.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NamedTuple

import typer
from rich.markup import escape

from fedcare.cli.app import DbOption, OutOption, app, console, default_db_url, fail
from fedcare.cli.outputs import check_db_url, check_out_dir
from fedcare.errors import ConfigError, FedcareError

if TYPE_CHECKING:
    from fedcare.study.spec import SimulationSpec, StudySpec

__all__ = ["run_simulation_command", "simulate", "study_app"]

study_app = typer.Typer(help="Check a study file and print its content hash (what sites pin).", no_args_is_help=True)
app.add_typer(study_app, name="study")

StudyOption = Annotated[
    str | None, typer.Option("--study", "-s", help="The study file (study.toml), or a built-in study's name.")
]
SiteOption = Annotated[list[Path] | None, typer.Option("--site", help="A site file (site.toml); repeat once per site.")]


class RayOptions(NamedTuple):
    """``--ray-actors``, ``--ray-cpus-per-site``, ``--ray-memory-per-site`` (``None``: the study's or the default)."""

    actors: int | None = None
    cpus_per_site: float | None = None
    memory_per_site: str | None = None

    def over(self, spec: SimulationSpec, *, backend: str | None, address: str | None) -> SimulationSpec:
        """``spec`` (the study's ``[simulation]``) with the command line's options in place, checked."""
        return spec.merged(
            backend=backend,
            ray_address=address,
            ray_actors=self.actors,
            cpus_per_site=self.cpus_per_site,
            memory_per_site=self.memory_per_site,
        )


def run_simulation_command(
    command: str,
    prepare: Callable[[], Any],
    *,
    sites: Sequence[Path],
    out: Path | None,
    db: str | None,
    settings: tuple[str, ...] = ("local", "pooled", "federated"),
    force: bool = False,
    backend: str | None = None,
    address: str | None = None,
    ray: RayOptions | None = None,
) -> None:
    """Check, run and report a study in one process (demo, simulate, strategies run).

    The output folder, the store, the study, every site's data and a one-step dry run of
    the training configs are checked before any training or write. ``backend``,
    ``address`` and ``ray`` (command-line options) replace the study's ``[simulation]``.
    """
    ray = ray or RayOptions()
    from fedcare.study.site import load_site
    from fedcare.types import new_run_id

    run_id = new_run_id()
    out_dir = out or Path("fedcare-out") / run_id
    created: Path | None = None
    try:
        if backend not in (None, "inprocess", "ray"):
            raise ConfigError(f"--backend must be inprocess or ray, got {backend!r}")
        created = check_out_dir(out_dir, force=force)  # before any training or write
        check_db_url(db or default_db_url(out_dir))
        study: StudySpec = prepare()
        where = ray.over(study.simulation, backend=backend, address=address)
        specs = [load_site(p) for p in sites]
        # the training stack (torch, opacus, scikit-learn: seconds to import) only once the files are checked
        from fedcare.cli.console import ExperimentProgress, results_table
        from fedcare.cli.privacy import privacy_table
        from fedcare.report import write_outputs
        from fedcare.simulate import simulate_study
        from fedcare.store import SqlStore

        console.print(
            f"[bold]fedcare {command}[/] · {study.description or study.name} · study hash {study.hash[:12]}…",
            highlight=False,
        )
        store = SqlStore(db or default_db_url(out_dir))
        try:
            with ExperimentProgress(console, study.rounds) as progress:
                summary = simulate_study(
                    study,
                    specs,
                    recorder=store,
                    experiment_id=run_id,
                    progress=progress,
                    settings=settings,
                    backend=where.backend,
                    ray_address=where.ray_address,
                    ray_actors=where.ray_actors,
                    cpus_per_site=where.cpus_per_site,
                    memory_per_site=where.memory_per_site,
                )
        finally:
            store.close()
        summary["store"] = store.url.split("@")[-1]
        first = next(iter(summary["settings"].values()))
        for metric in [m for m in ("accuracy", "auc", "c_index") if m in first["site_mean"]]:
            console.print(results_table(summary, metric))
        if "privacy" in summary:
            console.print(privacy_table(summary["privacy"]))
        summary_path, report_path = write_outputs(summary, out_dir)
    except FedcareError as exc:
        raise fail(exc, created) from None
    console.print(f"report:  {report_path}\nsummary: {summary_path}\nstore:   {summary['store']} (experiment {run_id})")


@app.command()
def simulate(
    study: StudyOption = None,
    site: SiteOption = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="A legacy run file (one CSV per site); see docs/simulate.md.")
    ] = None,
    out: OutOption = None,
    db: DbOption = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="Where simulated sites run: inprocess (threads) or ray (Ray actors; the ray extra). "
            "Default: the study's [simulation] backend, else inprocess."
        ),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="With --backend ray: the Ray cluster to join (default: start a local Ray).")
    ] = None,
    ray_actors: Annotated[
        int | None,
        typer.Option("--ray-actors", help="With ray: actors in the pool (default: the CPUs / --ray-cpus-per-site)."),
    ] = None,
    ray_cpus_per_site: Annotated[
        float | None,
        typer.Option("--ray-cpus-per-site", help="With ray: CPUs a site uses while it trains (default: 1)."),
    ] = None,
    ray_memory_per_site: Annotated[
        str | None,
        typer.Option("--ray-memory-per-site", help="With ray: memory a site holds, e.g. 512MiB (default: none)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Write into an --out folder that already holds files (overwriting them).")
    ] = False,
) -> None:
    """Rehearse a study in one process: Local, Pooled and the federated setting; write report.html and summary.json.

    The sites are the site files given with --site (each checked against the study's
    schema), or every site of a built-in data set. The same files run across real
    processes with `fedcare up` and across hospitals with `fedcare server` / `fedcare node`.
    """
    ray = RayOptions(ray_actors, ray_cpus_per_site, ray_memory_per_site)
    if config is not None:
        if study is not None or site:
            raise fail(ConfigError("give --study (with --site files) or a legacy --config run file, not both"))
        _legacy_simulate(config, out, db, force=force, backend=backend, address=address, ray=ray)
        return
    if study is None:
        raise fail(ConfigError("give --study STUDY (a study.toml or a built-in study's name) and its --site files"))

    def prepare() -> Any:
        from fedcare.study.builtin import resolve_study

        return resolve_study(study)

    run_simulation_command(
        "simulate", prepare, sites=site or [], out=out, db=db, force=force, backend=backend, address=address, ray=ray
    )


def _legacy_simulate(
    config: Path,
    out: Path | None,
    db: str | None,
    *,
    force: bool,
    backend: str | None,
    address: str | None,
    ray: RayOptions,
) -> None:
    """The run file of earlier versions (``[sites]`` of CSVs): still read, checked the same way."""
    from fedcare.runconfig import check_training, load_simulate_config
    from fedcare.types import new_run_id

    run_id = new_run_id()
    out_dir = out or Path("fedcare-out") / run_id
    created: Path | None = None
    try:
        from fedcare.study.spec import SimulationSpec

        where = ray.over(SimulationSpec(), backend=backend, address=address)
        cfg = load_simulate_config(config)
        created = check_out_dir(out_dir, force=force)  # before any training or write
        check_db_url(db or default_db_url(out_dir))
        # the data and training stack only once the run file and the outputs are checked
        from fedcare.cli.console import ExperimentProgress, results_table
        from fedcare.data.byo import load_table
        from fedcare.experiment import run_experiment
        from fedcare.report import write_outputs
        from fedcare.simulate import placed
        from fedcare.store import SqlStore
        from fedcare.tasks import make_task

        data, recipe = load_table(cfg.table)
        task = make_task(cfg.task, n_features=data.n_features)
        check_training(cfg, task, data)
        exp = placed(cfg.experiment, where)
        console.print(
            f"[bold]fedcare simulate[/] · {data.name}: {len(data.sites)} sites, {data.n_features} features, "
            f"{exp.strategy}, {exp.rounds} rounds"
        )
        for s in data.site_ids():
            d = data.sites[s]
            console.print(f"  {s:32s} train {len(d.train):5d}  test {len(d.test):5d}")
        store = SqlStore(db or default_db_url(out_dir))
        try:
            with ExperimentProgress(console, exp.rounds) as progress:
                summary = run_experiment(data, task, exp, recorder=store, experiment_id=run_id, progress=progress)
        finally:
            store.close()
        summary["config"].update(cfg.describe())
        summary["config"]["data"]["resolved"] = {
            "features": list(recipe.features),
            "categories": {c: list(v) for c, v in recipe.categorical.items()},
            "encoded_features": list(data.feature_names),
        }
        summary["store"] = store.url.split("@")[-1]
        for metric in ("accuracy", "auc"):
            console.print(results_table(summary, metric))
        summary_path, report_path = write_outputs(summary, out_dir)
    except FedcareError as exc:
        raise fail(exc, created) from None
    console.print(f"report:  {report_path}\nsummary: {summary_path}\nstore:   {summary['store']} (experiment {run_id})")


@study_app.command("hash")
def study_hash(study: Annotated[str, typer.Argument(help="A study file, or a built-in study's name.")]) -> None:
    """Print the study's content hash (a site pins it in policy.approved_study_hashes)."""
    from fedcare.study.builtin import resolve_study

    try:
        spec = resolve_study(study)
    except FedcareError as exc:
        raise fail(exc) from None
    console.print(f"{spec.name} {spec.hash}", highlight=False, soft_wrap=True)


@study_app.command("check")
def study_check(
    study: Annotated[str, typer.Argument(help="A study file, or a built-in study's name.")],
    site: SiteOption = None,
) -> None:
    """Check the study file, and each site file's data against its schema, without training."""
    from fedcare.simulate import load_study_sites
    from fedcare.study.builtin import resolve_study
    from fedcare.study.site import load_site

    try:
        spec = resolve_study(study)
        specs = [load_site(p) for p in site or []]
        _, inputs = load_study_sites(spec, specs)
    except FedcareError as exc:
        raise fail(exc) from None
    console.print(f"study {spec.name}: ok (hash {spec.hash})", highlight=False, soft_wrap=True)
    for s, i in inputs.items():
        console.print(f"  {s:24s} train {len(i.data.train):6d}  test {len(i.data.test):6d}", highlight=False)


@app.command()
def up(
    study: StudyOption = None,
    site: SiteOption = None,
    out: OutOption = None,
    db: DbOption = None,
    timeout: Annotated[float, typer.Option(help="Stop everything if the study has not finished by then (s).")] = 1800.0,
) -> None:
    """Rehearse a deployment on this machine: one server and one node per site as real processes, mutual TLS.

    Starts `fedcare server` and a `fedcare node` for every --site file (or every site of a
    built-in data set) on 127.0.0.1 with a throw-away study CA, runs the study, stops
    everything and leaves the report, the logs and both sides' audit trails in the
    output folder. The sites' own ledgers and memory are not touched: the rehearsal keeps
    its own.
    """
    from fedcare.deploy.rehearsal import prepare_rehearsal, run_rehearsal
    from fedcare.study.builtin import resolve_study
    from fedcare.types import new_run_id

    if study is None:
        raise fail(ConfigError("give --study STUDY (a study.toml or a built-in study's name) and its --site files"))
    run_id = new_run_id()
    out_dir = (out or Path("fedcare-out") / run_id).resolve()
    created = None if out_dir.exists() else out_dir
    store_url = db or default_db_url(out_dir)
    try:
        spec = resolve_study(study)
        rehearsal = prepare_rehearsal(
            spec,
            site or [],
            folder=out_dir / "rehearsal",
            run_id=f"{spec.name}-{run_id}",
            store_url=store_url,
            out_dir=out_dir,
        )
    except FedcareError as exc:
        raise fail(exc, created) from None
    console.print(
        f"[bold]fedcare up[/] · study {spec.name} ({spec.hash[:12]}…) · {len(rehearsal.site_configs)} sites · "
        f"127.0.0.1:{rehearsal.port} · mutual TLS with a throw-away CA in {rehearsal.folder}",
        highlight=False,
        soft_wrap=True,
    )
    for note in rehearsal.notes:
        console.print(f"  [yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    width = max(len(s) for s in [*rehearsal.site_configs, "server"])

    def show(name: str, line: str) -> None:
        if not line.strip():
            return
        colour = "cyan" if name == "server" else "magenta"
        console.print(f"[{colour}]{name:>{width}}[/] │ {escape(line)}", highlight=False, soft_wrap=True)

    code = run_rehearsal(rehearsal, on_line=show, timeout_s=timeout)
    if code != 0:
        raise fail(ConfigError(f"the rehearsal's server exited with code {code}; logs in {rehearsal.folder}"))
    _rehearsal_report(rehearsal.run_id, store_url, out_dir)


def _rehearsal_report(run_id: str, store_url: str, out_dir: Path) -> None:
    """Print the run's final per-site evaluation from the store, and where the outputs are."""
    from rich.table import Table

    from fedcare.store import SqlStore

    store = SqlStore(store_url)
    try:
        rounds = store.rounds(run_id)
        evals = [m for m in store.site_metrics(run_id, "eval") if rounds and m.round_no == rounds[-1].round_no]
    finally:
        store.close()
    table = Table(title=f"run {run_id}: last round's evaluation per site", title_justify="left")
    names = sorted({m.name for m in evals} - {"num_examples"})
    table.add_column("site")
    for n in names:
        table.add_column(n, justify="right")
    for site in sorted({m.site for m in evals}):
        row = {m.name: m.value for m in evals if m.site == site}
        table.add_row(site, *(f"{row[n]:.3f}" if n in row else "" for n in names))
    console.print(table)
    for name in ("report.html", "summary.json"):
        if (out_dir / name).exists():
            console.print(f"{name.split('.')[0]:8s} {out_dir / name}", highlight=False, soft_wrap=True)
    console.print(f"store:   {store_url.split('@')[-1]} (run {run_id})", highlight=False, soft_wrap=True)
