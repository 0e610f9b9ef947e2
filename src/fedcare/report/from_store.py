"""Rebuild an experiment's summary (README's output contract) from the run store alone.

Everything comes from what the store holds: the run rows (what ran, with which task,
seed and config), the completed rounds with each site's evaluation, refusals and
failures, each site's final test metrics, the results a run recorded (``context``:
data set, site names, settings; ``evaluation``: pooled-test metrics, calibration,
subgroups) and the privacy ledger. Nothing is recomputed from data, so the report of
a deployed run (``fedcare server``) is built the same way as a simulated one's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedcare.errors import StoreError
from fedcare.evaluation.uncertainty import LEVEL, accuracy_interval, meta_of
from fedcare.report.output import write_outputs
from fedcare.store.models import RunRow
from fedcare.store.sql import SqlStore

__all__ = ["resolve_runs", "summary_from_store", "write_report_from_store"]

#: Metrics that are means over rows: their example-weighted mean over sites is the pooled value.
_POOLABLE = ("accuracy", "loss")


def resolve_runs(store: SqlStore, ref: str) -> tuple[str, list[RunRow]]:
    """``ref`` is a run id, an experiment id (all its runs) or ``latest``; return (name, runs).

    Raises
    ------
    StoreError
        Nothing in the store matches ``ref`` (the message lists the latest runs).
    """
    runs = store.list_runs()
    if ref == "latest" and runs:
        ref = runs[-1].experiment or runs[-1].id
    by_id = [r for r in runs if r.id == ref]
    if by_id:
        return ref, by_id
    of_experiment = [r for r in runs if r.experiment == ref]
    if of_experiment:
        return ref, of_experiment
    recent = ", ".join(dict.fromkeys(r.experiment or r.id for r in reversed(runs[-20:])))
    raise StoreError(
        f"no run or experiment {ref!r} in the store" + (f"; recent: {recent}" if recent else "; it is empty")
    )


def _mean(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Unweighted mean over sites (as the experiment computes ``site_mean``)."""
    keys = sorted({k for r in rows for k in r if k != "n_test"})
    return {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}


