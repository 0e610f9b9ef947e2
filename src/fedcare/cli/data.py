"""``fedcare data check`` (schema check of a site's files) and ``fedcare stats`` (cohort statistics)."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from fedcare.cli.app import app, console, err_console, fail
from fedcare.errors import ConfigError, DataError, FedcareError
from fedcare.types import RunId, SiteId

if TYPE_CHECKING:  # the data stack is imported by the commands that use it, not by --help
    from fedcare.data.connect import LoadedSite
    from fedcare.data.stats import CohortStats

__all__ = ["check", "data_app", "stats", "synth_fhir"]

log = logging.getLogger(__name__)

data_app = typer.Typer(help="Check a site's data against the study schema.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="The site's site.toml.")]
StudyOption = Annotated[
    str | None,
    typer.Option("--study", "-s", help="The study file (its [data] schema) or a built-in study's name."),
]


def site_data_config(path: Path, study: str | None) -> Any:
    """A site file's connector view: its [data] checked against the study's schema (or its own [schema])."""
    from fedcare.study.builtin import resolve_study
    from fedcare.study.site import load_site

    spec = load_site(path)
    return spec.data_config(resolve_study(study) if study is not None else None)


@data_app.command("check")
def check(config: ConfigOption, study: StudyOption = None) -> None:
    """Read the site's files with its connector and report every problem at once (files are only read).

    The data is checked against the study's schema (``--study``), or the site file's own
    ``[schema]`` table.
    """
    from fedcare.data.connect import check_site

    try:
        cfg = site_data_config(config, study)
        loaded = check_site(cfg)
    except FedcareError as exc:
        raise fail(exc) from None
    report = loaded.report
    n_sources = len(report.sources)
    what = "image(s)" if loaded.images is not None or cfg.kind.value == "dicom" else "row(s)"
    target = escape(repr(cfg.schema.target))
    console.print(
        f"site [bold]{escape(cfg.site_id)}[/] · {cfg.kind.value} · {escape(str(cfg.path))} · "
        f"{n_sources} file(s) read · {len(loaded.frame)} {what} · "
        f"schema: {len(cfg.schema.columns)} column(s), target {target}",
        highlight=False,
        soft_wrap=True,
    )
    if report.ok:
        console.print("[green]ok[/]: the data fits the study schema")
        return
    for problem in report.problems:
        err_console.print(f"  {problem}", highlight=False, soft_wrap=True, markup=False)
    err_console.print(f"[red]{len(report.problems)} problem(s)[/] found; nothing was changed", highlight=False)
    raise typer.Exit(code=DataError.exit_code)


@data_app.command("synth-fhir")
def synth_fhir(
    out: Annotated[Path, typer.Option("--out", "-o", help="A new (or empty) folder for the bundles and files.")],
    patients: Annotated[int, typer.Option(help="Synthetic patients in all, shared out evenly.")] = 3000,
    sites: Annotated[int, typer.Option(help="Sites (folders of FHIR bundles, one site.toml each).")] = 3,
    seed: Annotated[int, typer.Option(help="Same seed, same bundles (byte for byte).")] = 1,
    rounds: Annotated[int, typer.Option(help="[federation] rounds of the study file written.")] = 20,
) -> None:
    """Write synthetic FHIR R4 patients (carebundle) as sites, with a ready study.toml and site files.

    Site k of n serves an older population with more hypertension than site k-1; the study
    trains hypertension (ICD-10-CM I10) from age, sex, BMI and systolic pressure. Needs the
    optional extra: ``pip install 'fedcare[synth]'``.
    """
    from fedcare.study.synthetic_fhir import write_synthetic_fhir

    def written(site: Any, hypertensive: int, seconds: float) -> None:
        console.print(
            f"{escape(site.site_id)}: {site.patients} patients, age {site.age_range[0]}-{site.age_range[1]}, "
            f"{hypertensive} with I10 ({hypertensive / site.patients:.0%}) · {seconds:.1f} s",
            highlight=False,
        )

    try:
        result = write_synthetic_fhir(out, patients=patients, sites=sites, seed=seed, rounds=rounds, on_site=written)
    except FedcareError as exc:
        raise fail(exc) from None
    flags = " ".join(f"--site {escape(str(p))}" for p in result.site_files)
    console.print(f"wrote {escape(str(result.study))} and {len(result.site_files)} site file(s) ({result.generator})")
    console.print(
        f"next: fedcare simulate --study {escape(str(result.study))} {flags}", highlight=False, soft_wrap=True
    )


def _sites(configs: list[Path], by: str | None, study: str | None) -> dict[SiteId, LoadedSite]:
    from fedcare.data.connect import LoadedSite, load_site
    from fedcare.data.partition import natural_partition

    loaded = [load_site(site_data_config(p, study)) for p in configs]
    if by is None:
        sites = {s.config.site_id: s for s in loaded}
        if len(sites) != len(loaded):
            raise ConfigError("two configs declare the same [site] id")
        return sites
    if len(loaded) != 1:
        raise ConfigError("--by splits one pooled data set: give exactly one --config")
    one = loaded[0]
    table = one.raw if by in one.raw.columns else one.frame  # a CSV's raw holds only its undeclared columns
    if by not in table.columns:
        columns = list(dict.fromkeys([*one.frame.columns, *one.raw.columns]))
        raise DataError(f"--by column {by!r} is not in the data (columns: {columns})")
    out: dict[SiteId, LoadedSite] = {}
    for value, idx in natural_partition(table[by].tolist()).items():
        part = one.frame.iloc[idx].reset_index(drop=True)
        out[SiteId(value)] = LoadedSite(one.config, part, one.raw.iloc[idx], None, one.report)
    return out


def _fmt(value: float | None) -> str:
    return "<5" if value is None else f"{value:g}"


def _tables(stats: CohortStats, min_count: int) -> list[Table]:
    tables = []
    sites = list(stats.sites)
    for name, labels in stats.layout.items():
        table = Table(title=escape(name), title_justify="left")
        table.add_column("site")
        for label in labels:
            table.add_column(escape(label), justify="right")
        numeric = name in stats.moments or any(
            agg.columns.get(name) is not None and agg.columns[name].moments is not None for agg in stats.sites.values()
        )
        if numeric:
            for head in ("count", "mean", "std"):
                table.add_column(head, justify="right")
        for site in sites:
            agg = stats.sites[site]
            col = agg.columns.get(name)
            if col is None:
                table.add_row(
                    escape(site), *(["suppressed"] + [""] * (len(labels) - 1)), *([""] * 3 if numeric else [])
                )
                continue
            cells = [f"<{min_count}*" if f else f"{v:g}" for v, f in zip(col.cells, col.suppressed, strict=True)]
            ms = stats.mean_std(name, site)
            extra = [f"{ms[0]:g}", f"{ms[1]:.4g}", f"{ms[2]:.4g}"] if ms else ["—"] * 3
            table.add_row(escape(site), *cells, *(extra if numeric else []))
        held = stats.held_back[name]
        cells = [f"{v:g}" + ("+" if h else "") for v, h in zip(stats.cells[name], held, strict=True)]
        ms = stats.mean_std(name)
        extra = [f"{ms[0]:g}", f"{ms[1]:.4g}", f"{ms[2]:.4g}"] if ms else ["—"] * 3
        table.add_row("[bold]combined[/]", *cells, *(extra if numeric else []))
        tables.append(table)
    return tables


def _in_process_stats(
    config: list[Path], by: str | None, seed: int | None, timeout_s: float, study: str | None
) -> tuple[Any, Any]:
    """Every site in this process: each answers through the same query path as a SiteNode."""
    import numpy as np

    from fedcare.data.cohort import StatsQuery, collect_cohort_stats
    from fedcare.privacy.guard import SitePrivacyGuard
    from fedcare.privacy.ledger import MemoryLedgerBackend, PrivacyLedger
    from fedcare.runtime.exchange import Exchange
    from fedcare.runtime.queries import SiteQueries
    from fedcare.transport.inprocess import InProcessChannel

    sites = _sites(config, by, study)
    first = next(iter(sites.values())).config
    schema, spec = first.schema, first.stats
    if seed is not None and spec.privacy is not None:
        log.warning("DP noise is seeded (%d): for tests and demos only", seed)
    handlers = {}
    for i, (site, loaded) in enumerate(sites.items()):
        rng = np.random.default_rng([seed, i]) if seed is not None else None
        cfg = loaded.config
        query = StatsQuery(site_id=site, frame=loaded.frame, schema=cfg.schema, spec=cfg.stats, rng=rng)
        # a rehearsal: each site accounts its DP release in a throw-away ledger (ε is shown)
        guard = SitePrivacyGuard(
            site=site,
            max_epsilon=None,
            delta=1e-5,
            ledger=PrivacyLedger(MemoryLedgerBackend(), site=site),
        )
        handlers[site] = SiteQueries(site_id=site, queries=[query], privacy=guard).handle
    channel = InProcessChannel(handlers, max_workers=2)
    try:
        exchange = Exchange(channel=channel, timeout_s=timeout_s)
        result = collect_cohort_stats(exchange, schema, spec, run_id=RunId(f"stats-{uuid.uuid4().hex[:8]}"))
    finally:
        channel.close()
    return spec, result


def _deployed_stats(
    server: Path, config: list[Path], timeout_s: float | None, study: str | None
) -> tuple[Any, Any, str]:
    """Listen as the coordinator of ``server``, wait for the sites' nodes, query them."""
    from fedcare.deploy.config import load_server_config
    from fedcare.deploy.stats import serve_cohort_stats

    if len(config) != 1:
        raise ConfigError(
            "with --server, give exactly one --config: the site.toml whose [schema] and [stats] the query asks for"
        )
    from fedcare.study.builtin import resolve_study

    if study is None:
        raise ConfigError("with --server, give --study STUDY: the study whose schema the sites are asked about")
    cfg = load_server_config(server)
    spec = resolve_study(study)
    asked = site_data_config(config[0], study)  # only its schema and release rules are used; no data is read
    console.print(
        f"[bold]fedcare stats[/] · study {escape(spec.name)} · {cfg.listen} · "
        f"sites {escape(', '.join(cfg.allowed_sites))}",
        highlight=False,
        soft_wrap=True,
    )
    outcome = serve_cohort_stats(
        listen=cfg.listen,
        tls=cfg.tls,
        allowed_sites=cfg.allowed_sites,
        study=spec.name,
        schema=asked.schema,
        spec=asked.stats,
        store_url=cfg.store_url,
        audit_log=cfg.audit_log,
        wait_for_sites=cfg.wait_for_sites,
        wait_timeout_s=cfg.wait_timeout_s,
        timeout_s=timeout_s if timeout_s is not None else spec.federation.round_timeout_s,
        min_sites=spec.federation.min_sites,
        on_listening=lambda port: console.print(f"listening on port {port}"),
        announce=spec,
    )
    return asked.stats, outcome.result, outcome.run_id


