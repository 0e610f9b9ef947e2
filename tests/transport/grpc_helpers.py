"""Helpers for in-process gRPC tests: certificates, a GrpcChannel and node agents in threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedcare.protocols import AuditSink
from fedcare.runtime.node import SiteNode
from fedcare.runtime.policy import SitePolicy
from fedcare.task import SiteData, Task, task_hash
from fedcare.transport.grpc_node import Backoff, GrpcNodeAgent
from fedcare.transport.grpc_server import GrpcChannel, StudyInfo
from fedcare.transport.tls import TlsFiles

NAMES = ("site-00", "site-01", "site-02", "site-03", "intruder")


@dataclass(frozen=True)
class Pki:
    root: Path

    def files(self, name: str, ca: str = "ca") -> TlsFiles:
        folder = self.root / ca
        return TlsFiles(ca=folder / "ca.pem", cert=folder / f"{name}.pem", key=folder / f"{name}.key")


@dataclass
class Deployment:
    pki: Pki
    channel: GrpcChannel
    task: Task
    agents: dict[str, GrpcNodeAgent] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)
    errors: dict[str, BaseException] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.channel.port}"

    def agent(
        self,
        site: str,
        handler: Callable,
        *,
        ca: str = "ca",
        studies: tuple[str, ...] = ("study",),
        proxy: str | None = None,
        max_attempts: int | None = None,
        audit: AuditSink | None = None,
    ) -> GrpcNodeAgent:
        agent = GrpcNodeAgent(
            site=site,
            handler=handler,
            address=self.address,
            tls=self.pki.files(site, ca),
            studies=studies,
            proxy=proxy,
            backoff=Backoff(initial_s=0.05, max_s=0.3),
            connect_timeout_s=5.0,
            audit=audit,
        )

        def run() -> None:
            try:
                agent.run_forever(max_attempts=max_attempts)
            except BaseException as exc:  # noqa: BLE001 - recorded for the test to assert on
                self.errors[site] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.agents[site] = agent
        self.threads.append(thread)
        return agent

    def nodes(self, sites: Mapping[str, SiteData], policy: SitePolicy | None = None) -> None:
        for site, data in sites.items():
            node = SiteNode(site_id=site, task=self.task, data=data, policy=policy)
            self.agent(site, node.handle)

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.channel.close()
        for thread in self.threads:
            thread.join(timeout=5)


def open_channel(pki: Pki, task: Task, *, port: int = 0, **kwargs: object) -> GrpcChannel:
    return GrpcChannel(
        listen=f"127.0.0.1:{port}",
        tls=pki.files("hub"),
        allowed_sites=("site-00", "site-01", "site-02", "site-03"),
        study=StudyInfo(study="study", run_id="run-1", task=task.name, task_hash=task_hash(task)),
        **kwargs,  # type: ignore[arg-type]
    )
