"""``fedcare node``: one site's process. Its config is its policy.

The node reads its data through the site builder (the connector its site file names,
checked against the study's schema), builds the installed task, puts its
:class:`~fedcare.runtime.node.SiteNode` (which refuses any task hash the site did not
approve and says which hash it saw) behind its gate (study hash, combined statistics)
and keeps a dial-out connection to the coordinator with
:class:`~fedcare.transport.grpc_node.GrpcNodeAgent`.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedcare.build.site import SiteGate, deployed_site
from fedcare.deploy.config import SiteConfig
from fedcare.runtime.node import SiteNode
from fedcare.store.audit import AuditLog
from fedcare.study.spec import StudySpec
from fedcare.transport.grpc_node import Backoff, GrpcNodeAgent
from fedcare.types import Message

__all__ = ["build_gate", "make_agent", "run_node", "site_node"]

log = logging.getLogger(__name__)


def build_gate(cfg: SiteConfig, study: StudySpec | None, audit: AuditLog | None = None) -> SiteGate:
    """Site file (+ the study the operator reviewed, if any) -> the site's gate, ledger and memory on disk.

    The same site builder as a simulated site; ``audit`` records each study hash the
    coordinator names, once per run.
    """

    def seen(run_id: str, study_hash: str) -> None:
        if audit is None:
            return
        built = gate.built.get(study_hash)
        extra: dict[str, Any] = {}
        if built is not None:  # the installed task this study runs, and which rule of the site approved it
            node = built.node
            digest = node.task_hash
            extra = {
                "task": node.task.name,
                "task_hash": digest,
                "task_version": node.task_manifest.version,
                "approved_by": node.policy.approval_rule(digest, installed_hash=digest),
            }
        audit.append("study", run_id=run_id, study_hash=study_hash, **extra)

    gate = deployed_site(cfg.spec, study, on_study=seen)
    return gate


def site_node(cfg: SiteConfig, study: StudySpec) -> SiteNode:
    """The node a deployed site runs for ``study`` (its ledger and memory on disk)."""
    return build_gate(cfg, study).site_for(study).node


def make_agent(cfg: SiteConfig, handler: Callable[[Message], Message], audit: AuditLog | None) -> GrpcNodeAgent:
    """The dial-out connection for a site's ``handler`` as ``cfg`` describes it."""
    return GrpcNodeAgent(
        site=cfg.site,
        handler=handler,
        address=cfg.address,
        tls=cfg.tls,
        studies=cfg.studies,
        audit=audit,
        proxy=cfg.proxy,
        server_name=cfg.server_name,
        backoff=Backoff(initial_s=cfg.backoff_initial_s, max_s=cfg.backoff_max_s),
        connect_timeout_s=cfg.connect_timeout_s,
    )


@dataclass(frozen=True)
class NodeInfo:
    """What the node prints at start-up."""

    site: str
    task: str
    task_hash: str
    approved: bool


def run_node(cfg: SiteConfig, study: StudySpec | None = None, *, on_start: Any = None, once: bool = False) -> None:
    """Serve the coordinator until SIGTERM/SIGINT (or, with ``once``, until its run is over).

    With ``study`` the node checks its data against it before connecting and accepts
    only that study; without, it builds its part of each study the coordinator announces
    (opted in by name in ``policy.studies``, optionally pinned by hash).
    """
    audit = AuditLog(cfg.audit_log, actor=cfg.site)
    gate = build_gate(cfg, study, audit)
    extra: dict[str, Any] = {}
    info = NodeInfo(cfg.site, "", "", False)
    approvals = cfg.policy.task_approvals
    for problem in approvals.problems if approvals else ():
        log.warning("site %s: %s", cfg.site, problem)
    if study is not None:
        node = gate.site_for(study).node
        digest = node.task_hash
        approved_by = node.policy.approval_rule(digest, installed_hash=digest)
        info = NodeInfo(cfg.site, node.task.name, digest, approved_by is not None)
        extra = {
            "task": node.task.name,
            "task_hash": digest,
            "task_version": node.task_manifest.version,
            "approved_by": approved_by,
            "study": study.name,
            "study_hash": study.hash,
        }
    audit.append("start", studies=list(cfg.studies), server=cfg.address, **extra)
    agent = make_agent(cfg, gate.handle, audit)
    if on_start is not None:
        on_start(info)

    def _stop(signum: int, _frame: object) -> None:
        log.info("site %s: signal %d, stopping", cfg.site, signum)
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        agent.run_forever(exit_after_run=once)
    finally:
        audit.append("stop")
