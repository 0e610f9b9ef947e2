"""report.html: a self-contained page (inline SVG, inline CSS, no CDN) for one experiment."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from fedcare.report.clinical import clinical_section
from fedcare.report.plots import forest_svg, round_curves_svg, setting_dots_svg
from fedcare.report.reference import FLAMBY, METRIC

__all__ = ["render_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}h3{font-size:1rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
th,td{border:1px solid #ccc;padding:.2rem .5rem;text-align:right;white-space:nowrap}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:.85rem}
tr.sum td{background:#fafafa;font-weight:600}.ci{color:#666;font-size:.8em}
.scroll{overflow-x:auto;max-width:100%}
.figs{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}.figs svg{max-width:100%;height:auto}
details summary{cursor:pointer;color:#135}
code{white-space:pre-wrap;word-break:break-word}
"""

#: Metrics shown, in order, when present.
METRICS = ("auc", "c_index", "accuracy")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if value != value else f"{value:.3f}"
    if value is None:
        return "—"
    return html.escape(str(value))


def _ci(interval: Mapping[str, Any] | None) -> str:
    """`` (lo–hi)`` of an interval, or nothing when there is none."""
    if not interval:
        return ""
    lo, hi = interval.get("lo"), interval.get("hi")
    if lo is None or hi is None or lo != lo or hi != hi:
        return ""
    return f" <span class='ci'>({lo:.2f}–{hi:.2f})</span>"


def _value(res: Mapping[str, Any], site: str | None, metric: str) -> tuple[Any, Mapping[str, Any] | None]:
    unc = res.get("uncertainty", {})
    if site is None:
        return res["pooled_test"].get(metric), unc.get("pooled_test", {}).get(metric)
    return res["per_site"].get(site, {}).get(metric), unc.get("per_site", {}).get(site, {}).get(metric)


def _settings_table(summary: Mapping[str, Any], metric: str) -> str:
    """Sites as rows, settings as columns: value with its 95 % CI; then the summary rows."""
    sites = list(summary["sites"])
    settings = summary["settings"]
    head = "".join(f"<th>{html.escape(name)}</th>" for name in settings)
    rows = []
    for site in sites:
        n = next((r["per_site"].get(site, {}).get("n_test") for r in settings.values() if site in r["per_site"]), None)
        cells = "".join(
            f"<td>{_fmt(_value(r, site, metric)[0])}{_ci(_value(r, site, metric)[1])}</td>" for r in settings.values()
        )
        rows.append(
            f"<tr><td>{html.escape(summary['sites'][site])}</td><td>{_fmt(int(n)) if n else '—'}</td>{cells}</tr>"
        )
    mean = "".join(f"<td>{_fmt(r['site_mean'].get(metric, float('nan')))}</td>" for r in settings.values())
    rows.append(f"<tr class='sum'><td>mean over sites</td><td></td>{mean}</tr>")
    meta_cells = []
    for r in settings.values():
        meta = r.get("uncertainty", {}).get("meta", {}).get(metric)
        if meta and meta.get("k"):
            i2 = meta.get("i2")
            meta_cells.append(
                f"<td>{_fmt(meta['random'])}{_ci(meta)}"
                + (f" <span class='ci'>I² {100 * i2:.0f} %</span>" if i2 is not None else "")
                + "</td>"
            )
        else:
            meta_cells.append("<td>—</td>")
    rows.append(f"<tr class='sum'><td>pooled estimate (random effects)</td><td></td>{''.join(meta_cells)}</tr>")
    pooled = "".join(
        f"<td>{_fmt(_value(r, None, metric)[0])}{_ci(_value(r, None, metric)[1])}</td>" for r in settings.values()
    )
    total = sum(int(m.get("n_test", 0)) for m in next(iter(settings.values()))["per_site"].values()) if settings else 0
    rows.append(f"<tr class='sum'><td>pooled test set</td><td>{total or '—'}</td>{pooled}</tr>")
    return f"<div class='scroll'><table><tr><th>site</th><th>n test</th>{head}</tr>" + "".join(rows) + "</table></div>"


