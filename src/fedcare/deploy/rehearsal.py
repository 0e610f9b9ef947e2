"""``fedcare up``: a local dress rehearsal of a deployment — real processes, real mutual TLS.

The study file and the site files a user will deploy are run as they will be: one
``fedcare server`` and one ``fedcare node`` per site, each a separate process on
127.0.0.1, with a throw-away study CA, certificates for the hub and every site, and each
site's own policy. Only what a rehearsal must not touch is redirected into the rehearsal
folder: the sites' privacy ledgers, per-run memory and audit logs, and the coordinator's
address and certificates. Everything is checked before the first process starts, and
everything is stopped at the end, whatever happened.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedcare.build.run import build_task
from fedcare.build.site import builtin_site_spec
from fedcare.datasets import load_builtin
from fedcare.errors import ConfigError
from fedcare.simulate import load_study_sites
from fedcare.study.builtin import BUILTIN_STUDIES, builtin_study_path
from fedcare.study.site import SiteSpec, load_site
from fedcare.study.spec import StudySpec
from fedcare.study.toml import dump_toml, read_toml
from fedcare.task import task_hash
from fedcare.transport.tls import create_ca, issue_certificate
from fedcare.types import SiteId

__all__ = ["Rehearsal", "prepare_rehearsal", "run_rehearsal"]

#: Keys of a site's [data] table that name files (made absolute in the rehearsal's copy).
_PATH_OPTIONS = ("path", "labels")


@dataclass
class Rehearsal:
    """A prepared rehearsal: its folder, the files it wrote and the commands it will run."""

    study: StudySpec
    study_file: Path
    folder: Path
    run_id: str
    store_url: str
    server_config: Path
    site_configs: dict[str, Path]
    port: int
    notes: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _site_specs(study: StudySpec, site_files: Sequence[Path]) -> list[SiteSpec]:
    if site_files:
        return [load_site(p) for p in site_files]
    if study.data.dataset is None:
        raise ConfigError(f"{study.where}: no sites: give --site FILE for each site")
    data = load_builtin(study.data.dataset)
    return [builtin_site_spec(study.data.dataset, s, data.display_names.get(s, s)) for s in data.site_ids()]


def _site_file(
    spec: SiteSpec, rehearsal: Path, cert_dir: Path, port: int, task_digest: str, notes: list[str]
) -> dict[str, Any]:
    """The site's own file, with the coordinator, ledger, memory and audit log of the rehearsal."""
    raw: dict[str, Any] = dict(read_toml(spec.origin, "site file")) if spec.origin is not None else {}
    raw.pop("server", None)
    raw.pop("source", None)
    memory = str(rehearsal / f"memory-{spec.site_id}")
    raw["site"] = {**dict(raw.get("site", {})), "id": spec.site_id, "memory_dir": memory}
    data = {"kind": spec.kind, **({"path": str(spec.path)} if spec.path is not None else {}), **dict(spec.options)}
    for key in _PATH_OPTIONS[1:]:
        if isinstance(data.get(key), str) and spec.origin is not None:
            p = Path(data[key]).expanduser()
            data[key] = str(p if p.is_absolute() else (spec.origin.parent / p).resolve())
    raw["data"] = data
    policy = dict(raw.get("policy", {}))
    policy["ledger"] = f"sqlite:///{(rehearsal / f'privacy-{spec.site_id}.db').resolve()}"
    if spec.origin is not None:
        for key in ("trusted_reviewer_keys", "task_signatures", "approved_task_manifests"):
            if key in policy:
                policy[key] = [str((spec.origin.parent / Path(p)).resolve()) for p in policy[key]]
    if "approved_task_hashes" not in policy:
        policy["approved_task_hashes"] = [task_digest]
        notes.append(f"{spec.site_id}: its site file approves no task hash; the rehearsal approves {task_digest[:12]}…")
    if "studies" not in policy:
        policy["studies"] = list(spec.studies) or []
    raw["policy"] = policy
    raw["coordinator"] = {
        "address": f"127.0.0.1:{port}",
        "ca": str(cert_dir / "ca.pem"),
        "cert": str(cert_dir / f"{spec.site_id}.pem"),
        "key": str(cert_dir / f"{spec.site_id}.key"),
    }
    raw["connection"] = {"backoff_initial_s": 0.2, "backoff_max_s": 1.0}
    raw["audit"] = {"path": str(rehearsal / f"audit-{spec.site_id}.jsonl")}
    return raw


