"""Core values shared by every layer: model state, ids, messages and results.

Everything here is plain data (frozen dataclasses, enums, numpy arrays) so it can be
validated, serialised with safetensors/JSON and compared in tests. No I/O.
"""

from __future__ import annotations

import enum
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NewType, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "ConfigValue",
    "EvalResult",
    "FitResult",
    "Message",
    "MessageKind",
    "Metrics",
    "ModelState",
    "Payload",
    "RoundInfo",
    "RunId",
    "SiteId",
    "SiteUpdate",
    "new_message_id",
    "new_run_id",
]

SiteId = NewType("SiteId", str)
RunId = NewType("RunId", str)

#: Ordered mapping name -> array. The unit that is averaged, sent and stored.
ModelState: TypeAlias = dict[str, npt.NDArray[np.generic]]
#: Scalar values allowed in a configuration record (what a JSON/TOML scalar can hold).
ConfigValue: TypeAlias = bool | int | float | str
#: Named real-valued metrics, e.g. ``{"loss": 0.41, "accuracy": 0.8}``.
Metrics: TypeAlias = dict[str, float]


class MessageKind(enum.Enum):
    """What an instruction asks a site to do (and what its reply answers)."""

    FIT = "fit"
    EVALUATE = "evaluate"
    QUERY = "query"
    #: One SecAgg+ stage; the stage is named in the config (``secagg.stage``).
    SECAGG = "secagg"


@dataclass(frozen=True)
class Payload:
    """Generic typed records carried by a message (Flower's ``RecordDict`` idea).

    A new algorithm adds entries here, never a field on :class:`Message`.

    Attributes
    ----------
    arrays : Mapping[str, ModelState]
        Named array records, e.g. ``{"model": state}``.
    config : Mapping[str, ConfigValue]
        Scalars configuring the instruction (learning rate, epochs, seed...).
    metrics : Mapping[str, float]
        Real-valued results (loss, accuracy, number of examples...).
    """

    arrays: Mapping[str, ModelState] = field(default_factory=dict)
    config: Mapping[str, ConfigValue] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)


def new_message_id() -> str:
    """Return a fresh random message id (hex UUID4)."""
    return uuid.uuid4().hex


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp plus 6 random hex digits."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


@dataclass(frozen=True)
class Message:
    """One instruction to a site, or one site's reply.

    Replies carry ``reply_to`` (the instruction's ``message_id``) and either a payload
    or an ``error``: a refusal or failure at a site is data, never an exception.
    """

    kind: MessageKind
    run_id: RunId
    round_no: int
    site: SiteId
    payload: Payload = field(default_factory=Payload)
    message_id: str = field(default_factory=new_message_id)
    reply_to: str | None = None
    error: str | None = None

    @property
    def has_error(self) -> bool:
        """True when this reply reports a refusal or a failure."""
        return self.error is not None

    def reply(self, payload: Payload | None = None, *, error: str | None = None) -> Message:
        """Build the reply to this instruction (same kind, run, round and site)."""
        return Message(
            kind=self.kind,
            run_id=self.run_id,
            round_no=self.round_no,
            site=self.site,
            payload=payload if payload is not None else Payload(),
            reply_to=self.message_id,
            error=error,
        )


@dataclass(frozen=True)
class RoundInfo:
    """Which run and round a strategy call belongs to (rounds start at 1)."""

    run_id: RunId
    round_no: int
    total_rounds: int


@dataclass(frozen=True)
class FitResult:
    """What a site returns from local training.

    Attributes
    ----------
    state : ModelState
        The shared entries of the locally trained model.
    num_examples : int
        Training examples used, the FedAvg weight.
    metrics : Metrics
        Training metrics (e.g. mean training loss).
    extras : Mapping[str, ModelState]
        Strategy-specific records sent back (e.g. SCAFFOLD's control-variate delta).
    """

    state: ModelState
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    extras: Mapping[str, ModelState] = field(default_factory=dict)


@dataclass(frozen=True)
class SiteUpdate:
    """What a site's fit pipeline releases, typed end to end (plain reply or masked sum).

    Attributes
    ----------
    reference : ModelState
        The global model (shared entries) the site started from.
    state : ModelState
        The shared entries after training and the site's DP release (clip, noise share).
    num_examples : int
        Training examples used.
    weight : float
        The update's weight in the aggregate: ``num_examples``, or 1 under client-level
        DP (every site's clipped update counts the same).
    metrics : Metrics
        What may leave with it (training metrics, or only ``dp.*`` under DP).
    extras : Mapping[str, ModelState]
        Strategy records (e.g. SCAFFOLD's control-variate delta).
    """

    reference: ModelState
    state: ModelState
    num_examples: int
    weight: float
    metrics: Metrics = field(default_factory=dict)
    extras: Mapping[str, ModelState] = field(default_factory=dict)

    def delta(self, name: str) -> npt.NDArray[np.generic]:
        """``state[name] - reference[name]``, the update of one entry."""
        return np.subtract(self.state[name], self.reference[name])


@dataclass(frozen=True)
class EvalResult:
    """What a site returns from evaluating a model on its own test data."""

    loss: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
