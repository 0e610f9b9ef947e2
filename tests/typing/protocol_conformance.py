"""Checked by mypy (`make typecheck`), never run: each adapter satisfies the core protocol it implements.

The core declares the protocols (``fedcare.protocols``) and the adapters implement them
without naming them; a method renamed or retyped on one side fails this file.
"""

from fedcare.he.engine import OpenFheEngine
from fedcare.protocols import AuditSink, Channel, FitWorkflow, Recorder, SiteMemory
from fedcare.runtime.coordinator import PlainFit
from fedcare.secure.ckks import CkksBackend, CkksWorkflow
from fedcare.secure.workflow import SecAggPlusWorkflow
from fedcare.store.audit import AuditLog
from fedcare.store.site_memory import SiteMemoryFiles
from fedcare.store.sql import SqlStore
from fedcare.transport.grpc_server import GrpcChannel
from fedcare.transport.inprocess import InProcessChannel


def channels(in_process: InProcessChannel, grpc: GrpcChannel) -> list[Channel]:
    return [in_process, grpc]


def recorder(store: SqlStore) -> Recorder:
    return store


def audit_sink(log: AuditLog) -> AuditSink:
    return log


def site_memory(files: SiteMemoryFiles) -> SiteMemory:
    return files


def fit_workflows(plain: PlainFit, secagg: SecAggPlusWorkflow, ckks: CkksWorkflow) -> list[FitWorkflow]:
    return [plain, secagg, ckks]


def ckks_backend(engine: OpenFheEngine) -> CkksBackend:
    return engine
