"""Fixtures shared with the transport tests: a study CA (session) and a GrpcChannel with nodes in threads."""

from tests.transport.conftest import deployment, pki  # noqa: F401  (re-exported fixtures)
