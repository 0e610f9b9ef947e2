"""Report section for clinicians: per-site reliability curves and subgroup tables.

Reads the ``calibration`` and ``subgroups`` entries that
:func:`fedcare.experiment.evaluate_setting` writes for each setting and site.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from fedcare.report.plots import _svg, plt

__all__ = ["clinical_section", "reliability_svg", "subgroup_table"]

#: Subgroup columns shown, in order, when present.
_COLUMNS = ("n", "positives", "events", "accuracy", "auc", "sensitivity", "specificity", "brier", "c_index")


def reliability_svg(setting: str, calibration: Mapping[str, Mapping[str, Any]], names: Mapping[str, str]) -> str:
    """One reliability curve per site (marker size ~ rows in the bin) against the diagonal."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for site, cal in calibration.items():
        curve = cal["curve"]
        sizes = [8 + 4 * c for c in curve["count"]]
        label = f"{names.get(site, site)} (ECE {cal['ece']:.2f})"
        (line,) = ax.plot(curve["mean_predicted"], curve["observed"], marker="", linewidth=1.2, label=label)
        ax.scatter(curve["mean_predicted"], curve["observed"], s=sizes, color=line.get_color(), alpha=0.7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"{setting}: reliability per site")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="upper left")
    return _svg(fig)


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


def clinical_section(summary: Mapping[str, Any]) -> str:
    """The HTML section: calibration table + reliability plots, then subgroup tables."""
    names = summary.get("sites", {})
    parts: list[str] = []
    figs: list[str] = []
    cal_rows: list[str] = []
    for setting, res in summary["settings"].items():
        cal = res.get("calibration")
        if cal:
            figs.append(reliability_svg(setting, cal, names))
            for site, c in cal.items():
                cal_rows.append(
                    f"<tr><td>{html.escape(setting)}</td><td>{html.escape(names.get(site, site))}</td>"
                    f"<td>{c['n']}</td><td>{c['observed_rate']:.3f}</td><td>{c['mean_predicted']:.3f}</td>"
                    f"<td>{c['brier']:.3f}</td><td>{c['ece']:.3f}</td><td>{c['mce']:.3f}</td></tr>"
                )
    if cal_rows:
        parts.append(
            "<h2>Calibration per site (the model each site uses, on its own test set)</h2>"
            "<p class='note'>Brier score and expected calibration error (10 equal-width bins); "
            "a predicted risk of 0.8 should come true about 80 % of the time at that site.</p>"
            "<table><tr><th>setting</th><th>site</th><th>n</th><th>observed rate</th><th>mean predicted</th>"
            "<th>Brier</th><th>ECE</th><th>max gap</th></tr>" + "".join(cal_rows) + "</table>"
            f"<div class='figs'>{''.join(figs)}</div>"
        )
    tables = [subgroup_table(s, r["subgroups"], names) for s, r in summary["settings"].items() if r.get("subgroups")]
    if tables:
        parts.append(
            "<h2>Subgroups per site</h2><p class='note'>Each site's model on its own test rows, split by the "
            "attributes the data set records. * fewer than 10 rows: read with care.</p>" + "".join(tables)
        )
    return "".join(parts)
