"""``server.toml`` and the deployment view of ``site.toml``.

Relative paths in a config file are resolved against the file's folder. Every problem
is reported as a :class:`~fedcare.errors.ConfigError` naming the file and the key.
The full reference is in ``docs/deployment.md``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcare.errors import ConfigError
from fedcare.runtime.policy import SitePolicy
from fedcare.study.site import SiteSpec, load_site
from fedcare.transport.tls_files import TlsFiles
from fedcare.types import ConfigValue

__all__ = ["ServerConfig", "SiteConfig", "load_server_config", "load_site_config", "site_config"]

_MB = 1024 * 1024


class _Table:
    """Typed reads from one TOML table, with errors naming file and key."""

    def __init__(self, data: Mapping[str, Any], where: str, root: Path) -> None:
        self.data, self.where, self.root = data, where, root

    def sub(self, name: str, *, required: bool = True) -> _Table:
        value = self.data.get(name)
        if value is None:
            if required:
                raise ConfigError(f"{self.where}: missing table [{name}]")
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where}: [{name}] must be a table")
        return _Table(value, f"{self.where} [{name}]", self.root)

    def _get(self, key: str, kinds: tuple[type, ...], default: Any, label: str) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise ConfigError(f"{self.where}: missing key {key!r}")
            return default
        value = self.data[key]
        if isinstance(value, bool) and bool not in kinds:
            raise ConfigError(f"{self.where}: {key!r} must be {label}, got {value!r}")
        if not isinstance(value, kinds):
            raise ConfigError(f"{self.where}: {key!r} must be {label}, got {type(value).__name__}")
        return value

    def str(self, key: str, default: Any = None) -> Any:
        return self._get(key, (str,), default, "a string")

    def int(self, key: str, default: Any = None, *, minimum: int | None = None) -> Any:
        value = self._get(key, (int,), default, "an integer")
        if value is not None and minimum is not None and value < minimum:
            raise ConfigError(f"{self.where}: {key!r} must be at least {minimum}, got {value}")
        return value

    def float(self, key: str, default: Any = None, *, positive: bool = False) -> Any:
        value = self._get(key, (int, float), default, "a number")
        if value is not None and positive and value <= 0:
            raise ConfigError(f"{self.where}: {key!r} must be positive, got {value}")
        return None if value is None else float(value)

    def bool(self, key: str, default: Any = None) -> Any:
        return self._get(key, (bool,), default, "true or false")

    def strings(self, key: str, default: Any = None) -> Any:
        value = self._get(key, (list,), default, "a list of strings")
        if value is not None and not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.where}: {key!r} must be a list of non-empty strings")
        return value

    def scalars(self, key: str) -> dict[str, ConfigValue]:
        value = self._get(key, (dict,), {}, "a table")
        for k, v in value.items():
            if not isinstance(v, bool | int | float | str):
                raise ConfigError(f"{self.where}: {key}.{k} must be a scalar")
        return dict(value)

    def path(self, key: str, default: Any = None) -> Path | None:
        value = self.str(key, default)
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.root / p)

    def required_path(self, key: str) -> Path:
        p = self.path(key, _REQUIRED)
        assert p is not None
        return p


_REQUIRED: Any = object()


def _read(path: Path) -> _Table:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise ConfigError(f"{path}: not valid TOML ({str(exc)[:200]})") from None
    return _Table(data, str(path), path.resolve().parent)


def _tls(t: _Table) -> TlsFiles:
    return TlsFiles(ca=t.required_path("ca"), cert=t.required_path("cert"), key=t.required_path("key"))


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``fedcare server`` needs besides the study (see docs/deployment.md for each key).

    The study itself (task, strategy, rounds, privacy, secure aggregation...) is the study
    file, ``study = "study.toml"`` here or ``--study`` on the command line.
    """

    listen: str
    tls: TlsFiles
    allowed_sites: tuple[str, ...]
    run_id: str | None
    study_path: Path | None
    wait_for_sites: int
    wait_timeout_s: float
    store_url: str
    checkpoint_dir: Path
    audit_log: Path
    chunk_bytes: int
    max_message_bytes: int
    out_dir: Path | None = None


_SERVER_TOP = {"study", "server", "store", "run"}