def _setting(store: SqlStore, run: RunRow, sites: Sequence[str], results: Mapping[str, Any]) -> dict[str, Any]:
    """One setting of the summary: per-site, mean over sites, pooled test, history."""
    metric_rows = sorted(store.site_metrics(run.id), key=lambda r: r.id)  # insertion order = the run's own
    test: dict[str, dict[str, float]] = defaultdict(dict)
    evals: dict[int, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in metric_rows:
        if row.phase == "test":
            test[row.site][row.name] = row.value
        elif row.phase == "eval":
            evals[row.round_no][row.site][row.name] = row.value
    failures: dict[int, dict[str, str]] = defaultdict(dict)
    for event in store.site_events(run.id):
        failures[event.round_no][event.site] = event.message
    rounds = store.rounds(run.id)
    history = [
        {
            "round": r.round_no,
            "fit": dict(r.fit_metrics),
            "eval": dict(r.eval_metrics),
            "per_site": {s: dict(m) for s, m in evals[r.round_no].items()},
            "failures": dict(failures[r.round_no]),
            "duration_s": r.duration_s,
        }
        for r in rounds
    ]
    order = [s for s in sites if s in test] + sorted(set(test) - set(sites))
    per_site = {s: dict(test[s]) for s in order}
    evaluation = dict(results.get("evaluation", {}))
    if not per_site and rounds:  # a deployed run: the final model is the last round's, evaluated at each site
        last = evals[rounds[-1].round_no]
        order = [s for s in sites if s in last] + sorted(set(last) - set(sites))
        for s in order:
            m = dict(last[s])
            n = m.pop("num_examples", None)
            per_site[s] = {**m, **({"n_test": n} if n is not None else {})}
        pooled = rounds[-1].eval_metrics
        evaluation.setdefault("pooled_test", {k: pooled[k] for k in _POOLABLE if k in pooled})
        evaluation.setdefault("uncertainty", _accuracy_uncertainty(per_site, evaluation["pooled_test"]))
    out: dict[str, Any] = {
        "per_site": per_site,
        "site_mean": _mean(list(per_site.values())),
        "pooled_test": dict(evaluation.pop("pooled_test", {})),
        **evaluation,
    }
    if rounds:
        out["history"] = history
    return out


def _accuracy_uncertainty(per_site: Mapping[str, Mapping[str, float]], pooled: Mapping[str, float]) -> dict[str, Any]:
    """Wilson intervals of the accuracies a deployed run recorded (a mean over ``n_test`` rows each).

    The sites' evaluation replies carry no AUC variance, so AUCs of a deployed run are
    shown without an interval rather than with a guessed one.
    """
    ivs = {
        s: {"accuracy": accuracy_interval(m["accuracy"], int(m["n_test"]))}
        for s, m in per_site.items()
        if "accuracy" in m and m.get("n_test")
    }
    out: dict[str, Any] = {
        "level": LEVEL,
        "per_site": ivs,
        "meta": {"accuracy": meta_of([v["accuracy"] for v in ivs.values()])},
    }
    total = sum(int(m.get("n_test", 0)) for m in per_site.values())
    if "accuracy" in pooled and total:
        out["pooled_test"] = {"accuracy": accuracy_interval(pooled["accuracy"], total)}
    return out


def _privacy(store: SqlStore, experiment: str, runs: Sequence[RunRow], config: Mapping[str, Any]) -> Any:
    """The privacy section from the ledger rows of the study, or None when the run was not private."""
    from fedcare.privacy.setup import PrivacySettings, ledger_summary
    from fedcare.store.ledger import SqlLedgerBackend, sql_ledger

    raw = config.get("privacy") or {}
    if not raw:
        return None
    settings = PrivacySettings.from_mapping(raw)
    if not settings.is_private and settings.site_max_epsilon is None:
        return None
    charged = set(SqlLedgerBackend(store).sites(study=experiment))
    federated = [r for r in runs if r.rounds > 0]
    if not charged or not federated:
        return None
    sites = [s for s in config.get("_sites", ()) if s in charged] + sorted(charged - set(config.get("_sites", ())))
    ledgers = {s: sql_ledger(store, site=s, study=experiment, delta=settings.delta) for s in sites}
    return ledger_summary(ledgers, federated[-1].id, settings)  # type: ignore[arg-type]


def summary_from_store(store: SqlStore, ref: str) -> dict[str, Any]:
    """The summary.json of run or experiment ``ref``, built from the store only."""
    name, runs = resolve_runs(store, ref)
    results = {r.id: store.results(r.id) for r in runs}
    context: dict[str, Any] = next((res["context"] for res in results.values() if "context" in res), {})
    first = runs[-1] if len(runs) == 1 else next((r for r in runs if r.rounds > 0), runs[0])
    sites = dict(context.get("sites") or {})
    if not sites:
        listed = first.config.get("sites") or sorted({m.site for r in runs for m in store.site_metrics(r.id)})
        sites = {str(s): str(s) for s in listed}  # type: ignore[union-attr]
    config = dict(context.get("config") or first.config)
    summary: dict[str, Any] = {
        "experiment": name,
        "dataset": first.dataset,
        "provenance": context.get("provenance", ""),
        "sites": sites,
        "seed": first.seed,
        "task": {
            "name": first.task,
            "hash": first.task_hash,
            "params": dict(context.get("task_params") or first.config.get("task_params") or {}),  # type: ignore[call-overload]
        },
        "config": config,
        "settings": {r.name: _setting(store, r, list(sites), results[r.id]) for r in runs},
    }
    privacy = _privacy(store, runs[0].experiment or name, runs, {**config, "_sites": list(sites)})
    if privacy is not None:
        summary["privacy"] = privacy
    if "study" in context:
        summary["study"] = context["study"]
    summary["store"] = store.url.split("@")[-1]
    return summary


def write_report_from_store(store: SqlStore, ref: str, out_dir: Path) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``report.html`` of ``ref`` into ``out_dir``."""
    return write_outputs(summary_from_store(store, ref), out_dir)
