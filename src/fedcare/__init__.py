"""fedcare: federated learning for healthcare.

Hospitals train one model together while patient records stay where they are; only
model updates leave a site, under that site's policy.
"""

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
