"""Helpers for deployment tests: a study folder (CA, certificates, configs), server and node processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedcare.task import task_hash
from fedcare.tasks import make_task
from fedcare.transport.tls import create_ca, issue_certificate

SRC = Path(__file__).resolve().parents[2] / "src"
SITES = ("cleveland", "hungary", "switzerland")
FIT_CONFIG = {"optimizer": "sgd", "lr": 0.05, "batch_size": 4, "local_epochs": 1}
HEART_HASH = task_hash(make_task("logreg", n_features=13))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.02) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def write_toml(path: Path, tables: dict[str, dict[str, object]], top_level: dict[str, object] | None = None) -> Path:
    lines = [f"{k} = {_toml(v)}" for k, v in (top_level or {}).items()]
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in table.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@dataclass
class Study:
    """A study folder: certificates for the hub and the sites, and a port for the server."""

    root: Path
    port: int
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    def study_file(
        self,
        name: str,
        *,
        rounds: int,
        seed: int = 7,
        min_sites: int = 2,
        fit: dict[str, object] | None = None,
        **tables: dict[str, object],
    ) -> Path:
        """A study.toml on the built-in heart-disease data (FedAvg, logistic regression by default)."""
        body: dict[str, dict[str, object]] = {
            "study": {"name": name, "seed": seed},
            "task": {"name": "logreg"},
            "data": {"dataset": "heart-disease"},
            "strategy": {"name": "fedavg"},
            "federation": {"rounds": rounds, "min_sites": min_sites, "round_timeout_s": 60.0},
            "fit": dict(fit or FIT_CONFIG),
        }
        for key, table in tables.items():
            body[key] = {**body.get(key, {}), **table}
        return write_toml(self.root / f"study-{name}.toml", body)

    def server_config(
        self,
        *,
        run_id: str,
        store_url: str,
        rounds: int,
        sites: tuple[str, ...] = SITES,
        study_name: str = "heart-2026",
        **study: object,
    ) -> Path:
        fit = dict(study.pop("fit_config", FIT_CONFIG))  # type: ignore[call-overload]
        extra: dict[str, dict[str, object]] = {}
        for key in ("seed", "min_sites"):
            if key in study:
                extra.setdefault("_top", {})[key] = study.pop(key)
        top = extra.pop("_top", {})
        study_path = self.study_file(study_name, rounds=rounds, fit=fit, **top, **study)  # type: ignore[arg-type]
        return write_toml(
            self.root / f"server-{run_id}.toml",
            {
                "server": {
                    "listen": f"127.0.0.1:{self.port}",
                    "ca": str(self.certs / "ca.pem"),
                    "cert": str(self.certs / "hub.pem"),
                    "key": str(self.certs / "hub.key"),
                    "allowed_sites": list(sites),
                    "wait_for_sites": len(sites),
                    "wait_timeout_s": 240.0,
                    "audit_log": str(self.root / "server-audit.jsonl"),
                },
                "store": {"url": store_url, "checkpoint_dir": str(self.root / f"checkpoints-{run_id}")},
                "run": {"id": run_id},
            },
            top_level={"study": str(study_path)},
        )

    def site_config(self, site: str, *, approved: tuple[str, ...] = (HEART_HASH,)) -> Path:
        return write_toml(
            self.root / f"{site}.toml",
            {
                "site": {"id": site},
                "data": {"kind": "builtin", "dataset": "heart-disease", "site": site},
                "policy": {"studies": ["heart-2026"], "approved_task_hashes": list(approved)},
                "coordinator": {
                    "address": f"127.0.0.1:{self.port}",
                    "ca": str(self.certs / "ca.pem"),
                    "cert": str(self.certs / f"{site}.pem"),
                    "key": str(self.certs / f"{site}.key"),
                },
                "audit": {"path": str(self.root / f"audit-{site}.jsonl")},
                "connection": {"backoff_initial_s": 0.1, "backoff_max_s": 0.5},
            },
        )

    def spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        for var in ("grpc_proxy", "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
            env.pop(var, None)
        log = open(self.root / log_name, "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "fedcare", *args], stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self.procs.append(proc)
        return proc

    def server(self, config: Path, tag: str) -> subprocess.Popen[bytes]:
        """Start a server; one a failed earlier test left running is killed first.

        Every server of the study listens on the same port and appends to the same audit
        log, so a leftover one would make the next test fail for a reason not its own.
        """
        for proc in self.servers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        proc = self.spawn(["server", "--config", str(config)], f"server-{tag}.log")
        self.servers.append(proc)
        return proc

    def node(self, site: str) -> subprocess.Popen[bytes]:
        return self.spawn(["node", "--config", str(self.site_config(site))], f"node-{site}.log")

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def make_certs(root: Path) -> Path:
    certs = root / "certs"
    create_ca(certs, study="heart-2026")
    issue_certificate(certs, certs, name="hub", kind="server", hosts=("127.0.0.1", "localhost"))
    for site in (*SITES, "va-long-beach"):
        issue_certificate(certs, certs, name=site, kind="site")
    return certs