def _reference_table(summary: Mapping[str, Any]) -> str:
    ref = FLAMBY.get(summary["dataset"])
    if not ref:
        return ""
    ours = summary["settings"]
    metric = METRIC.get(summary["dataset"], "accuracy")
    rows = []
    for method, values in ref.items():
        key = "local" if method.startswith("local") else method
        mine = ours.get(key, {})
        rows.append(
            f"<tr><td>{html.escape(method)}</td><td>{_fmt(values['site_mean'])}</td>"
            f"<td>{_fmt(values['pooled_test'])}</td>"
            f"<td>{_fmt(mine.get('site_mean', {}).get(metric, float('nan')))}</td>"
            f"<td>{_fmt(mine.get('pooled_test', {}).get(metric, float('nan')))}</td></tr>"
        )
    return (
        "<h2>Beside FLamby's published numbers</h2>"
        f"<p class='note'>FLamby (NeurIPS 2022) {html.escape(summary['dataset'])} {metric}, mean of seeds "
        "42–46 from its published per-run CSVs; FLamby standardises heart disease per centre and runs 15 "
        "(heart) or 5 (TCGA) rounds. Ours: this run, one seed.</p>"
        "<table><tr><th>method</th><th>FLamby mean over sites</th><th>FLamby pooled test</th>"
        "<th>fedcare mean over sites</th><th>fedcare pooled test</th></tr>" + "".join(rows) + "</table>"
    )


def _comparison_table(summary: Mapping[str, Any]) -> str:
    """The experiment beside the reference runs (``fedcare report --compare``): per run, then per task over seeds."""
    comp = summary.get("comparison")
    if not comp or not comp.get("rows"):
        return ""
    rows = comp["rows"]
    metrics = [m for m in ("accuracy", "auc", "c_index") if any(m in r for r in rows)]
    differs = list(comp.get("fit_differs") or [])
    head = "".join(f"<th>{m}</th>" for m in metrics)
    fit_head = "<th>fit, where runs differ</th>" if differs else ""
    body = []
    for r in rows:
        mine = r["experiment"] == comp["this"]
        cells = "".join(f"<td>{_fmt(r.get(m))}</td>" for m in metrics)
        fit = r.get("fit", {})
        fit_cell = (
            "<td>" + html.escape(", ".join(f"{k} {fit[k] if k in fit else '—'}" for k in differs)) + "</td>"
            if differs
            else ""
        )
        body.append(
            f"<tr{' class=sum' if mine else ''}><td>{html.escape(r['experiment'])}{' (this report)' if mine else ''}"
            f"</td><td>{html.escape(r['task'])}</td><td>{html.escape(r['task_hash'][:12])}</td>"
            f"<td>{html.escape(r['setting'])}</td><td>{r['seed']}</td><td>{r['rounds']}</td>{cells}{fit_cell}</tr>"
        )
    groups = []
    for g in comp["by_task"]:
        cells = "".join(f"<td>{g[m]['mean']:.3f} ± {g[m]['std']:.3f}</td>" if m in g else "<td>—</td>" for m in metrics)
        groups.append(
            f"<tr><td>{html.escape(g['task'])}</td><td>{html.escape(g['task_hash'][:12])}</td>"
            f"<td>{html.escape(g['setting'])}</td><td>{g['runs']}</td>"
            f"<td>{html.escape(', '.join(map(str, g['seeds'])))}</td>{cells}</tr>"
        )
    mixed = (
        f"<p class='note'><b>The runs are on different data sets ({html.escape(', '.join(comp['datasets']))}): "
        "their numbers are not comparable.</b></p>"
        if len(comp["datasets"]) > 1
        else ""
    )
    return (
        "<h2 id='compare'>Compared with other runs</h2>"
        "<p class='note'>Federated settings of this experiment and of the runs named with <code>--compare</code>, "
        "from the same store: the final global model on the pooled test set (the union of the sites' test sets). "
        "Then, per task and setting, the mean ± standard deviation over the runs (seeds)."
        + (
            " The last column names the local training settings ([fit]) that are not the same in every run."
            if differs
            else ""
        )
        + "</p>"
        + mixed
        + "<div class='scroll'><table><tr><th>experiment</th><th>task</th><th>task hash</th><th>setting</th>"
        f"<th>seed</th><th>rounds</th>{head}{fit_head}</tr>" + "".join(body) + "</table></div>"
        "<div class='scroll'><table><tr><th>task</th><th>task hash</th><th>setting</th><th>runs</th><th>seeds</th>"
        + "".join(f"<th>{m} mean ± sd</th>" for m in metrics)
        + "</tr>"
        + "".join(groups)
        + "</table></div>"
    )


