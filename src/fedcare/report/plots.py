"""Matplotlib figures rendered to inline SVG strings (the report opens offline).

Every figure is laid out for 4 sites as well as for 50: sites are rows (their names on
the y axis, never rotated ticks), a figure's height grows with the number of sites,
many lines become a band, and legends sit outside the axes so they never cover data.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["forest_svg", "round_curves_svg", "setting_dots_svg"]

#: Up to this many sites, per-round plots draw one line per site; beyond, a band.
MAX_LINES = 8
#: Colours of the settings (local, pooled, federated...), in order.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(
        buf, format="svg", bbox_inches="tight", metadata={"Creator": None, "Date": None, "Format": None, "Type": None}
    )
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _rows_height(n_rows: int, *, per_row: float = 0.24, extra: float = 1.3) -> float:
    return max(2.4, extra + per_row * n_rows)


def _short(name: str, width: int = 32) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def round_curves_svg(history: Sequence[Mapping[str, Any]], metric: str, title: str) -> str:
    """``metric`` of the global model over rounds: a line per site, or (many sites) a band.

    With more than :data:`MAX_LINES` sites the sites' spread is drawn as a min-max band
    and an interquartile band around their median, so the figure stays readable.
    """
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    rounds = [h["round"] for h in history]
    sites = sorted({s for h in history for s in h["per_site"]})
    values = np.array(
        [[float(h["per_site"].get(s, {}).get(metric, math.nan)) for s in sites] for h in history], dtype=np.float64
    ).reshape(len(history), len(sites))
    if len(sites) <= MAX_LINES:
        for j, site in enumerate(sites):
            ax.plot(rounds, values[:, j], marker=".", linewidth=1, label=_short(site))
    elif np.isfinite(values).any():
        with np.errstate(all="ignore"):
            lo, q1, med, q3, hi = (np.nanpercentile(values, q, axis=1) for q in (0, 25, 50, 75, 100))
        ax.fill_between(rounds, lo, hi, color="#1f77b4", alpha=0.15, label=f"{len(sites)} sites: min–max")
        ax.fill_between(rounds, q1, q3, color="#1f77b4", alpha=0.35, label="interquartile range")
        ax.plot(rounds, med, color="#1f77b4", linewidth=1.2, label="median site")
    mean = [h["eval"].get(metric, math.nan) for h in history]
    ax.plot(rounds, mean, color="black", linewidth=2.2, label="weighted mean")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _svg(fig)


def setting_dots_svg(
    settings: Mapping[str, Mapping[str, Any]], sites: Sequence[str], names: Mapping[str, str], metric: str
) -> str:
    """Dot plot, sites as rows: each setting's test ``metric`` at each site, with its 95 % CI.

    The last row is the pooled test set. Settings are offset vertically so that their
    intervals never overlap; the legend sits above the axes.
    """
    labels = [_short(names.get(s, s)) for s in sites] + ["pooled test"]
    keys = [*sites, None]
    n_set = max(len(settings), 1)
    fig, ax = plt.subplots(figsize=(6.8, _rows_height(len(labels), per_row=0.12 + 0.07 * n_set)))
    offsets = np.linspace(-0.25, 0.25, n_set) if n_set > 1 else np.zeros(1)
    for i, (name, res) in enumerate(settings.items()):
        unc = res.get("uncertainty", {})
        for row, key in enumerate(keys):
            value = (res["per_site"].get(key, {}) if key else res["pooled_test"]).get(metric)
            if value is None or not math.isfinite(value):
                continue
            iv = (unc.get("per_site", {}).get(key, {}) if key else unc.get("pooled_test", {})).get(metric, {})
            y = row + offsets[i]
            lo, hi = iv.get("lo"), iv.get("hi")
            if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
                ax.plot([lo, hi], [y, y], color=PALETTE[i % len(PALETTE)], linewidth=1.2, alpha=0.8)
            ax.plot(
                [value], [y], "o", color=PALETTE[i % len(PALETTE)], markersize=4.5, label=name if row == 0 else None
            )
    ax.set_yticks(range(len(labels)), labels, fontsize=8 if len(labels) <= 20 else 6.5)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.axhline(len(labels) - 1.5, color="grey", linewidth=0.6)
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel(f"test {metric} (95 % CI)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=min(n_set, 4), frameon=False)
    return _svg(fig)


def forest_svg(
    settings: Mapping[str, Mapping[str, Any]], sites: Sequence[str], names: Mapping[str, str], metric: str
) -> str:
    """Forest plots as small multiples: one panel per setting, sites as shared rows.

    As in a clinical meta-analysis: squares sized by the site's test rows, whiskers for
    the 95 % interval, a diamond for the random-effects pooled estimate (DerSimonian-Laird)
    with its interval, the pooled test set's value as a hollow circle; each panel's
    title gives I². Site names are written once, on the left.
    """
    shown = {k: r for k, r in settings.items() if r.get("uncertainty")}
    rows = [s for s in sites if any(metric in r["uncertainty"].get("per_site", {}).get(s, {}) for r in shown.values())]
    n_panels = max(len(shown), 1)
    height = _rows_height(len(rows) + 2, per_row=0.2 if len(rows) > 20 else 0.3)
    fig, axes = plt.subplots(1, n_panels, figsize=(1.6 + 2.5 * n_panels, height), sharey=True, squeeze=False)
    y_pool, y_test = len(rows) + 0.6, len(rows) + 1.6
    for ax, (setting, res) in zip(axes[0], shown.items(), strict=False):
        unc = res["uncertainty"]
        per_site = unc.get("per_site", {})
        ns = [per_site.get(s, {}).get(metric, {}).get("n") or 1 for s in rows]
        biggest = max(ns) if ns else 1
        for y, site in enumerate(rows):
            iv = per_site.get(site, {}).get(metric)
            if not iv or iv.get("value") is None:
                continue
            if iv.get("lo") is not None and iv.get("hi") is not None:
                ax.plot([iv["lo"], iv["hi"]], [y, y], color="#333", linewidth=0.9)
            size = 2.5 + 6 * math.sqrt((iv.get("n") or 1) / biggest)
            ax.plot([iv["value"]], [y], "s", color="#1f77b4", markersize=size, clip_on=False)
        meta = unc.get("meta", {}).get(metric, {})
        random, lo, hi, i2 = meta.get("random"), meta.get("lo"), meta.get("hi"), meta.get("i2")
        title = setting
        if random is not None and lo is not None and hi is not None and math.isfinite(random):
            ax.fill([lo, random, hi, random], [y_pool, y_pool - 0.35, y_pool, y_pool + 0.35], color="#d62728")
            ax.axvline(random, color="#d62728", linestyle=":", linewidth=1)
            if i2 is not None:
                title += f"  ·  I² = {100 * i2:.0f} %"
        test = unc.get("pooled_test", {}).get(metric)
        if test and test.get("value") is not None:
            ax.plot([test["lo"], test["hi"]], [y_test, y_test], color="#555", linewidth=1)
            ax.plot([test["value"]], [y_test], "o", mfc="white", mec="#555", markersize=5.5, clip_on=False)
        ax.axhline(len(rows) - 0.2, color="grey", linewidth=0.6)
        ax.set_xlim(-0.02, 1.02)  # a site at 0 or 1 keeps its whole marker
        if metric in ("auc", "c_index"):
            ax.axvline(0.5, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel(f"{metric} (95 % CI)", fontsize=8)
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    labels = [_short(names.get(s, s)) for s in rows] + ["pooled (random effects)", "pooled test set (all rows)"]
    axes[0][0].set_yticks([*range(len(rows)), y_pool, y_test], labels, fontsize=8 if len(rows) <= 20 else 6.5)
    axes[0][0].set_ylim(y_test + 0.7, -0.7)
    fig.tight_layout()
    return _svg(fig)
