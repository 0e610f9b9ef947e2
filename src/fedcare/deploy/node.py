"""``fedcare node``: one site's process. Its config is its policy.

The node loads its own data (a built-in data set's site, or a CSV file), builds the
installed task, wraps :class:`~fedcare.runtime.node.SiteNode` (which refuses any task
hash the site did not approve and says which hash it saw) and keeps a dial-out
connection to the coordinator with :class:`~fedcare.transport.grpc_node.GrpcNodeAgent`.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fedcare.data.tabular import Standardizer, split_indices
from fedcare.deploy.config import SiteConfig
from fedcare.errors import ConfigError, DataError
from fedcare.runtime.node import SiteNode
from fedcare.store.audit import AuditLog
from fedcare.store.ledger import sql_ledger
from fedcare.store.site_memory import SiteMemoryFiles
from fedcare.store.sql import SqlStore
from fedcare.task import ArrayDataset, SiteData, Task
from fedcare.tasks import make_task
from fedcare.transport.grpc_node import Backoff, GrpcNodeAgent
from fedcare.types import SiteId

__all__ = ["build_site", "load_site_data", "make_agent", "run_node"]

log = logging.getLogger(__name__)


def load_site_data(cfg: SiteConfig) -> SiteData:
    """The site's train/test split: a built-in data set's site, or a CSV file.

    A CSV has one row per example, numeric feature columns and a 0/1 label column
    (``data.label``); rows are split with ``test_fraction``/``split_seed`` (stratified)
    and standardised with this site's training statistics.
    """
    d = cfg.data
    if d.dataset is not None:
        from fedcare.datasets import load_builtin

        data = load_builtin(d.dataset)
        site = SiteId(d.site or cfg.site)
        if site not in data.sites:
            raise ConfigError(f"data set {d.dataset!r} has no site {site!r}; sites: {', '.join(data.sites)}")
        return data.sites[site]
    assert d.csv is not None
    try:
        frame = pd.read_csv(d.csv)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {d.csv}: {exc}") from None
    if d.label not in frame.columns:
        raise DataError(f"{d.csv}: no label column {d.label!r} (columns: {', '.join(map(str, frame.columns))})")
    y = frame.pop(d.label).to_numpy(dtype=np.float32)
    bad = [str(c) for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise DataError(f"{d.csv}: non-numeric feature column(s) {', '.join(bad)}")
    x = frame.to_numpy(dtype=np.float64)
    if len(x) < 4 or np.isnan(x).any() or np.isnan(y).any():
        raise DataError(f"{d.csv}: needs at least 4 rows and no missing values")
    train, test = split_indices(y, test_fraction=d.test_fraction, seed=d.split_seed)
    stats = Standardizer.fit(x[train])
    xs = stats.transform(x).astype(np.float32)
    return SiteData(train=ArrayDataset(xs[train], y[train]), test=ArrayDataset(xs[test], y[test]))


#: Ledger scope of a deployed node: one budget for everything it takes part in.
SITE_BUDGET = "all-studies"


def build_site(cfg: SiteConfig) -> tuple[SiteNode, Task]:
    """Data, installed task and policy -> the SiteNode that answers instructions."""
    data = load_site_data(cfg)
    params: dict[str, Any] = dict(cfg.task_params)
    if cfg.task == "logreg":
        params.setdefault("n_features", int(data.train.x.shape[1]))
    task = make_task(cfg.task, **params)
    policy = cfg.site_policy()
    # ε spent must survive restarts, or restarting the node would reset its budget
    ledger = sql_ledger(SqlStore(cfg.ledger_url), site=cfg.site, study=SITE_BUDGET, delta=policy.delta)
    # SCAFFOLD's c_i and Ditto's personal model must survive restarts too, and stay at the site
    memory = SiteMemoryFiles(cfg.memory_dir)
    node = SiteNode(site_id=SiteId(cfg.site), task=task, data=data, policy=policy, ledger=ledger, memory_files=memory)
    return node, task


def make_agent(cfg: SiteConfig, node: SiteNode, audit: AuditLog | None) -> GrpcNodeAgent:
    """The dial-out connection for ``node`` as ``cfg`` describes it."""
    return GrpcNodeAgent(
        site=cfg.site,
        handler=node.handle,
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


def run_node(cfg: SiteConfig, *, on_start: Any = None, once: bool = False) -> None:
    """Serve the coordinator until SIGTERM/SIGINT (or, with ``once``, until its run is over)."""
    node, task = build_site(cfg)
    digest = node.task_hash
    audit = AuditLog(cfg.audit_log, actor=cfg.site)
    approved_by = node.policy.approval_rule(digest, installed_hash=digest)
    for problem in node.policy.task_approvals.problems if node.policy.task_approvals else ():
        log.warning("site %s: %s", cfg.site, problem)
    audit.append(
        "start",
        task=task.name,
        task_hash=digest,
        task_version=node.task_manifest.version,
        approved_by=approved_by,
        studies=list(cfg.studies),
        server=cfg.address,
    )
    agent = make_agent(cfg, node, audit)
    if on_start is not None:
        on_start(NodeInfo(cfg.site, task.name, digest, approved_by is not None))

    def _stop(signum: int, _frame: object) -> None:
        log.info("site %s: signal %d, stopping", cfg.site, signum)
        agent.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        agent.run_forever(exit_after_run=once)
    finally:
        audit.append("stop")