def _privacy_table(summary: Mapping[str, Any]) -> str:
    privacy = summary.get("privacy")
    if not privacy:
        return ""
    s = privacy["settings"]
    rows = []
    for site, row in privacy["sites"].items():
        name = summary["sites"].get(site, site)
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{_fmt(row['epsilon_run'])}</td><td>{_fmt(row['epsilon_study'])}</td>"
            f"<td>{row['delta']:g}</td><td>{_fmt(row['max_epsilon'] if row['max_epsilon'] is not None else '—')}</td>"
            f"<td>{html.escape(', '.join(row['mechanisms']) or '—')}</td><td>{_fmt(row['noise_multiplier'])}</td>"
            f"<td>{_fmt(row['sample_rate'])}</td><td>{_fmt(row['steps_per_round'])}</td>"
            f"<td>{row['rounds_charged']}</td></tr>"
        )
    return (
        "<h2>Privacy spent per site</h2>"
        f"<p class='note'>DP level {html.escape(str(s['level']))}, target ε {html.escape(str(s['epsilon']))} at "
        f"δ {s['delta']:g}; ε recomputed by the accountant ({html.escape(privacy['accountant_version'])}) from each "
        "site's ledger. Local and Pooled above are non-private references.</p>"
        "<table><tr><th>site</th><th>ε this run</th><th>ε study</th><th>δ</th><th>budget</th><th>mechanism</th>"
        "<th>noise σ</th><th>sample rate</th><th>steps/round</th><th>rounds charged</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _traffic_table(summary: Mapping[str, Any]) -> str:
    """Bytes per round of each federated setting (model arrays sent and received)."""
    rows = []
    for name, res in summary["settings"].items():
        history = [h for h in res.get("history") or [] if "bytes_up" in h.get("fit", {})]
        if not history:
            continue
        up = [h["fit"]["bytes_up"] for h in history]
        down = [h["fit"].get("bytes_down", 0.0) for h in history]
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{len(history)}</td><td>{_size(sum(up) / len(up))}</td>"
            f"<td>{_size(sum(down) / len(down))}</td><td>{_size(sum(up) + sum(down))}</td></tr>"
        )
    if not rows:
        return ""
    codec = html.escape(str(summary.get("config", {}).get("fit_config", {}).get("compression", "none")))
    return (
        "<h2>Traffic per round</h2>"
        f"<p class='note'>Array bytes of the fit instructions (down) and the sites' updates (up); "
        f"update compression: {codec}.</p>"
        "<table><tr><th>setting</th><th>rounds</th><th>up per round</th><th>down per round</th><th>total</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def round_protection(fit: Mapping[str, Any]) -> str:
    """What protected a round's updates, read from its fit metrics (the workflow's own counters)."""
    if "ckks_sites" in fit:
        return "threshold CKKS"
    if "p2p_sites" in fit:
        return "peer-to-peer, SecAgg+ masks, coordinator relay only"
    return "SecAgg+" if "secagg_survivors" in fit else "none"


def _protection_table(summary: Mapping[str, Any]) -> str:
    """Which protection each round of each federated setting had (the coordinator saw only the sum, or each update)."""
    rows = []
    for name, res in summary["settings"].items():
        history = res.get("history") or []
        if not history:
            continue
        kinds: dict[str, list[int]] = {}
        for h in history:
            kinds.setdefault(round_protection(h.get("fit", {})), []).append(int(h.get("round", 0)))
        text = "; ".join(f"{k}: rounds {', '.join(map(str, v))}" for k, v in kinds.items())
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(text)}</td></tr>")
    if not rows:
        return ""
    return (
        "<h2>Protection of the updates</h2>"
        "<p class='note'>SecAgg+ and threshold CKKS: the coordinator learns only the sum of the updates "
        "(docs/secure_aggregation.md, docs/he.md); peer-to-peer: the sites unmask the sum and average "
        "themselves, the coordinator relays bytes it cannot read and learns not even the sum (docs/p2p.md); "
        "none: it sees each site's update.</p>"
        "<table><tr><th>setting</th><th>per round</th></tr>" + "".join(rows) + "</table>"
    )


