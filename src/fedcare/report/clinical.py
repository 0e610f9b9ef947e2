"""Report section for clinicians: per-site reliability curves and subgroup tables.

Reads the ``calibration`` and ``subgroups`` entries that
:func:`fedcare.experiment.evaluate_setting` writes for each setting and site.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

from fedcare.report.plots import _svg, plt

__all__ = ["clinical_section", "reliability_svg", "subgroup_table"]

#: Subgroup columns shown, in order, when present.
_COLUMNS = ("n", "positives", "events", "accuracy", "auc", "sensitivity", "specificity", "brier", "c_index")


def reliability_svg(setting: str, calibration: Mapping[str, Mapping[str, Any]], names: Mapping[str, str]) -> str:
    """Small multiples: one reliability panel per site (marker area ~ rows in the bin), diagonal = perfect.

    One panel per site instead of one line per site in a shared chart: readable at 4
    sites and at 50, and no legend to cover the curves (each panel's title names it).
    """
    sites = list(calibration)
    cols = min(len(sites), 4 if len(sites) <= 8 else 6)
    rows = math.ceil(len(sites) / max(cols, 1))
    fig, axes = plt.subplots(
        rows, cols, figsize=(1.75 * cols, 1.8 * rows + 0.3), squeeze=False, sharex=True, sharey=True
    )
    for k, ax in enumerate(axes.flat):
        if k >= len(sites):
            ax.axis("off")
            continue
        site = sites[k]
        cal, curve = calibration[site], calibration[site]["curve"]
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
        ax.plot(curve["mean_predicted"], curve["observed"], color="#1f77b4", linewidth=1)
        ax.scatter(curve["mean_predicted"], curve["observed"], s=[4 + 2 * c for c in curve["count"]], alpha=0.7)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{_short(names.get(site, site))}\nECE {cal['ece']:.2f}, n {cal['n']}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
    fig.supxlabel("mean predicted probability (bin)", fontsize=8)
    fig.supylabel("observed frequency", fontsize=8)
    fig.suptitle(f"{setting}: reliability per site", fontsize=9)
    fig.tight_layout()
    return _svg(fig)


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "—" if value != value else (f"{value:.0f}" if value.is_integer() and value > 1 else f"{value:.3f}")
    return html.escape(str(value))


def subgroup_table(setting: str, subgroups: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """Rows: site × attribute × level; columns: the metrics present. Small groups are marked."""
    cols = [c for c in _COLUMNS if any(c in m for s in subgroups.values() for g in s.values() for m in g.values())]
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = []
    for site, attributes in subgroups.items():
        for attribute, levels in attributes.items():
            for level, metrics in levels.items():
                small = " *" if metrics.get("n", 0) < 10 else ""
                cells = "".join(f"<td>{_cell(metrics.get(c, float('nan')))}</td>" for c in cols)
                rows.append(
                    f"<tr><td>{html.escape(names.get(site, site))}</td><td>{html.escape(attribute)}</td>"
                    f"<td>{html.escape(level)}{small}</td>{cells}</tr>"
                )
    return (
        f"<h3>{html.escape(setting)}: subgroups</h3><table><tr><th>site</th><th>attribute</th><th>group</th>"
        f"{head}</tr>{''.join(rows)}</table>"
    )


def _calibration_table(summary: Mapping[str, Any], calibrated: Mapping[str, Mapping[str, Any]]) -> str:
    """Sites as rows; per setting: observed rate, mean predicted, Brier, ECE."""
    names = summary.get("sites", {})
    sites = [s for s in names if any(s in c for c in calibrated.values())]
    head = "".join(f"<th colspan='4'>{html.escape(setting)}</th>" for setting in calibrated)
    sub = "<th>observed</th><th>predicted</th><th>Brier</th><th>ECE</th>" * len(calibrated)
    rows = []
    for site in sites:
        cells = []
        for cal in calibrated.values():
            c = cal.get(site)
            if c is None:
                cells.append("<td>—</td>" * 4)
            else:
                cells.append(
                    f"<td>{c['observed_rate']:.3f}</td><td>{c['mean_predicted']:.3f}</td>"
                    f"<td>{c['brier']:.3f}</td><td>{c['ece']:.3f}</td>"
                )
        n = next((c[site]["n"] for c in calibrated.values() if site in c), "")
        rows.append(f"<tr><td>{html.escape(names.get(site, site))}</td><td>{n}</td>{''.join(cells)}</tr>")
    return (
        f"<div class='scroll'><table><tr><th rowspan='2'>site</th><th rowspan='2'>n</th>{head}</tr><tr>{sub}</tr>"
        + "".join(rows)
        + "</table></div>"
    )


def clinical_section(summary: Mapping[str, Any]) -> str:
    """The HTML section: calibration table + reliability small multiples, then subgroup tables."""
    names = summary.get("sites", {})
    parts: list[str] = []
    calibrated = {s: r["calibration"] for s, r in summary["settings"].items() if r.get("calibration")}
    if calibrated:
        # many sites: panels for the last setting only (the federated model), the table holds all
        shown = calibrated if len(names) <= 12 else dict([list(calibrated.items())[-1]])
        figs = [reliability_svg(setting, cal, names) for setting, cal in shown.items()]
        parts.append(
            "<h2>Calibration per site (the model each site uses, on its own test set)</h2>"
            "<p class='note'>Brier score and expected calibration error (10 equal-width bins); "
            "a predicted risk of 0.8 should come true about 80 % of the time at that site.</p>"
            + _calibration_table(summary, calibrated)
            + f"<div class='figs'>{''.join(figs)}</div>"
        )
    tables = [subgroup_table(s, r["subgroups"], names) for s, r in summary["settings"].items() if r.get("subgroups")]
    if tables:
        body = "".join(tables)
        if len(names) > 12:
            body = f"<details><summary>show the subgroup tables ({len(names)} sites)</summary>{body}</details>"
        parts.append(
            "<h2>Subgroups per site</h2><p class='note'>Each site's model on its own test rows, split by the "
            "attributes the data set records. * fewer than 10 rows: read with care.</p>" + body
        )
    return "".join(parts)
