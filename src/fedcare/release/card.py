"""The model card of a release: Mitchell et al. (FAT* 2019) sections, with the TRIPOD+AI items that apply.

Model Cards for Model Reporting (Mitchell et al. 2019): model details, intended use,
factors, metrics, evaluation data, training data, quantitative analyses, ethical
considerations, caveats and recommendations. TRIPOD+AI (Collins et al., BMJ 2024) adds,
for clinical prediction models: the outcome and predictors, sample sizes per setting,
performance with confidence intervals (discrimination and calibration) overall and in
key subgroups, and how the model was built (here: federated, with its privacy). Every
figure is read from the run store's summary, none is recomputed.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["model_card", "render_card"]

#: What the coordinator saw of each update, by the round's protection (release/sharing.py).
_SEEN = {
    "secagg+": "sum only (SecAgg+)",
    "ckks-threshold": "ciphertexts; the sum decrypted by all key holders (threshold CKKS)",
    "p2p-secagg+": "nothing readable: peer-to-peer, SecAgg+ masks, coordinator relay only (the sites aggregated)",
}


def _figures(setting: Mapping[str, Any]) -> dict[str, Any]:
    unc = setting.get("uncertainty", {})
    per_site = {}
    for site, metrics in setting["per_site"].items():
        ivs = unc.get("per_site", {}).get(site, {})
        per_site[site] = {
            m: {"value": v, **({"lo": ivs[m]["lo"], "hi": ivs[m]["hi"]} if m in ivs else {})}
            for m, v in metrics.items()
            if m != "n_test"
        }
        per_site[site]["n_test"] = metrics.get("n_test")
    pooled = {
        m: {
            "value": v,
            **(
                {"lo": unc["pooled_test"][m]["lo"], "hi": unc["pooled_test"][m]["hi"]}
                if m in unc.get("pooled_test", {})
                else {}
            ),
        }
        for m, v in setting["pooled_test"].items()
    }
    return {
        "per_site": per_site,
        "pooled_test": pooled,
        "meta_analysis": unc.get("meta", {}),
        "level": unc.get("level"),
    }


def model_card(
    summary: Mapping[str, Any],
    setting: str,
    meta: Mapping[str, Any],
    *,
    n_train: Mapping[str, int],
    audit_head: str | None = None,
) -> dict[str, Any]:
    """The model card (JSON) of ``setting`` of the summary."""
    res = summary["settings"][setting]
    pre = meta.get("preprocessing", {})
    privacy = summary.get("privacy")
    config = summary.get("config", {})
    sharing = meta.get("sharing") or {}
    study = meta.get("study") or {}
    secagg = bool(config.get("secure_aggregation") or config.get("secagg")) or any(
        r.get("secure_aggregation") for r in sharing.get("rounds", [])
    )
    sites = [
        {
            "id": s,
            "name": name,
            "n_train": n_train.get(s),
            "n_test": int(res["per_site"].get(s, {}).get("n_test") or 0) or None,
        }
        for s, name in summary["sites"].items()
    ]
    calibration = {
        s: {k: c[k] for k in ("n", "observed_rate", "mean_predicted", "brier", "ece", "mce") if k in c}
        for s, c in res.get("calibration", {}).items()
    }
    limitations = [
        "Validated only on the held-out test rows of the training sites listed here; performance at a new "
        "site must be checked there first (fedcare validate).",
        "Per-site intervals at sites with few test rows are wide: read the forest plot, not the point estimate.",
    ]
    if not pre:
        limitations.append("No preprocessing was recorded with this run: inputs must already be model-ready.")
    if not calibration:
        limitations.append("Calibration was not assessed for this model.")
    if summary.get("dataset") == "heart-disease":
        limitations.append(
            "UCI heart disease (1988): small historic cohorts, 10 predictors; a research demonstration, "
            "not a clinical tool."
        )
    return {
        "schema": "fedcare-model-card/1",
        "model_details": {
            "name": f"{summary['dataset']} {meta['task']['name']} ({setting})",
            "version": f"{meta['run']}@round{meta['round']}",
            "fedcare_version": meta["fedcare_version"],
            "type": meta["task"]["name"],
            "parameters": meta["task"]["params"],
            "training": f"federated ({config.get('strategy', setting)}, {meta['round']} rounds) across "
            f"{len(sites)} sites; patient records never left a site",
        },
        "intended_use": {
            "primary_use": f"estimate the risk of {pre.get('target', 'the outcome')} from the predictors below, "
            "to support (not replace) a clinician's judgement",
            "primary_users": "clinicians and researchers at the participating sites",
            "out_of_scope": [
                "patients unlike the training cohorts (see factors and limitations)",
                "automated decisions without clinical review",
            ],
        },
        "factors": {
            "sites": [s["name"] for s in sites],
            "subgroups": sorted({a for groups in res.get("subgroups", {}).values() for a in groups}),
        },
        "data": {
            "provenance": summary.get("provenance", ""),
            "outcome": pre.get("target", ""),
            "predictors": pre.get("features", []),
            "categorical": pre.get("categorical", {}),
            "sites": sites,
        },
        "performance": _figures(res),
        "calibration": calibration,
        "subgroups": res.get("subgroups", {}),
        "privacy": {
            "differential_privacy": (privacy or {}).get("settings", {"level": "none"}),
            "per_site": {
                s: {"epsilon": row.get("epsilon_run"), "delta": row.get("delta")}
                for s, row in (privacy or {}).get("sites", {}).items()
            },
            "secure_aggregation": secagg,
        },
        "sharing": sharing,
        "recalibration": meta.get("calibration"),
        "lineage": {
            "experiment": summary.get("experiment"),
            "run": meta["run"],
            "study": study.get("name"),
            "study_hash": study.get("hash") or config.get("study_hash"),
            "study_file": study.get("file"),
            "task_hash": meta["task"]["hash"],
            "rounds": meta["round"],
            "checkpoint_sha256": meta["checkpoint_sha256"],
            "audit_log_head": audit_head,
        },
        "limitations": limitations,
        "ethical_considerations": [
            "Differences between sites (I² in the performance section) may reflect different patient populations; "
            "check subgroup performance before use in a population the card does not describe."
        ],
    }


def _row(cells: list[Any]) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>"


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        value = v.get("value")
        text = "—" if value is None else f"{value:.3f}"
        if v.get("lo") is not None and v.get("hi") is not None:
            text += f" ({v['lo']:.2f}–{v['hi']:.2f})"
        return text
    if isinstance(v, float):
        return f"{v:.3f}"
    return "—" if v is None else str(v)


def _sharing_html(sharing: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """Parameters that travelled / stayed / were frozen, and each round's protection."""
    if not sharing:
        return "<p>Not recorded for this run.</p>"
    esc = html.escape
    params = sharing.get("parameters", {})
    peer_to_peer = any(r.get("protection") == "p2p-secagg+" for r in sharing.get("rounds", []))
    what = {
        "shared": "masked, relayed to the other sites each round (peer-to-peer)"
        if peer_to_peer
        else "sent to the coordinator each round",
        "local": "stayed at every site (personalised / local)",
        "frozen": "never trained nor sent (rebuilt at every site)",
    }
    prow = "".join(
        _row([k, what[k], params[k]["values"], ", ".join(params[k]["entries"]) or "—"])
        for k in ("shared", "local", "frozen")
        if k in params
    )
    summary = sharing.get("summary", {})
    rows = []
    for r in sharing.get("rounds", []):
        dp = r.get("differential_privacy") or {}
        eps = [v["epsilon_round"] for v in dp.values()]
        dp_text = (
            f"{next(iter(dp.values()))['mechanism']}, σ {next(iter(dp.values()))['noise_multiplier']:.3f}, "
            f"ε round ≤ {max(eps):.3f}"
            if dp
            else "none"
        )
        rows.append(
            _row(
                [
                    r["round"],
                    ", ".join(names.get(s, s) for s in r["sites"]) or "—",
                    _SEEN.get(str(r.get("protection")), "sum only (SecAgg+)")
                    if r["secure_aggregation"]
                    else "each update",
                    dp_text,
                ]
            )
        )
    return (
        f"<p>Personalisation: {esc(str(sharing.get('personalization')))} · compression: "
        f"{esc(str(sharing.get('compression')))} · secure aggregation: "
        f"{esc(str(summary.get('secure_aggregation')))} · differential privacy: "
        f"{esc(str(summary.get('differential_privacy')))}."
        + (
            f" Sent in clear (selective encryption): {esc(', '.join(sharing['sent_in_clear']))}."
            if sharing.get("sent_in_clear")
            else ""
        )
        + "</p>"
        "<table><tr><th>entries</th><th>what happened</th><th>values</th><th>names</th></tr>" + prow + "</table>"
        "<table><tr><th>round</th><th>sites aggregated</th><th>coordinator saw</th><th>DP</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def render_card(card: Mapping[str, Any]) -> str:
    """The model card as one self-contained HTML page."""
    d, perf = card["model_details"], card["performance"]
    metrics = [m for m in ("auc", "c_index", "accuracy", "loss") if any(m in v for v in perf["per_site"].values())]
    names = {s["id"]: s["name"] for s in card["data"]["sites"]}
    sizes = {s["id"]: s for s in card["data"]["sites"]}
    perf_rows = [
        _row(
            [
                names.get(s, s),
                sizes.get(s, {}).get("n_train") or "—",
                v.get("n_test") or "—",
                *(_fmt(v.get(m)) for m in metrics),
            ]
        )
        for s, v in perf["per_site"].items()
    ]
    perf_rows.append(_row(["pooled test set", "", "", *(_fmt(perf["pooled_test"].get(m)) for m in metrics)]))
    meta = perf.get("meta_analysis", {})
    perf_rows.append(
        _row(
            ["pooled (random effects)", "", ""]
            + [
                (
                    _fmt({"value": meta[m]["random"], "lo": meta[m]["lo"], "hi": meta[m]["hi"]})
                    + f", I² {100 * meta[m]['i2']:.0f} %"
                )
                if m in meta and meta[m].get("k")
                else "—"
                for m in metrics
            ]
        )
    )
    cal_rows = [
        _row([names.get(s, s), c.get("n"), _fmt(c.get("brier")), _fmt(c.get("ece"))])
        for s, c in card["calibration"].items()
    ]
    priv = card["privacy"]
    priv_rows = [_row([names.get(s, s), _fmt(p["epsilon"]), p["delta"]]) for s, p in priv["per_site"].items()]
    lin = card["lineage"]
    sharing_html = _sharing_html(card.get("sharing") or {}, names)
    recal = card.get("recalibration")
    recal_html = (
        f"<p>Recalibrated ({html.escape(str(recal.get('method')))}, fitted federatedly on the sites' training rows): "
        f"p = σ({recal['a']:.4f} · logit(risk) + {recal['b']:.4f}); "
        f"{html.escape(str(recal.get('n')))} rows, {html.escape(str(recal.get('iterations')))} Newton steps.</p>"
        if recal and "a" in recal
        else f"<p>Platt scaling was asked for but not fitted: {html.escape(str(recal['error']))}.</p>"
        if recal
        else "<p>No recalibration was fitted: the risk is the model's own.</p>"
    )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;font-size:.85rem;margin:.4rem 0}"
        "td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:right}"
        "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}"
        "h2{font-size:1.1rem;border-bottom:1px solid #ddd;margin-top:1.6rem}.k{color:#555}code{word-break:break-all}"
    )
    li = "".join
    esc = html.escape
    use = card["intended_use"]
    head = "".join(f"<th>{m}</th>" for m in metrics)
    perf_table = f"<table><tr><th>site</th><th>n train</th><th>n test</th>{head}</tr>{li(perf_rows)}</table>"
    cal_table = (
        "<table><tr><th>site</th><th>n</th><th>Brier</th><th>ECE</th></tr>" + li(cal_rows) + "</table>"
        if cal_rows
        else "<p>Not assessed.</p>"
    )
    priv_table = (
        "<table><tr><th>site</th><th>ε spent</th><th>δ</th></tr>" + li(priv_rows) + "</table>" if priv_rows else ""
    )
    subgroups = esc(", ".join(card["factors"]["subgroups"]) or "none recorded")
    dp = esc(json.dumps(priv["differential_privacy"]))
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Model card: {esc(d["name"])}</title><style>{style}</style></head><body>
<h1>Model card: {esc(d["name"])}</h1>
<p class="k">Version {esc(d["version"])} · fedcare {esc(d["fedcare_version"])} · {esc(d["training"])}</p>
<h2>Intended use</h2><p>{esc(use["primary_use"])}. Users: {esc(use["primary_users"])}.</p>
<p>Out of scope:</p><ul>{li(f"<li>{esc(x)}</li>" for x in use["out_of_scope"])}</ul>
<h2>Data: outcome and predictors</h2><p>Outcome: {esc(card["data"]["outcome"] or "—")}.
Predictors: {esc(", ".join(card["data"]["predictors"]) or "—")}.</p>
<p class="k">{esc(card["data"]["provenance"])}</p>
<h2>Performance per site and pooled (95 % CI)</h2>{perf_table}
<h2>Calibration</h2>{cal_table}{recal_html}
<h2>Subgroups</h2><p>{subgroups} (tables in model_card.json).</p>
<h2>Privacy</h2><p>Differential privacy: <code>{dp}</code>.
Secure aggregation: {"yes" if priv["secure_aggregation"] else "no"}.</p>{priv_table}
<h2>What was shared</h2>{sharing_html}
<h2>Lineage</h2><table>{li(_row([k, v if v is not None else "—"]) for k, v in lin.items())}</table>
<h2>Limitations</h2><ul>{li(f"<li>{esc(x)}</li>" for x in card["limitations"])}</ul>
<h2>Ethical considerations</h2><ul>{li(f"<li>{esc(x)}</li>" for x in card["ethical_considerations"])}</ul>
</body></html>
"""
