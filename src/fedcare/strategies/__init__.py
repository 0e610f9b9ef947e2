"""Server-side strategies, resolved by name through :mod:`fedcare.strategies.registry`."""

from fedcare.strategies.base import Fold, ServerState, Strategy, broadcast
from fedcare.strategies.fedavg import FedAvg, WeightedMeanFold
from fedcare.strategies.registry import available_strategies, make_strategy, register_strategy

__all__ = [
    "FedAvg",
    "Fold",
    "ServerState",
    "Strategy",
    "WeightedMeanFold",
    "available_strategies",
    "broadcast",
    "make_strategy",
    "register_strategy",
]
