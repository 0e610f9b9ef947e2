"""External validation at a site, through its node: the ``validate`` QUERY.

``fedcare validate --bundle DIR --server server.toml`` announces the bundle's study to
the new sites' nodes (each started from its own ``site.toml``, which must opt in to the
study and approve its task hash) and sends one ``validate`` instruction carrying the
released model and its preprocessing. Each site reads its rows with its own connector
(checked against the study's schema), takes the outcome as the study defines it
(``[data] target`` and ``positive``), scores every row with its installed task, and
answers with the sufficient statistics of
:func:`fedcare.evaluation.validation.score_statistics` only: binned score counts by
outcome, calibration bins, Brier sums, feature moments, histograms and category
counts, small cells suppressed at the site with the larger of the coordinator's
``min_cell`` and the site's own ``[stats] min_count``. No row and no score leaves.
Rows with a missing, malformed or out-of-range predictor are left out at the site
exactly as ``fedcare validate --site NAME=rows.csv`` leaves them out
(:func:`fedcare.data.encode.encode_rows`), and only their number is reported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedcare.build.prep import labels_of
from fedcare.data.connect import LoadedSite
from fedcare.data.encode import categorical_dummies, encode_rows
from fedcare.errors import ConfigError, NotEnoughSitesError, SerdeError
from fedcare.evaluation.validation import CAL_BINS, HIST_EDGES, score_statistics
from fedcare.privacy.cost import PrivacyCost
from fedcare.runtime.exchange import Exchange
from fedcare.runtime.node import SiteNode
from fedcare.types import ConfigValue, Message, MessageKind, ModelState, Payload, RunId, SiteId

__all__ = ["VALIDATE_QUERY", "ValidateQuery", "collect_validation", "decode_statistics", "encode_statistics"]

#: The ``query`` config value.
VALIDATE_QUERY = "validate"

_VECTORS = ("pos_counts", "neg_counts", "cal_n", "cal_sum_p", "cal_events", "feat_sum", "feat_sum2")
_SCALARS = ("bins", "n", "sum_p2", "sum_py", "sum_y", "feat_n", "suppressed")


def encode_statistics(stats: Mapping[str, Any]) -> dict[str, ModelState]:
    """A site's statistics as typed array records (what travels back)."""
    out: dict[str, ModelState] = {
        "validation": {
            **{k: np.asarray(stats[k], dtype=np.float64) for k in _VECTORS},
            "feat_hist": np.asarray(stats["feat_hist"], dtype=np.float64),
            "scalars": np.asarray(
                [float(len(stats["suppressed"])) if k == "suppressed" else float(stats[k]) for k in _SCALARS]
            ),
        }
    }
    out["categories"] = {col: np.asarray(c, dtype=np.float64) for col, c in stats.get("categories", {}).items()}
    return out


def decode_statistics(reply: Message, *, n_features: int, categories: Mapping[str, int]) -> dict[str, Any]:
    """Check a site's reply (shapes, finite, non-negative counts) and turn it back into statistics."""
    where = f"validate reply from {reply.site}"
    rec = reply.payload.arrays.get("validation")
    cats = reply.payload.arrays.get("categories") or {}
    if rec is None or set(rec) != {*_VECTORS, "feat_hist", "scalars"}:
        names = ", ".join((*_VECTORS, "feat_hist", "scalars"))
        raise SerdeError(f"{where}: expected a 'validation' record with {names}")
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in rec.items()}
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise SerdeError(f"{where}: values must be finite")
    scalars = dict(zip(_SCALARS, arrays["scalars"].tolist(), strict=False))
    bins = int(scalars.get("bins", 0))
    want = {
        "pos_counts": (bins,),
        "neg_counts": (bins,),
        "cal_n": (CAL_BINS,),
        "cal_sum_p": (CAL_BINS,),
        "cal_events": (CAL_BINS,),
        "feat_sum": (n_features,),
        "feat_sum2": (n_features,),
        "feat_hist": (n_features, len(HIST_EDGES) + 1),
        "scalars": (len(_SCALARS),),
    }
    bad = [k for k, shape in want.items() if arrays[k].shape != shape]
    if bins < 1 or bad:
        raise SerdeError(f"{where}: wrong shapes for {', '.join(bad) or 'bins'}")
    if set(cats) != set(categories) or any(np.asarray(cats[c]).shape != (k,) for c, k in categories.items()):
        raise SerdeError(f"{where}: category counts must cover {sorted(categories)}")
    counts = [arrays[k] for k in ("pos_counts", "neg_counts", "cal_n", "cal_events", "feat_hist")]
    if any((a < 0).any() for a in counts) or scalars["n"] < 0:
        raise SerdeError(f"{where}: counts must be non-negative")
    out: dict[str, Any] = {k: arrays[k].tolist() for k in (*_VECTORS, "feat_hist")}
    out.update({k: int(scalars[k]) for k in ("bins", "n", "sum_y", "feat_n")})
    out.update({k: float(scalars[k]) for k in ("sum_p2", "sum_py")})
    out["suppressed"] = [f"{int(scalars['suppressed'])} cell(s) at {reply.site}"] if scalars["suppressed"] else []
    out["categories"] = {c: [int(v) for v in np.asarray(cats[c]).tolist()] for c in categories}
    return out


