"""Fixtures: a study with three node processes (module), and a private PostgreSQL server (session)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.deploy.deploy_helpers import SITES, Study, free_port, make_certs


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Study]:
    """Certificates plus three node processes that stay up (and reconnect) across the module's servers."""
    root = tmp_path_factory.mktemp("study")
    make_certs(root)
    s = Study(root=root, port=free_port())
    s.nodes = {site: s.node(site) for site in SITES}  # type: ignore[attr-defined]
    try:
        yield s
    finally:
        s.stop_all()


# -- PostgreSQL: Debian's server, started privately on 127.0.0.1 for the test session --------------


def _pg_bin() -> Path | None:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster (trust auth, 127.0.0.1, free port), stopped at the end."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (initdb/pg_ctl not found); .ci/run installs Debian's postgresql")
    root = Path(tempfile.mkdtemp(prefix="fedcare-pg-"))  # not under pytest's 0700 tmp: the server user must reach it
    data, sockdir = root / "data", root / "sock"
    sockdir.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the postgres (or nobody) user
        user = "postgres"
        try:
            import pwd

            pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
        shutil.chown(root, user)
        shutil.chown(sockdir, user)
        os.chmod(root, 0o755)
        prefix = ["runuser", "-u", user, "--"]
    port = free_port()
    run = lambda args: subprocess.run(prefix + args, check=True, capture_output=True, timeout=120)  # noqa: E731
    run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "fedcare", "--no-sync", "-E", "UTF8"])
    opts = f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=off"
    run([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "pg.log"), "-w", "start"])
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=fedcare dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE fedcare")
        yield f"postgresql+psycopg://fedcare@127.0.0.1:{port}/fedcare"
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], timeout=60)
        shutil.rmtree(root, ignore_errors=True)
