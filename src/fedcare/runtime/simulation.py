"""Simulation: the real Coordinator driving in-process SiteNodes.

Nothing here shortcuts the protocol: every instruction and reply is a Message that
passes the site's policy and the Coordinator's validation, exactly as over gRPC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from fedcare.errors import ConfigError
from fedcare.personal.site import shared_part
from fedcare.privacy.ledger import PrivacyLedger
from fedcare.protocols import Channel, Recorder, RoundReport, RunSpec
from fedcare.runtime.coordinator import Coordinator, FitWorkflow, RunResult
from fedcare.runtime.node import SiteNode, TaskIdentity
from fedcare.runtime.policy import SitePolicy
from fedcare.secure.ckks import CkksBackend, CkksWorkflow
from fedcare.strategies.base import Strategy
from fedcare.task import SiteData, Task, task_hash
from fedcare.transport.inprocess import InProcessChannel
from fedcare.types import RunId, SiteId

__all__ = ["build_nodes", "run_simulation"]


def build_nodes(
    sites: Mapping[SiteId, SiteData],
    task: Task,
    policies: Mapping[SiteId, SitePolicy] | None = None,
    ledgers: Mapping[SiteId, PrivacyLedger] | None = None,
    ckks_backend: CkksBackend | None = None,
) -> dict[SiteId, SiteNode]:
    """One SiteNode per site, each holding only its own data (and its own ledger).

    ``ckks_backend`` is the OpenFHE engine the simulated sites use for threshold CKKS
    (one process for the simulation; each site's key share is its own handle in it).
    """
    policies = policies or {}
    ledgers = ledgers or {}
    identity = TaskIdentity.of(task)  # once for all sites: one task, one manifest
    return {
        site: SiteNode(
            site_id=site,
            task=task,
            data=data,
            policy=policies.get(site),
            ledger=ledgers.get(site),
            ckks_backend=ckks_backend,
            identity=identity,
        )
        for site, data in sites.items()
    }


def run_simulation(
    *,
    sites: Mapping[SiteId, SiteData],
    task: Task,
    strategy: Strategy,
    rounds: int,
    seed: int,
    run_id: RunId,
    name: str = "simulation",
    dataset: str = "",
    recorder: Recorder | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
    fraction_fit: float = 1.0,
    min_sites: int = 1,
    round_timeout_s: float = 300.0,
    policies: Mapping[SiteId, SitePolicy] | None = None,
    max_workers: int | None = None,
    config: Mapping[str, object] | None = None,
    experiment: str = "",
    ledgers: Mapping[SiteId, PrivacyLedger] | None = None,
    nodes: Mapping[SiteId, SiteNode] | None = None,
    fit_workflow: FitWorkflow | None = None,
    backend: str = "inprocess",
    ray_address: str | None = None,
) -> RunResult:
    """Run ``rounds`` of ``strategy`` over in-process sites; return the final state.

    Pass ``nodes`` (from :func:`build_nodes`) to read the sites' local state afterwards
    (personalised models); by default fresh nodes are built from ``sites``.
    ``backend="ray"`` hosts the sites on Ray actors (:class:`~fedcare.transport.ray_channel.RayChannel`,
    a local Ray, or the cluster at ``ray_address``); the nodes then live in the actors.
    """
    ckks = fit_workflow.backend if isinstance(fit_workflow, CkksWorkflow) else None
    nodes = nodes if nodes is not None else build_nodes(sites, task, policies, ledgers, ckks_backend=ckks)
    channel: Channel
    if backend == "inprocess":
        channel = InProcessChannel({s: n.handle for s, n in nodes.items()}, max_workers=max_workers)
    elif backend == "ray":
        try:  # optional extra: imported only when asked for
            from fedcare.transport.ray_channel import RayChannel
        except ImportError:
            raise ConfigError("backend 'ray' needs the ray extra: pip install 'fedcare[ray]'") from None
        channel = RayChannel(nodes, address=ray_address)
    else:
        raise ConfigError(f"backend must be 'inprocess' or 'ray', got {backend!r}")
    digest = task_hash(task)
    coordinator = Coordinator(
        channel=channel,
        strategy=strategy,
        task_name=task.name,
        task_hash=digest,
        rounds=rounds,
        seed=seed,
        fraction_fit=fraction_fit,
        min_sites=min_sites,
        round_timeout_s=round_timeout_s,
        recorder=recorder,
        on_round=on_round,
        fit_workflow=fit_workflow,
    )
    spec = RunSpec(
        run_id=run_id,
        name=name,
        dataset=dataset,
        strategy=strategy.name,
        task=task.name,
        task_hash=digest,
        seed=seed,
        rounds=rounds,
        config=dict(config or {}),
        experiment=experiment,
    )
    try:
        return coordinator.run(shared_part(task, task.init_model(np.random.default_rng(seed))), spec=spec)
    finally:
        channel.close()
