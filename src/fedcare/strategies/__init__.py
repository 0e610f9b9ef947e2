"""Server-side strategies, resolved by name through :mod:`fedcare.strategies.registry`."""

from fedcare.strategies.base import Fold, ServerState, Strategy, broadcast
from fedcare.strategies.cyclic import Cyclic
from fedcare.strategies.fedavg import FedAvg, WeightedMeanFold
from fedcare.strategies.fedbuff import FedBuff, StalenessFold
from fedcare.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from fedcare.strategies.fedprox import FedProx
from fedcare.strategies.registry import available_strategies, make_strategy, register_strategy
from fedcare.strategies.robust import BufferFold, CoordinateMedian, Krum, TrimmedMean
from fedcare.strategies.scaffold import Scaffold, ScaffoldFold

__all__ = [
    "BufferFold",
    "CoordinateMedian",
    "Cyclic",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedBuff",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "Fold",
    "Krum",
    "Scaffold",
    "ScaffoldFold",
    "ServerState",
    "StalenessFold",
    "Strategy",
    "TrimmedMean",
    "WeightedMeanFold",
    "available_strategies",
    "broadcast",
    "make_strategy",
    "register_strategy",
]
