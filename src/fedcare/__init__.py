"""fedcare: federated learning for healthcare.

Hospitals train one model together while patient records stay where they are; only
model updates leave a site, under that site's policy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it. Imported on first use (PEP 562), so
#: ``fedcare --help`` or ``fedcare node`` does not pay for torch, opacus and scikit-learn
#: before it needs them.
_EXPORTS = {
    "ConfigError": "fedcare.errors",
    "DataError": "fedcare.errors",
    "FedcareError": "fedcare.errors",
    "NotEnoughSitesError": "fedcare.errors",
    "PolicyError": "fedcare.errors",
    "SerdeError": "fedcare.errors",
    "StoreError": "fedcare.errors",
    "Coordinator": "fedcare.runtime.coordinator",
    "RunResult": "fedcare.runtime.coordinator",
    "SiteNode": "fedcare.runtime.node",
    "SitePolicy": "fedcare.runtime.policy",
    "decode_state": "fedcare.serde",
    "encode_state": "fedcare.serde",
    "FedAvg": "fedcare.strategies",
    "ServerState": "fedcare.strategies",
    "Strategy": "fedcare.strategies",
    "make_strategy": "fedcare.strategies",
    "ArrayDataset": "fedcare.task",
    "SiteData": "fedcare.task",
    "Task": "fedcare.task",
    "task_hash": "fedcare.task",
    "Channel": "fedcare.transport",
    "InProcessChannel": "fedcare.transport",
    "EvalResult": "fedcare.types",
    "FitResult": "fedcare.types",
    "Message": "fedcare.types",
    "MessageKind": "fedcare.types",
    "ModelState": "fedcare.types",
    "Payload": "fedcare.types",
    "RoundInfo": "fedcare.types",
    "RunId": "fedcare.types",
    "SiteId": "fedcare.types",
}

if TYPE_CHECKING:
    from fedcare.errors import (
        ConfigError,
        DataError,
        FedcareError,
        NotEnoughSitesError,
        PolicyError,
        SerdeError,
        StoreError,
    )
    from fedcare.runtime.coordinator import Coordinator, RunResult
    from fedcare.runtime.node import SiteNode
    from fedcare.runtime.policy import SitePolicy
    from fedcare.serde import decode_state, encode_state
    from fedcare.strategies import FedAvg, ServerState, Strategy, make_strategy
    from fedcare.task import ArrayDataset, SiteData, Task, task_hash
    from fedcare.transport import Channel, InProcessChannel
    from fedcare.types import (
        EvalResult,
        FitResult,
        Message,
        MessageKind,
        ModelState,
        Payload,
        RoundInfo,
        RunId,
        SiteId,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fedcare' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "ArrayDataset",
    "Channel",
    "ConfigError",
    "Coordinator",
    "DataError",
    "EvalResult",
    "FedAvg",
    "FedcareError",
    "FitResult",
    "InProcessChannel",
    "Message",
    "MessageKind",
    "ModelState",
    "NotEnoughSitesError",
    "Payload",
    "PolicyError",
    "RoundInfo",
    "RunId",
    "RunResult",
    "SerdeError",
    "ServerState",
    "SiteData",
    "SiteId",
    "SiteNode",
    "SitePolicy",
    "StoreError",
    "Strategy",
    "Task",
    "decode_state",
    "encode_state",
    "make_strategy",
    "task_hash",
]
