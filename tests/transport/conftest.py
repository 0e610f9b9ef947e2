"""Fixtures: a study CA with certificates (session), a GrpcChannel with node agents in threads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.transport.grpc_helpers import NAMES, Deployment, Pki, open_channel

from fedcare.task import Task
from fedcare.transport.tls import create_ca, issue_certificate


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    for ca, names in (("ca", NAMES), ("other", ("site-00",))):
        create_ca(root / ca, study=ca)
        issue_certificate(root / ca, root / ca, name="hub", kind="server", hosts=("127.0.0.1", "localhost"))
        for name in names:
            issue_certificate(root / ca, root / ca, name=name, kind="site")
    return Pki(root)


@pytest.fixture
def deployment(pki: Pki, shift_task: Task) -> Iterator[Deployment]:
    d = Deployment(pki=pki, channel=open_channel(pki, shift_task), task=shift_task)
    try:
        yield d
    finally:
        d.stop()
