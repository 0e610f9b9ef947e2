"""Errors of the secure-aggregation protocol.

::

    FedcareError
    └── SecAggError              a stage message is malformed, out of order, replayed or forged
        └── SecAggAbort          too few sites remain: the round ends with no aggregate
"""

from __future__ import annotations

from fedcare.errors import FedcareError

__all__ = ["ModelDivergenceError", "SecAggAbort", "SecAggError"]


class SecAggError(FedcareError):
    """A secure-aggregation message was refused (bad, out of order, replayed or tampered)."""

    exit_code = 8


class SecAggAbort(SecAggError):
    """Fewer than the threshold of sites (or neighbours) remain; nothing is revealed."""


class ModelDivergenceError(SecAggError):
    """Peer-to-peer sites disagree on the new model (their digests differ): the run stops."""
