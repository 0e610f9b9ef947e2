"""``server.toml`` and ``site.toml``: the coordinator's study and each site's policy.

Relative paths in a config file are resolved against the file's folder. Every problem
is reported as a :class:`~fedcare.errors.ConfigError` naming the file and the key.
The full reference is in ``docs/deployment.md``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedcare.errors import ConfigError
from fedcare.runtime.approval import load_task_approvals
from fedcare.runtime.policy import SitePolicy
from fedcare.transport.tls import TlsFiles
from fedcare.types import ConfigValue

__all__ = ["DataConfig", "ServerConfig", "SiteConfig", "load_server_config", "load_site_config"]

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
    """Everything ``fedcare server`` needs (see docs/deployment.md for each key)."""

    listen: str
    tls: TlsFiles
    allowed_sites: tuple[str, ...]
    study: str
    run_id: str
    task: str
    task_params: Mapping[str, Any]
    strategy: str
    strategy_params: Mapping[str, Any]
    fit_config: Mapping[str, ConfigValue]
    rounds: int
    seed: int
    min_sites: int
    fraction_fit: float
    round_timeout_s: float
    evaluate: bool
    wait_for_sites: int
    wait_timeout_s: float
    store_url: str
    checkpoint_dir: Path
    audit_log: Path
    chunk_bytes: int
    max_message_bytes: int
    dataset: str = ""


def load_server_config(path: str | Path) -> ServerConfig:
    """Parse and check ``server.toml``."""
    root = _read(Path(path))
    srv, study, store = root.sub("server"), root.sub("study"), root.sub("store", required=False)
    allowed = tuple(srv.strings("allowed_sites", _REQUIRED))
    if not allowed:
        raise ConfigError(f"{srv.where}: 'allowed_sites' must name at least one site")
    min_sites = study.int("min_sites", 1, minimum=1)
    wait_for = srv.int("wait_for_sites", len(allowed), minimum=1)
    if wait_for > len(allowed):
        raise ConfigError(f"{srv.where}: wait_for_sites={wait_for} exceeds the {len(allowed)} allow-listed sites")
    default_db = f"sqlite:///{root.root / 'fedcare-server' / 'fedcare.db'}"
    url = store.str("url", default_db)
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        rel = Path(url.removeprefix("sqlite:///"))
        url = f"sqlite:///{rel if rel.is_absolute() else root.root / rel}"
    name = study.str("name", _REQUIRED)
    fraction = study.float("fraction_fit", 1.0)
    if not 0 < fraction <= 1:
        raise ConfigError(f"{study.where}: 'fraction_fit' must be in (0, 1], got {fraction}")
    return ServerConfig(
        listen=srv.str("listen", "127.0.0.1:50051"),
        tls=_tls(srv),
        allowed_sites=allowed,
        study=name,
        run_id=study.str("run_id", name),
        task=study.str("task", _REQUIRED),
        task_params=dict(study._get("task_params", (dict,), {}, "a table")),
        strategy=study.str("strategy", "fedavg"),
        strategy_params=dict(study._get("strategy_params", (dict,), {}, "a table")),
        fit_config=study.scalars("fit_config"),
        rounds=study.int("rounds", _REQUIRED, minimum=1),
        seed=study.int("seed", 0),
        min_sites=min_sites,
        fraction_fit=fraction,
        round_timeout_s=study.float("round_timeout_s", 300.0, positive=True),
        evaluate=study.bool("evaluate", True),
        wait_for_sites=wait_for,
        wait_timeout_s=srv.float("wait_timeout_s", 600.0, positive=True),
        store_url=url,
        checkpoint_dir=store.path("checkpoint_dir") or root.root / "fedcare-server" / "checkpoints",
        audit_log=srv.path("audit_log") or root.root / "fedcare-server" / "audit.jsonl",
        chunk_bytes=int(srv.float("chunk_mb", 4.0, positive=True) * _MB),
        max_message_bytes=int(srv.float("max_message_mb", 2048.0, positive=True) * _MB),
        dataset=study.str("dataset", ""),
    )


@dataclass(frozen=True)
class DataConfig:
    """Where a site's data is: a built-in data set and site, or a CSV file."""

    dataset: str | None = None
    site: str | None = None
    csv: Path | None = None
    label: str = "label"
    test_fraction: float = 0.34
    split_seed: int = 43