def load_server_config(path: str | Path) -> ServerConfig:
    """Parse and check ``server.toml``."""
    root = _read(Path(path))
    unknown = sorted(set(root.data) - _SERVER_TOP)
    if unknown:
        raise ConfigError(f"{root.where}: unknown table(s) or key(s) {unknown}; allowed: {sorted(_SERVER_TOP)}")
    if isinstance(root.data.get("study"), dict):
        raise ConfigError(
            f"{root.where}: the [study] table moved to its own study file (docs/study.md): "
            "write it as study.toml and set study = 'study.toml' here, or pass --study"
        )
    srv, store, run = root.sub("server"), root.sub("store", required=False), root.sub("run", required=False)
    allowed = tuple(srv.strings("allowed_sites", _REQUIRED))
    if not allowed:
        raise ConfigError(f"{srv.where}: 'allowed_sites' must name at least one site")
    wait_for = srv.int("wait_for_sites", len(allowed), minimum=1)
    if wait_for > len(allowed):
        raise ConfigError(f"{srv.where}: wait_for_sites={wait_for} exceeds the {len(allowed)} allow-listed sites")
    default_db = f"sqlite:///{root.root / 'fedcare-server' / 'fedcare.db'}"
    url = store.str("url", default_db)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        rel = Path(url.removeprefix("sqlite:///"))
        url = f"sqlite:///{rel if rel.is_absolute() else root.root / rel}"
    return ServerConfig(
        listen=srv.str("listen", "127.0.0.1:50051"),
        tls=_tls(srv),
        allowed_sites=allowed,
        run_id=run.str("id", None),
        study_path=root.path("study"),
        wait_for_sites=wait_for,
        wait_timeout_s=srv.float("wait_timeout_s", 600.0, positive=True),
        store_url=url,
        checkpoint_dir=store.path("checkpoint_dir") or root.root / "fedcare-server" / "checkpoints",
        audit_log=srv.path("audit_log") or root.root / "fedcare-server" / "audit.jsonl",
        chunk_bytes=int(srv.float("chunk_mb", 4.0, positive=True) * _MB),
        max_message_bytes=int(srv.float("max_message_mb", 2048.0, positive=True) * _MB),
        out_dir=run.path("out"),
    )


@dataclass(frozen=True)
class SiteConfig:
    """What ``fedcare node`` and ``fedcare doctor`` need to reach the coordinator, from a site file.

    A view of :class:`fedcare.study.site.SiteSpec` (``spec``) for the transport.
    """

    site: str
    address: str
    tls: TlsFiles
    studies: tuple[str, ...]
    approved_task_hashes: tuple[str, ...]
    audit_log: Path
    spec: SiteSpec
    proxy: str | None = None
    server_name: str | None = None
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    extra: Mapping[str, Any] = field(default_factory=dict)
    policy: SitePolicy = field(default_factory=SitePolicy)
    ledger_url: str = "sqlite:///fedcare-site/privacy-site.db"
    memory_dir: Path = Path("fedcare-site/memory-site")

    def site_policy(self) -> SitePolicy:
        """The whole policy the node enforces."""
        return self.policy


def site_config(spec: SiteSpec) -> SiteConfig:
    """The deployment view of a site file (it must have a [coordinator] table)."""
    c = spec.coordinator
    if c is None:
        raise ConfigError(f"{spec.where}: missing table [coordinator] (address, ca, cert, key) for a deployed node")
    if not spec.studies:
        raise ConfigError(f"{spec.where}: policy.studies must name at least one study this site opts in to")
    return SiteConfig(
        site=spec.site_id,
        address=c.address,
        tls=c.tls,
        studies=spec.studies,
        approved_task_hashes=tuple(sorted(spec.policy.approved_task_hashes or ())),
        audit_log=spec.audit_log,
        spec=spec,
        proxy=c.proxy,
        server_name=c.server_name,
        backoff_initial_s=c.backoff_initial_s,
        backoff_max_s=c.backoff_max_s,
        connect_timeout_s=c.connect_timeout_s,
        policy=spec.policy,
        ledger_url=spec.ledger_url,
        memory_dir=spec.memory_dir,
    )


def load_site_config(path: str | Path) -> SiteConfig:
    """Parse and check ``site.toml`` for a deployed node (see :mod:`fedcare.study.site`)."""
    spec = load_site(path)
    if spec.policy.approved_task_hashes is None:
        raise ConfigError(
            f"{spec.where}: policy.approved_task_hashes is required for a deployed node "
            "(an empty list refuses everything; `fedcare node --show-task-hash` prints the task's)"
        )
    return site_config(spec)