@app.command()
def stats(
    config: Annotated[
        list[Path] | None,
        typer.Option(
            "--config", "-c", help="A site.toml; repeat once per site (with --server: the one whose rules to ask for)."
        ),
    ] = None,
    server: Annotated[
        Path | None,
        typer.Option(
            "--server", help="Query deployed nodes: listen as this server.toml's coordinator (mTLS) and wait for them."
        ),
    ] = None,
    by: Annotated[
        str | None, typer.Option(help="Rehearse: split ONE config's data into sites by this column (natural split).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the released statistics as JSON.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed the DP noise (tests and demos only; default: CSPRNG).")] = None,
    timeout_s: Annotated[
        float | None, typer.Option("--timeout", help="Seconds to wait for the sites' answers (default 60).")
    ] = None,
    study: StudyOption = None,
) -> None:
    """Cohort statistics computed at each site (counts, mean/std, histograms, label balance); only aggregates leave.

    Each site answers a QUERY instruction with its own config's release rules: cells below
    ``[stats] min_count`` (default 5) are suppressed at the site, optional DP noise is added
    there (and charged to the site's privacy ledger), and the coordinator adds up what was
    released. Without ``--server`` every site runs in this process (a rehearsal); with
    ``--server server.toml`` the sites are deployed nodes that dial in over mutual TLS.
    """
    if not config:
        raise fail(ConfigError("give --config site.toml (once per site, or once with --server)"))
    run_id = ""
    try:
        if server is not None:
            if by is not None or seed is not None:
                raise ConfigError("--by and --seed rehearse in this process; they do not apply with --server")
            spec, result, run_id = _deployed_stats(server, config, timeout_s, study)
        else:
            spec, result = _in_process_stats(config, by, seed, timeout_s if timeout_s is not None else 60.0, study)
    except FedcareError as exc:
        raise fail(exc) from None
    stats_ = result.stats
    noise = {agg.noise for agg in stats_.sites.values()} or {"none"}
    console.print(
        f"[bold]fedcare stats[/] · {len(stats_.sites)} site(s) · n = {stats_.n:g} · "
        f"small cells < {spec.min_count} suppressed at the sites (<k*; '+' marks a combined lower bound) · "
        f"noise: {', '.join(sorted(noise))}",
        highlight=False,
        soft_wrap=True,
    )
    for table in _tables(stats_, spec.min_count):
        console.print(table)
    for site, eps in result.epsilon.items():
        console.print(f"site {escape(site)}: privacy ledger now at epsilon = {eps:.3f}", highlight=False)
    for site, why in result.failures.items():
        err_console.print(f"[yellow]site {escape(site)}[/]: {escape(why)}", highlight=False, soft_wrap=True)
    if json_out is not None:
        doc = stats_.to_dict()
        doc["failures"] = dict(result.failures)
        doc["epsilon"] = dict(result.epsilon)
        doc["min_count"] = spec.min_count
        if run_id:
            doc["run_id"] = run_id
        json_out.write_text(json.dumps(doc, indent=2, sort_keys=True))
        console.print(f"json: {json_out}")
