"""The fedcare exception tree; each error maps to a CLI exit code.

::

    FedcareError                 exit 1
    ├── ConfigError              exit 2   bad run/site configuration
    ├── DataError                exit 3   missing file/column, bad values, empty site
    ├── SerdeError               exit 4   malformed or unsafe payload on the wire/disk
    │   └── ProtocolError        exit 4   a malformed or out-of-order protocol frame
    ├── PolicyError              exit 5   a site's policy refuses an instruction
    ├── NotEnoughSitesError      exit 6   fewer sites answered than the minimum
    ├── StoreError               exit 7   the run store is unusable or inconsistent
    └── TransportError           exit 8   cannot reach or stay connected to a peer (TLS, network)

Failures at a site travel back as error replies (data); these exceptions are for the
process that detects the problem.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "FedcareError",
    "NotEnoughSitesError",
    "PolicyError",
    "ProtocolError",
    "SerdeError",
    "StoreError",
    "TransportError",
]


class FedcareError(Exception):
    """Base class of every fedcare error."""

    exit_code: int = 1


class ConfigError(FedcareError):
    """A configuration value is missing, of the wrong type or out of range."""

    exit_code = 2


class DataError(FedcareError):
    """Input data cannot be used: missing file or column, bad values, empty site."""

    exit_code = 3


class SerdeError(FedcareError):
    """A payload failed validation on decode (shape, dtype, size, finiteness)."""

    exit_code = 4


class PolicyError(FedcareError):
    """A site's policy refuses an instruction (unapproved task, budget, peers)."""

    exit_code = 5


class NotEnoughSitesError(FedcareError):
    """Fewer sites took part in a round than the configured minimum."""

    exit_code = 6


class StoreError(FedcareError):
    """The run store cannot be read or written."""

    exit_code = 7


class ProtocolError(SerdeError):
    """A protocol frame is malformed, oversized or out of order (wire protocol v1)."""


class TransportError(FedcareError):
    """A peer cannot be reached or refused the connection (network, TLS, version)."""

    exit_code = 8