class ValidateQuery:
    """A validating site's statistics of the released model's scores on all of its rows.

    Parameters
    ----------
    node : SiteNode
        The site's node for the study (its installed task scores the rows; its policy approves the task).
    loaded : LoadedSite
        The site's rows, read by its connector and checked against the study's schema.
    positive : sequence or None
        The study's positive outcome values (``[data] positive``).
    min_cell : int (default: 5)
        The site's own small-cell rule (``[stats] min_count``); the coordinator may ask for more, never less.
    """

    name = VALIDATE_QUERY
    task_bound = True

    def __init__(
        self, node: SiteNode, loaded: LoadedSite, positive: Sequence[object] | None, *, min_cell: int = 5
    ) -> None:
        self.node, self.loaded, self.positive, self.min_cell = node, loaded, positive, min_cell

    def admit(self, message: Message) -> PrivacyCost | None:
        """Admitted once the task policy passed (suppressed sums and counts; no DP cost)."""
        return None

    def answer(self, message: Message) -> Payload:
        """Score the rows, summarise, suppress; reply with the statistics only."""
        config = message.payload.config
        text = config.get("validate.preprocessing")
        asked = config.get("validate.min_cell", 0)
        if not isinstance(text, str) or not isinstance(asked, int) or isinstance(asked, bool):
            raise ConfigError("validate query: needs validate.preprocessing (JSON) and validate.min_cell (integer)")
        try:
            pre = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"validate query: validate.preprocessing is not JSON ({exc})") from None
        model = self.node.query_model(message)
        x, good, problems = encode_rows(self.loaded.frame, pre)
        if not good:
            raise ConfigError(f"validate query: none of the site's {len(self.loaded.frame)} rows can be scored")
        y = labels_of(self.loaded, self.positive)[good]
        p = np.asarray(self.node.task.predict(model, x), dtype=np.float64).ravel()
        stats = score_statistics(y, p, x, categorical=categorical_dummies(pre), min_cell=max(int(asked), self.min_cell))
        left_out = len({pr.row for pr in problems})
        return Payload(arrays=encode_statistics(stats), metrics={"rows_left_out": float(left_out)})


def collect_validation(
    exchange: Exchange,
    *,
    run_id: RunId,
    model: ModelState,
    preprocessing: Mapping[str, Any],
    task: str,
    task_hash: str,
    min_cell: int,
    sites: Sequence[SiteId] | None = None,
    min_sites: int = 1,
) -> tuple[dict[str, dict[str, Any]], dict[str, int], dict[SiteId, str]]:
    """Ask every site for its validation statistics: ``(statistics by site, rows left out, failures)``.

    Raises
    ------
    NotEnoughSitesError
        Fewer than ``min_sites`` valid answers.
    """
    targets = list(sites) if sites is not None else exchange.sites()
    config: dict[str, ConfigValue] = {
        "query": VALIDATE_QUERY,
        "task": task,
        "task_hash": task_hash,
        "validate.preprocessing": json.dumps(dict(preprocessing), sort_keys=True),
        "validate.min_cell": int(min_cell),
    }
    payload = Payload(arrays={"model": dict(model)}, config=config)
    n_features = len(preprocessing.get("encoded", []))
    cats = {c: len(v) for c, v in preprocessing.get("categorical", {}).items()}
    failures: dict[SiteId, str] = {}
    stats: dict[str, dict[str, Any]] = {}
    left_out: dict[str, int] = {}
    for reply in exchange(MessageKind.QUERY, run_id, 0, dict.fromkeys(targets, payload), failures):
        try:
            stats[reply.site] = decode_statistics(reply, n_features=n_features, categories=cats)
        except SerdeError as exc:
            failures[reply.site] = str(exc)
            continue
        left_out[reply.site] = int(reply.payload.metrics.get("rows_left_out", 0))
    if len(stats) < min_sites:
        detail = "; ".join(f"{s}: {e}" for s, e in sorted(failures.items()))
        why = f" ({detail})" if detail else ""
        raise NotEnoughSitesError(f"validate query: {len(stats)} valid answer(s), at least {min_sites} required{why}")
    return dict(sorted(stats.items())), left_out, failures
