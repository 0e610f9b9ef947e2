"""Secure aggregation (SecAgg+): sans-I/O site and server state machines, encoding, workflow.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017; Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020. See ``docs/secure_aggregation.md``.
"""

from fedcare.secure.dp import DistributedDp, DistributedDpLedger
from fedcare.secure.encoding import FixedPointCodec
from fedcare.secure.errors import SecAggAbort, SecAggError
from fedcare.secure.server import SecAggResult, SecAggServer
from fedcare.secure.site import SecAggSite
from fedcare.secure.stages import Stage
from fedcare.secure.workflow import SecAggPlusWorkflow

__all__ = [
    "DistributedDp",
    "DistributedDpLedger",
    "FixedPointCodec",
    "SecAggAbort",
    "SecAggError",
    "SecAggPlusWorkflow",
    "SecAggResult",
    "SecAggServer",
    "SecAggSite",
    "Stage",
]