def _uncertainty_note(summary: Mapping[str, Any]) -> str:
    methods = sorted(
        {
            iv.get("method", "")
            for r in summary["settings"].values()
            for ivs in r.get("uncertainty", {}).get("per_site", {}).values()
            for iv in ivs.values()
        }
    )
    if not methods:
        return "<p class='note'>No confidence intervals were recorded for this run.</p>"
    return (
        "<p class='note'>In brackets: 95 % confidence intervals (AUC: DeLong, on the logit scale; accuracy, "
        "sensitivity, specificity: Wilson; C-index: bootstrap over patients). The pooled estimate combines the "
        "sites as a random-effects meta-analysis (DerSimonian–Laird on the logit scale); I² is the share of the "
        "variation between sites beyond chance (above 50 %: the sites differ). Local: each site's own model on its "
        "own test set; Pooled: one model on all training rows in one place. Mean over sites is unweighted "
        "(FLamby's figure value).</p>"
    )


def _task_line(summary: Mapping[str, Any]) -> str:
    """The task's name, its hashed parameters (architecture, arithmetic) and its hash, as one sentence."""
    task = summary["task"]
    parts = [f"{html.escape(str(k))} {html.escape(str(v))}" for k, v in (task.get("params") or {}).items()]
    params = ", ".join(parts) + "; " if parts else ""
    return f"Task {html.escape(task['name'])} ({params}hash {html.escape(task['hash'][:16])}…)."


def render_report(summary: Mapping[str, Any]) -> str:
    """Return the full HTML page for an experiment summary (see summary.json)."""
    sites = list(summary["sites"])
    names = summary["sites"]
    settings = summary["settings"]
    metrics = [m for m in METRICS if any(m in r["per_site"].get(s, {}) for r in settings.values() for s in sites)]
    tables = "".join(f"<h3>test {html.escape(m)}</h3>{_settings_table(summary, m)}" for m in metrics)
    primary = metrics[0] if metrics else None
    has_ci = any(r.get("uncertainty") for r in settings.values())
    forests = [forest_svg(settings, sites, names, primary)] if primary and has_ci else []
    dots = [setting_dots_svg(settings, sites, names, m) for m in metrics]
    curves = []
    for name, res in settings.items():
        history = res.get("history")
        if history:
            for m in [*metrics, "loss"]:
                curves.append(round_curves_svg(history, m, f"{name}: test {m} of the global model per round"))
    forest_part = (
        f"<h2 id='forest'>Forest plots: {html.escape(primary or '')} per site with 95 % CI, pooled estimate and I²</h2>"
        f"<div class='figs'>{''.join(forests)}</div>"
        if forests
        else ""
    )
    cfg = html.escape(str(summary.get("config", {})))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedcare report: {html.escape(summary["dataset"])}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}</style></head><body>
<h1>fedcare: {html.escape(summary["dataset"])}, experiment {html.escape(summary["experiment"])}</h1>
<p class="note">{html.escape(summary.get("provenance", ""))}. {len(sites)} sites. Seed {summary["seed"]}.
{_task_line(summary)}</p>
<h2>Test metrics per site and setting</h2>
{_uncertainty_note(summary)}
{tables}
{_comparison_table(summary)}
{forest_part}
<h2 id="settings">Each setting at each site</h2>
<div class="figs">{"".join(dots)}</div>
<h2 id="rounds">Per-round metrics (federated)</h2>
<div class="figs">{"".join(curves)}</div>
{_traffic_table(summary)}
{_protection_table(summary)}
{_privacy_table(summary)}
{_reference_table(summary)}
{clinical_section(summary)}
<h2>Configuration</h2><p class="note"><code>{cfg}</code></p>
</body></html>
"""
