"""Platt scaling (Platt 1999) fitted by Newton's method from sums a site can share.

The calibrated probability of a patient is ``sigma(a * s + b)`` where ``s`` is the logit
of the model's risk. The log-loss of ``(a, b)`` over a set of rows, its gradient and its
Hessian are sums over the rows; a site therefore shares only five numbers and a count
per Newton step (:func:`platt_terms`), and the coordinator adds them up. Because both
the federated and the pooled fit run the same :func:`newton_platt` loop on the same
sums, the federated fit equals the pooled one to summation rounding.

Unpenalised maximum likelihood, as in Platt's paper without his target smoothing
(scikit-learn's ``CalibratedClassifierCV(method="sigmoid")`` smooths; we do not, so the
fit equals a plain logistic regression of the outcome on ``s``). A step that raises the
loss is halved (at most 30 times), so the loop is monotone; it stops when a step moves
``(a, b)`` by less than ``tol``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedcare.errors import ConfigError

__all__ = ["PlattFit", "PlattTerms", "apply_platt", "newton_platt", "platt_terms", "risk_logit"]

#: Risks are clipped to [EPS, 1 - EPS] before the logit (a model's 0 or 1 stays finite).
EPS = 1e-12


@dataclass(frozen=True)
class PlattTerms:
    """Sums over rows at one ``(a, b)``: log-loss, gradient (2), Hessian (2 x 2), row count."""

    loss: float
    grad: npt.NDArray[np.float64]
    hess: npt.NDArray[np.float64]
    n: int

    def __add__(self, other: PlattTerms) -> PlattTerms:
        """Two sites' sums."""
        return PlattTerms(self.loss + other.loss, self.grad + other.grad, self.hess + other.hess, self.n + other.n)


@dataclass(frozen=True)
class PlattFit:
    """The fitted ``a`` (slope) and ``b`` (intercept), with the rows, steps and final mean log-loss."""

    a: float
    b: float
    n: int
    iterations: int
    log_loss: float

    def as_dict(self) -> dict[str, float | int | str]:
        """JSON-ready (stored with the run, shipped in the release bundle)."""
        return {
            "method": "platt",
            "a": self.a,
            "b": self.b,
            "n": self.n,
            "iterations": self.iterations,
            "log_loss": self.log_loss,
        }


def risk_logit(p: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The logit of risks, clipped to [EPS, 1 - EPS]."""
    q = np.clip(np.asarray(p, dtype=np.float64).ravel(), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


def apply_platt(p: npt.ArrayLike, a: float, b: float) -> npt.NDArray[np.float64]:
    """Calibrated probabilities ``sigma(a * logit(p) + b)``."""
    z = a * risk_logit(p) + b
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # sigma without overflow


def platt_terms(scores: npt.ArrayLike, y: npt.ArrayLike, a: float, b: float) -> PlattTerms:
    """Log-loss, gradient and Hessian of ``(a, b)`` summed over rows (``scores``: logits, ``y``: 0/1)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = (np.asarray(y, dtype=np.float64).ravel() >= 0.5).astype(np.float64)
    if s.shape != t.shape:
        raise ConfigError(f"Platt scaling: {len(s)} scores but {len(t)} outcomes")
    z = a * s + b
    p = 0.5 * (1.0 + np.tanh(0.5 * z))
    r = p - t
    w = p * (1.0 - p)
    loss = float(np.sum(np.logaddexp(0.0, z) - t * z))
    grad = np.array([np.sum(r * s), np.sum(r)])
    sw = float(np.sum(w * s))
    hess = np.array([[np.sum(w * s * s), sw], [sw, np.sum(w)]])
    return PlattTerms(loss, grad, hess, int(len(s)))


def newton_platt(terms: Callable[[float, float], PlattTerms], *, max_iter: int = 50, tol: float = 1e-9) -> PlattFit:
    """Fit ``(a, b)`` by damped Newton steps on the sums ``terms(a, b)`` returns.

    ``terms`` may add the sums of many sites (the federated fit) or compute them on
    pooled rows; the loop is the same, so the fits agree. Starts at ``(1, 0)``, the
    identity (the model's own risk).

    Raises
    ------
    ConfigError
        No rows, or only one outcome class (the fit has no finite optimum).
    """
    a, b = 1.0, 0.0
    at = terms(a, b)
    if at.n == 0:
        raise ConfigError("Platt scaling: no rows to fit on")
    steps = 0
    for steps in range(1, max_iter + 1):  # noqa: B007 (reported as iterations)
        try:
            step = np.linalg.solve(at.hess + 1e-12 * np.eye(2), at.grad)
        except np.linalg.LinAlgError:
            raise ConfigError("Platt scaling: the Hessian is singular (all rows have one score?)") from None
        scale = 1.0
        for _ in range(30):
            na, nb = a - scale * float(step[0]), b - scale * float(step[1])
            cand = terms(na, nb)
            if cand.loss <= at.loss + 1e-12 * max(1.0, abs(at.loss)):
                break
            scale /= 2
        moved = math.hypot(na - a, nb - b)
        a, b, at = na, nb, cand
        if moved < tol:
            break
    if not (math.isfinite(a) and math.isfinite(b)) or abs(a) > 1e6:
        raise ConfigError("Platt scaling did not converge (the outcome is separated by the score?)")
    return PlattFit(a=a, b=b, n=at.n, iterations=steps, log_loss=at.loss / at.n)
