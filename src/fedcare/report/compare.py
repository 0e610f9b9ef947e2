"""Reference runs beside a report: each run's pooled test metrics, and their mean over seeds per task.

``fedcare report RUN --compare REF`` reads every run ``REF`` names from the same store
(a run id, an experiment id, ``latest``, or a pattern such as ``'cnn-s*'`` over
experiment and run ids) and adds a comparison to the summary: one row per federated
setting of each experiment (task, task hash, seed, rounds, fit config, pooled-test
metrics; ``fit_differs`` names the fit keys whose values differ between rows), then,
per task and setting, the mean and standard deviation over the experiments' seeds.
Nothing is recomputed: the numbers are those :func:`summary_from_store` rebuilds.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedcare.errors import StoreError
from fedcare.report.from_store import summary_from_store
from fedcare.store.sql import SqlStore

__all__ = ["COMPARED", "comparison", "expand_refs"]

#: Pooled-test metrics shown in a comparison, in order, when a run has them.
COMPARED = ("accuracy", "auc", "c_index")


def expand_refs(store: SqlStore, refs: Sequence[str]) -> list[str]:
    """Experiment (or lone run) ids that ``refs`` name, in order, each once; a pattern must match something.

    Raises
    ------
    StoreError
        A pattern matches no experiment or run id (the message lists recent ones).
    """
    runs = store.list_runs()
    names = list(dict.fromkeys(r.experiment or r.id for r in runs))
    out: list[str] = []
    for ref in refs:
        if any(c in ref for c in "*?["):
            hits = [n for n in names if fnmatch.fnmatchcase(n, ref)]
            if not hits:
                recent = ", ".join(reversed(names[-10:])) or "the store is empty"
                raise StoreError(f"--compare {ref!r} matches no experiment or run in the store; recent: {recent}")
        else:
            hits = [ref]
        out += [h for h in hits if h not in out]
    return out


def _rows(summary: Mapping[str, Any], ref: str) -> list[dict[str, Any]]:
    """One row per federated setting (one with rounds) of an experiment summary."""
    rows = []
    for setting, res in summary["settings"].items():
        if not res.get("history"):
            continue  # local and pooled baselines: no rounds
        pooled = res.get("pooled_test", {})
        rows.append(
            {
                "experiment": ref,
                "setting": setting,
                "task": summary["task"]["name"],
                "task_hash": summary["task"]["hash"],
                "dataset": summary["dataset"],
                "seed": summary["seed"],
                "rounds": len(res["history"]),
                "fit": dict((summary.get("config") or {}).get("fit_config") or {}),
                **{m: float(pooled[m]) for m in COMPARED if m in pooled},
            }
        )
    return rows


def comparison(store: SqlStore, summary: Mapping[str, Any], refs: Sequence[str]) -> dict[str, Any]:
    """The comparison of ``summary`` (the report's own experiment) with the runs ``refs`` name.

    Raises
    ------
    StoreError
        A reference names nothing in the store.
    """
    own = str(summary["experiment"])
    rows = _rows(summary, own)
    seen = {own}
    for ref in expand_refs(store, refs):
        other = summary_from_store(store, ref)
        name = str(other["experiment"])  # "latest" resolved
        if name not in seen:
            seen.add(name)
            rows += _rows(other, name)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["task"], row["task_hash"], row["setting"]), []).append(row)
    by_task = []
    for (task, digest, setting), members in groups.items():
        entry: dict[str, Any] = {
            "task": task,
            "task_hash": digest,
            "setting": setting,
            "runs": len(members),
            "seeds": [m["seed"] for m in members],
        }
        for metric in COMPARED:
            values = [m[metric] for m in members if metric in m]
            if values:
                entry[metric] = {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                }
        by_task.append(entry)
    keys = sorted({k for r in rows for k in r["fit"]})
    fit_differs = [k for k in keys if len({repr(r["fit"].get(k)) for r in rows}) > 1]
    return {
        "this": own,
        "rows": rows,
        "by_task": by_task,
        "datasets": sorted({r["dataset"] for r in rows}),
        "fit_differs": fit_differs,
    }
