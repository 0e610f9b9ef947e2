"""Federated Platt scaling through the one exchange: the ``platt`` QUERY.

When a study asks for it (``[evaluation] calibration = "platt"``), after the last round
the coordinator fits ``sigma(a * logit(risk) + b)`` with damped Newton steps
(:func:`fedcare.evaluation.recalibration.newton_platt`). Each step is one QUERY
exchange: the instruction carries the final global model and the current ``(a, b)``;
each site scores its own *training* rows with its installed task (the test rows stay
untouched for evaluation) and answers with the log-loss, gradient (2) and Hessian
(2 x 2) summed over them, and its row count (:class:`PlattQuery`). No row and no score
leaves a site. The coordinator adds the sites' sums; the same loop on pooled rows gives
the same fit. The query is task-bound: a site's task policy (approved hash) applies as
for training, and it goes through the Coordinator's exchange, so it is recorded and
audited the same way in simulation and over gRPC.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from fedcare.errors import ConfigError, NotEnoughSitesError, PolicyError, SerdeError
from fedcare.evaluation.recalibration import PlattFit, PlattTerms, newton_platt, platt_terms, risk_logit
from fedcare.privacy.cost import PrivacyCost
from fedcare.runtime.exchange import Exchange
from fedcare.task import SiteData, Task
from fedcare.types import ConfigValue, Message, MessageKind, ModelState, Payload, RunId, SiteId

__all__ = ["PLATT_QUERY", "PlattQuery", "describe_fit", "fit_platt"]

#: The ``query`` config value of a Platt step.
PLATT_QUERY = "platt"


class _Node(Protocol):
    task: Task
    data: SiteData

    def query_model(self, message: Message) -> ModelState:
        """The instruction's model, checked, with the site's local entries."""
        ...


class PlattQuery:
    """A site's sums for one Newton step of Platt scaling, on its training rows."""

    name = PLATT_QUERY
    task_bound = True

    def __init__(self, node: _Node) -> None:
        self.node = node
        self._scores: tuple[str, np.ndarray, np.ndarray] | None = None

    def admit(self, message: Message) -> PrivacyCost | None:
        """Admitted once the task policy passed; no DP cost (sums over the training rows)."""
        return None

    def _scored(self, message: Message) -> tuple[np.ndarray, np.ndarray]:
        model = self.node.query_model(message)
        digest = hashlib.sha256(message.run_id.encode())
        for k in sorted(model):
            digest.update(k.encode() + np.ascontiguousarray(model[k]).tobytes())
        key = digest.hexdigest()
        if self._scores is None or self._scores[0] != key:  # the same model on every Newton step: score once
            train = self.node.data.train
            if getattr(train, "x", None) is None:  # a RecordSource: records read from files a batch at a time
                raise PolicyError("refused: this site streams its records from files; Platt needs them in memory")
            p = self.node.task.predict(model, np.asarray(train.x))
            self._scores = (key, risk_logit(p), np.asarray(train.y, dtype=np.float64).ravel())
        return self._scores[1], self._scores[2]

    def answer(self, message: Message) -> Payload:
        """``{"platt": {"grad", "hess", "stats": [loss, n]}}`` at the instruction's ``(a, b)``."""
        config = message.payload.config
        a, b = config.get("platt.a"), config.get("platt.b")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v) for v in (a, b)):
            raise ConfigError(f"platt query: platt.a and platt.b must be finite numbers, got {a!r}, {b!r}")
        s, y = self._scored(message)
        t = platt_terms(s, y, float(a), float(b))  # type: ignore[arg-type]
        return Payload(arrays={"platt": {"grad": t.grad, "hess": t.hess, "stats": np.array([t.loss, float(t.n)])}})


def _terms_of(reply: Message) -> PlattTerms:
    record = reply.payload.arrays.get("platt")
    where = f"platt reply from {reply.site}"
    if record is None or set(record) != {"grad", "hess", "stats"}:
        raise SerdeError(f"{where}: expected a 'platt' record with grad, hess, stats")
    grad, hess, stats = (np.asarray(record[k], dtype=np.float64) for k in ("grad", "hess", "stats"))
    if grad.shape != (2,) or hess.shape != (2, 2) or stats.shape != (2,):
        raise SerdeError(f"{where}: shapes grad (2,), hess (2, 2), stats (2,) expected")
    if not all(np.isfinite(x).all() for x in (grad, hess, stats)) or stats[1] < 1 or stats[0] < 0:
        raise SerdeError(f"{where}: sums must be finite, the loss non-negative and the row count positive")
    return PlattTerms(float(stats[0]), grad, hess, int(stats[1]))


def fit_platt(
    exchange: Exchange,
    *,
    run_id: RunId,
    model: ModelState,
    sites: Sequence[SiteId] | None = None,
    min_sites: int = 1,
) -> tuple[PlattFit, list[SiteId], dict[SiteId, str]]:
    """Fit Platt scaling of ``model`` over the sites' training rows; ``(fit, sites used, failures)``.

    The sites that answer the first step are the ones fitted on; a later step they do
    not answer stops the fit (its sums would describe other rows).

    Raises
    ------
    NotEnoughSitesError
        Fewer than ``min_sites`` sites answered the first step, or one of them stopped answering.
    """
    targets = list(sites) if sites is not None else exchange.sites()
    failures: dict[SiteId, str] = {}
    used: list[SiteId] = []

    def terms(a: float, b: float) -> PlattTerms:
        config: dict[str, ConfigValue] = {"query": PLATT_QUERY, "platt.a": a, "platt.b": b}
        asked = used or targets
        got: dict[SiteId, PlattTerms] = {}
        payload = Payload(arrays={"model": dict(model)}, config=config)
        for reply in exchange(MessageKind.QUERY, run_id, 0, dict.fromkeys(asked, payload), failures):
            try:
                got[reply.site] = _terms_of(reply)
            except SerdeError as exc:
                failures[reply.site] = str(exc)
        if not used:
            if len(got) < min_sites:
                detail = "; ".join(f"{s}: {e}" for s, e in sorted(failures.items()))
                raise NotEnoughSitesError(
                    f"platt query: {len(got)} valid answer(s), at least {min_sites} required"
                    + (f" ({detail})" if detail else "")
                )
            used.extend(sorted(got))
        elif sorted(got) != used:
            lost = sorted(set(used) - set(got))
            raise NotEnoughSitesError(f"platt query: site(s) {', '.join(lost)} stopped answering mid-fit")
        total = got[used[0]]
        for site in used[1:]:
            total = total + got[site]
        return total

    fit = newton_platt(terms)
    return fit, used, failures


def describe_fit(fit: PlattFit, used: Sequence[SiteId], failures: dict[SiteId, str]) -> dict[str, Any]:
    """What is stored with the run (``recalibration`` result) and shipped in the bundle."""
    return {**fit.as_dict(), "sites": list(used), "failures": dict(failures), "rows": "training rows of each site"}