def prepare_rehearsal(
    study: StudySpec,
    site_files: Sequence[Path],
    *,
    folder: Path,
    run_id: str,
    store_url: str,
    out_dir: Path | None = None,
) -> Rehearsal:
    """Check the study and every site's data, then write the CA, certificates and configs into ``folder``.

    Raises before anything is written when a site's data does not fit the study, or a
    site does not opt in to it.
    """
    specs = _site_specs(study, site_files)
    for spec in specs:
        if spec.studies and study.name not in spec.studies:
            raise ConfigError(f"{spec.where}: policy.studies {list(spec.studies)} does not opt in to {study.name!r}")
    by_id, inputs = load_study_sites(study, [s for s in specs if s.origin is not None])
    first = next(iter(inputs.values()), None)
    digest = task_hash(build_task(study, n_features=first.n_features if first else None))
    if study.path is not None and study.path.exists():
        study_file = study.path.resolve()
    elif study.name in BUILTIN_STUDIES:
        study_file = builtin_study_path(study.name)
    else:
        raise ConfigError(f"{study.where}: a rehearsal needs the study as a file")
    folder.mkdir(parents=True, exist_ok=True)
    certs = folder / "certs"
    create_ca(certs, study=study.name)
    issue_certificate(certs, certs, name="hub", kind="server", hosts=("127.0.0.1", "localhost"))
    notes: list[str] = []
    port = _free_port()
    site_configs: dict[str, Path] = {}
    for spec in specs:
        issue_certificate(certs, certs, name=spec.site_id, kind="site")
        raw = _site_file(spec, folder, certs, port, digest, notes)
        raw["policy"]["studies"] = sorted({*raw["policy"]["studies"], study.name})
        path = folder / f"site-{spec.site_id}.toml"
        path.write_text(dump_toml(raw), encoding="utf-8")
        site_configs[spec.site_id] = path
    server: dict[str, Any] = {
        "study": str(study_file),
        "server": {
            "listen": f"127.0.0.1:{port}",
            "ca": str(certs / "ca.pem"),
            "cert": str(certs / "hub.pem"),
            "key": str(certs / "hub.key"),
            "allowed_sites": list(site_configs),
            "wait_for_sites": len(site_configs),
            "wait_timeout_s": 300.0,
            "audit_log": str(folder / "server-audit.jsonl"),
        },
        "store": {"url": store_url, "checkpoint_dir": str(folder / "checkpoints")},
        "run": {"id": run_id, **({"out": str(out_dir)} if out_dir is not None else {})},
    }
    server_config = folder / "server.toml"
    server_config.write_text(dump_toml(server), encoding="utf-8")
    del by_id
    return Rehearsal(study, study_file, folder, run_id, store_url, server_config, site_configs, port, notes)


def _pump(stream: IO[bytes], prefix: str, sink: Callable[[str, str], None], log: IO[bytes]) -> None:
    for raw in iter(stream.readline, b""):
        log.write(raw)
        log.flush()
        sink(prefix, raw.decode("utf-8", errors="replace").rstrip())


def run_rehearsal(rehearsal: Rehearsal, *, on_line: Callable[[str, str], None], timeout_s: float = 1800.0) -> int:
    """Start the server and one node per site, stream their output, stop everything; the server's exit code."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # the folder holding this fedcare package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")  # one process per site: no thread oversubscription
    env["PYTHONUNBUFFERED"] = "1"
    for var in ("grpc_proxy", "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        env.pop(var, None)
    procs: list[tuple[str, subprocess.Popen[bytes]]] = []
    pumps: list[threading.Thread] = []
    logs: list[IO[bytes]] = []

    def spawn(name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(rehearsal.folder / f"{name}.log", "wb")  # noqa: SIM115 - closed once its pump is done
        logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "fedcare", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
        )
        assert proc.stdout is not None
        t = threading.Thread(target=_pump, args=(proc.stdout, name, on_line, log), daemon=True)
        t.start()
        pumps.append(t)
        procs.append((name, proc))
        return proc

    try:
        server = spawn("server", ["server", "--config", str(rehearsal.server_config)])
        for site, config in rehearsal.site_configs.items():
            spawn(site, ["node", "--config", str(config), "--once"])
        deadline = time.monotonic() + timeout_s
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if server.poll() is None:
            on_line("up", f"the study did not finish within {timeout_s:g} s; stopping everything")
            server.terminate()
        code = server.wait(timeout=30)
        grace = time.monotonic() + 20
        for _name, proc in procs:
            while proc.poll() is None and time.monotonic() < grace:
                time.sleep(0.1)
        return code
    finally:
        for _name, proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for _name, proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for t in pumps:
            t.join(timeout=5)
        for log in logs:
            log.close()


def site_ids(rehearsal: Rehearsal) -> list[SiteId]:
    """The rehearsal's sites."""
    return [SiteId(s) for s in rehearsal.site_configs]
