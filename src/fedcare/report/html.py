"""report.html: a self-contained page (inline SVG, inline CSS, no CDN) for one experiment."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from fedcare.report.clinical import clinical_section
from fedcare.report.plots import round_curves_svg, setting_bars_svg
from fedcare.report.reference import FLAMBY, METRIC

__all__ = ["render_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1000px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:.85rem}
.figs{display:flex;flex-wrap:wrap;gap:1rem}.figs svg{max-width:100%;height:auto}
"""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "—" if value != value else f"{value:.3f}"
    return html.escape(str(value))


def _settings_table(summary: Mapping[str, Any], metric: str) -> str:
    sites = list(summary["sites"])
    head = "".join(f"<th>{html.escape(summary['sites'][s])}</th>" for s in sites)
    rows = []
    for name, res in summary["settings"].items():
        cells = "".join(f"<td>{_fmt(res['per_site'].get(s, {}).get(metric, float('nan')))}</td>" for s in sites)
        rows.append(
            f"<tr><td>{html.escape(name)}</td>{cells}"
            f"<td>{_fmt(res['site_mean'].get(metric, float('nan')))}</td>"
            f"<td>{_fmt(res['pooled_test'].get(metric, float('nan')))}</td></tr>"
        )
    return (
        f"<table><tr><th>setting</th>{head}<th>mean over sites</th><th>pooled test</th></tr>"
        + "".join(rows)
        + "</table>"
    )


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


def render_report(summary: Mapping[str, Any]) -> str:
    """Return the full HTML page for an experiment summary (see summary.json)."""
    sites = list(summary["sites"])
    metrics = [
        m for m in ("accuracy", "auc", "c_index") if any(m in r["pooled_test"] for r in summary["settings"].values())
    ]
    figs = [setting_bars_svg(summary["settings"], sites, m) for m in metrics]
    curves = []
    for name, res in summary["settings"].items():
        history = res.get("history")
        if history:
            for m in [*metrics, "loss"]:
                curves.append(round_curves_svg(history, m, f"{name}: test {m} of the global model per round"))
    tables = "".join(f"<h3>{html.escape(m)}</h3>{_settings_table(summary, m)}" for m in metrics)
    cfg = html.escape(str(summary.get("config", {})))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedcare report: {html.escape(summary["dataset"])}</title>
<style>{_CSS}</style></head><body>
<h1>fedcare: {html.escape(summary["dataset"])}, experiment {html.escape(summary["experiment"])}</h1>
<p class="note">{html.escape(summary.get("provenance", ""))}. Seed {summary["seed"]}.
Task {html.escape(summary["task"]["name"])} (hash {html.escape(summary["task"]["hash"][:16])}…).</p>
<h2>Test metrics per site and setting</h2>
<p class="note">Local: each site's own model on its own test set (pooled test: mean over the local models).
Pooled: one model on all training rows in one place. Mean over sites is unweighted (FLamby's figure value).</p>
{tables}
<div class="figs">{"".join(figs)}</div>
<h2>Per-round metrics (federated)</h2>
<div class="figs">{"".join(curves)}</div>
{_traffic_table(summary)}
{_privacy_table(summary)}
{_reference_table(summary)}
{clinical_section(summary)}
<h2>Configuration</h2><p class="note"><code>{cfg}</code></p>
</body></html>
"""
