"""What left the sites, round by round: the model card's account of sharing and protection.

Read from the run store and the installed task (whose hash the bundle checks), never
from what the study file merely asked for:

* **parameters**: the entries of the model that travelled each round (the task's shared
  entries), those that stayed at every site (personalised or local entries: FedBN norms,
  FedPer heads, a ``TorchTask``'s ``local``), and those that never trained nor travelled
  (a ``TorchTask``'s frozen backbone outside ``trainable``, rebuilt at every site from
  its seed or weights file);
* **rounds**: per round, the sites whose update was aggregated, whether the coordinator
  saw only their sum (SecAgg+ stages exchanged in that round, with the survivors), and
  the differential privacy charged to each site's ledger for that round (mechanism,
  noise multiplier, ε of the round).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedcare.personal.site import local_keys
from fedcare.store.sql import SqlStore
from fedcare.task import Task
from fedcare.types import ModelState

__all__ = ["what_was_shared"]

#: SecAgg+ stage whose answering sites are the ones whose masked update entered the sum.
_MASKED = "masked_input"
_ENCRYPTED = "ckks.encrypt"  # threshold CKKS (fedcare.secure.ckks)
_PEER_TO_PEER = "p2p.aggregate"  # peer-to-peer rounds (fedcare.secure.p2p): the sites aggregated


def _protection(stages: list[str]) -> str:
    """What protected a round's updates: ``ckks-threshold``, ``p2p-secagg+``, ``secagg+`` or ``none``."""
    if _ENCRYPTED in stages:
        return "ckks-threshold"
    if _PEER_TO_PEER in stages:
        return "p2p-secagg+"
    return "secagg+" if _MASKED in stages else "none"


def _entries(names: list[str], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    return {
        "entries": names,
        "values": int(sum(int(np.prod(shapes[n])) for n in names if n in shapes)),
    }


def _parameters(task: Task, model: ModelState) -> dict[str, Any]:
    init = task.init_model(np.random.default_rng(0))
    shapes = {n: tuple(np.shape(v)) for n, v in init.items()}
    shapes.update({n: tuple(np.shape(v)) for n, v in model.items()})
    local = sorted(local_keys(task))
    shared = [n for n in init if n not in set(local)]
    frozen_of = getattr(task, "frozen_keys", None)
    frozen: list[str] = []
    if callable(frozen_of):
        frozen_shapes = dict(frozen_of())
        frozen = list(frozen_shapes)
        shapes.update(frozen_shapes)
    return {
        "shared": _entries(shared, shapes),
        "local": _entries(local, shapes),
        "frozen": _entries(frozen, shapes),
    }


def what_was_shared(
    store: SqlStore, run_id: str, task: Task, model: ModelState, study: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The card's ``sharing`` section for run ``run_id`` (``study``: the study's describe(), if known)."""
    study = study or {}
    privacy_level = str((study.get("privacy") or {}).get("level", "none"))
    personal = str((study.get("personalization") or {}).get("method", "none"))
    compression = str((study.get("compression") or {}).get("codec", "none"))
    by_round: dict[int, dict[str, Any]] = defaultdict(lambda: {"stages": [], "sites": []})
    for ex in store.exchanges(run_id):
        if ex.round_no < 1:
            continue
        entry = by_round[ex.round_no]
        if ex.kind == "secagg":
            entry["stages"].append(ex.name)
            if ex.name in (_MASKED, _ENCRYPTED):
                entry["sites"] = list(ex.answered)
        elif ex.kind == "fit":
            entry["sites"] = sorted({*entry["sites"], *ex.answered})
    dp: dict[int, dict[str, Any]] = defaultdict(dict)
    for row in store.ledger_rows(run_id):
        dp[row.round_no][row.site] = {
            "mechanism": row.mechanism,
            "noise_multiplier": row.noise_multiplier,
            "epsilon_round": row.epsilon_round,
            "delta": row.delta,
        }
    rounds = []
    for r in store.rounds(run_id):
        entry = by_round.get(r.round_no, {"stages": [], "sites": []})
        rounds.append(
            {
                "round": r.round_no,
                "sites": entry["sites"],
                "secure_aggregation": _MASKED in entry["stages"] or _ENCRYPTED in entry["stages"],
                "protection": _protection(entry["stages"]),
                "differential_privacy": dict(sorted(dp.get(r.round_no, {}).items())),
            }
        )
    secagg = study.get("secure_aggregation") or {}
    selected = secagg.get("encrypt") if secagg.get("mode") == "ckks" else None
    return {
        "parameters": _parameters(task, model),
        # selective CKKS: the shared entries that travelled as plain weighted updates
        "sent_in_clear": [n for n in model if n not in set(selected)] if selected is not None else [],
        "personalization": personal,
        "privacy_level": privacy_level,
        "compression": compression,
        "rounds": rounds,
        "summary": _summary(rounds, privacy_level),
    }


def _span(numbers: list[int]) -> str:
    if not numbers:
        return "none"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{numbers[0]}" if len(numbers) == 1 else f"{numbers[0]}–{numbers[-1]}"
    return ", ".join(map(str, numbers))


def _summary(rounds: list[dict[str, Any]], level: str) -> dict[str, str]:
    secure = [r["round"] for r in rounds if r["secure_aggregation"]]
    private = [r["round"] for r in rounds if r["differential_privacy"]]
    return {
        "secure_aggregation": "every round"
        if rounds and len(secure) == len(rounds)
        else (f"rounds {_span(secure)}" if secure else "none"),
        "differential_privacy": (
            f"{level}: every round" if rounds and len(private) == len(rounds) else f"{level}: rounds {_span(private)}"
        )
        if level != "none"
        else "none",
    }
