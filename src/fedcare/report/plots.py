"""Matplotlib figures rendered to inline SVG strings (the report opens offline)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["round_curves_svg", "setting_bars_svg"]


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(
        buf, format="svg", bbox_inches="tight", metadata={"Creator": None, "Date": None, "Format": None, "Type": None}
    )
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


def round_curves_svg(history: Sequence[Mapping[str, Any]], metric: str, title: str) -> str:
    """One line per site (plus the weighted mean) of ``metric`` over rounds."""
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    rounds = [h["round"] for h in history]
    sites = sorted({s for h in history for s in h["per_site"]})
    for site in sites:
        ys = [h["per_site"].get(site, {}).get(metric, float("nan")) for h in history]
        ax.plot(rounds, ys, marker=".", label=site)
    mean = [h["eval"].get(metric, float("nan")) for h in history]
    ax.plot(rounds, mean, color="black", linewidth=2.2, label="weighted mean")
    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _svg(fig)


def setting_bars_svg(settings: Mapping[str, Mapping[str, Any]], sites: Sequence[str], metric: str) -> str:
    """Grouped bars: one group per site (plus pooled test), one bar per setting."""
    names = list(settings)
    groups = [*sites, "pooled test"]
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        res = settings[name]
        values = [res["per_site"].get(s, {}).get(metric, float("nan")) for s in sites]
        values.append(res["pooled_test"].get(metric, float("nan")))
        xs = [g + (i - (len(names) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, values, width=width, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=15, fontsize=8)
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(names), frameon=False)
    ax.set_title(f"test {metric} per site and setting")
    return _svg(fig)