@dataclass(frozen=True)
class SiteConfig:
    """Everything ``fedcare node`` needs: connection, policy, data, audit."""

    site: str
    address: str
    tls: TlsFiles
    studies: tuple[str, ...]
    approved_task_hashes: tuple[str, ...]
    data: DataConfig
    task: str
    task_params: Mapping[str, Any]
    audit_log: Path
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
        """The whole policy the node enforces: ``[policy]`` with the studies and approved hashes."""
        return replace(
            self.policy, approved_task_hashes=frozenset(self.approved_task_hashes), studies=frozenset(self.studies)
        )


def _task_approvals(policy: _Table, hashes: tuple[str, ...]) -> Any:
    """Signed approvals: trusted reviewer keys, signature files, revoked keys, approved manifests (docs/tasks.md)."""

    def paths(key: str) -> list[Path]:
        return [p if p.is_absolute() else policy.root / p for p in map(Path, policy.strings(key, []))]

    try:
        return load_task_approvals(
            hashes=hashes,
            trusted_keys=paths("trusted_reviewer_keys"),
            signatures=paths("task_signatures"),
            revoked_keys=policy.strings("revoked_reviewer_keys", []),
            manifests=paths("approved_task_manifests"),
        )
    except ConfigError as exc:
        raise ConfigError(f"{policy.where}: {exc}") from None


def load_site_config(path: str | Path) -> SiteConfig:
    """Parse and check ``site.toml``."""
    root = _read(Path(path))
    site, srv, policy = root.sub("site"), root.sub("server"), root.sub("policy")
    data, task = root.sub("data"), root.sub("task", required=False)
    conn, audit = root.sub("connection", required=False), root.sub("audit", required=False)
    name = site.str("name", _REQUIRED)
    studies = tuple(policy.strings("studies", _REQUIRED))
    if not studies:
        raise ConfigError(f"{policy.where}: 'studies' must name at least one study this site opts in to")
    hashes = tuple(policy.strings("approved_task_hashes", _REQUIRED))
    for h in hashes:
        if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
            raise ConfigError(
                f"{policy.where}: approved task hash {h[:70]!r} is not a 64-digit hex sha256 "
                "(with an empty list, 'fedcare node --show-task-hash' prints the installed task's)"
            )
    csv = data.path("csv")
    dataset = data.str("dataset")
    if (csv is None) == (dataset is None):
        raise ConfigError(f"{data.where}: give exactly one of 'dataset' (built-in) or 'csv' (a file)")
    test_fraction = data.float("test_fraction", 0.34, positive=True)
    if test_fraction >= 1:
        raise ConfigError(f"{data.where}: 'test_fraction' must be below 1, got {test_fraction}")
    proxy = conn.str("proxy")
    ledger_file = f"privacy-{name}.db"  # one file per site: nodes started together never share a new one
    delta = policy.float("delta", 1e-5, positive=True)
    if delta >= 1:
        raise ConfigError(f"{policy.where}: 'delta' must be below 1, got {delta}")
    rules = SitePolicy(
        max_epsilon=policy.float("max_epsilon", None, positive=True),
        delta=delta,
        trust_central_noise=policy.bool("trust_central_noise", False),
        allow_seeded_noise=policy.bool("allow_seeded_noise", False),
        require_secure_aggregation=policy.bool("require_secure_aggregation", False),
        min_peers=policy.int("min_peers", 1, minimum=1),
        task_approvals=_task_approvals(policy, hashes),
    )
    return SiteConfig(
        site=name,
        address=srv.str("address", _REQUIRED),
        tls=_tls(srv),
        studies=studies,
        approved_task_hashes=hashes,
        data=DataConfig(
            dataset=dataset,
            site=data.str("site", name),
            csv=csv,
            label=data.str("label", "label"),
            test_fraction=test_fraction,
            split_seed=data.int("split_seed", 43),
        ),
        task=task.str("name", "logreg"),
        task_params=dict(task._get("params", (dict,), {}, "a table")),
        audit_log=audit.path("path") or root.root / "fedcare-site" / f"audit-{name}.jsonl",
        proxy=proxy or None,
        server_name=srv.str("server_name") or None,
        backoff_initial_s=conn.float("backoff_initial_s", 0.5, positive=True),
        backoff_max_s=conn.float("backoff_max_s", 30.0, positive=True),
        connect_timeout_s=conn.float("connect_timeout_s", 10.0, positive=True),
        policy=rules,
        ledger_url=policy.str("ledger", None) or f"sqlite:///{(root.root / 'fedcare-site' / ledger_file).resolve()}",
        memory_dir=site.path("memory_dir") or root.root / "fedcare-site" / f"memory-{name}",
    )
