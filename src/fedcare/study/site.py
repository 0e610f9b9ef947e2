"""``site.toml``: one institution — who it is, where its data is, and its rules.

The same file serves ``fedcare data check``, ``fedcare stats``, a simulated site
(``fedcare simulate --site``), a rehearsed one (``fedcare up``) and ``fedcare node``.
Relative paths resolve against the file's folder. The keys are documented in
``docs/study.md``::

    [site]
    id = "north"                     # the site's id (its certificate's CN when deployed)
    name = "North Hospital"

    [data]
    kind = "csv"                     # csv | parquet | fhir | dicom | npz | builtin
    path = "patients.csv"
    # stream = true                  # dicom only: read the images a batch at a time (larger than memory)

    [policy]
    studies = ["heart-2026"]         # studies this site opts in to
    approved_task_hashes = ["..."]   # `fedcare tasks list` / `fedcare node --show-task-hash`
    approved_study_hashes = []       # optional pin of the study file's content hash
    max_epsilon = 3.0                # privacy budget (fail-closed), at delta
    require_secure_aggregation = false
    require_encryption = false       # only threshold-CKKS rounds (secure_aggregation.mode = "ckks")
    require_peer_to_peer = false     # only peer-to-peer rounds (secure_aggregation.mode = "p2p")

    [stats]                          # what a cohort-statistics query may release
    min_count = 5

    [coordinator]                    # deployment only: where to dial out, and the certificates
    address = "hub.example.org:50051"
    ca = "certs/ca.pem"
    cert = "certs/north.pem"
    key = "certs/north.key"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcare.data.config import SiteConfig as DataSiteConfig
from fedcare.data.config import SourceKind, parse_site_config
from fedcare.errors import ConfigError
from fedcare.runtime.approval import load_task_approvals
from fedcare.runtime.policy import SitePolicy
from fedcare.study.spec import StudySpec
from fedcare.study.toml import Checker, read_toml, resolve_path
from fedcare.transport.tls_files import TlsFiles
from fedcare.types import SiteId

__all__ = ["BUILTIN", "CoordinatorSpec", "SiteSpec", "load_site", "parse_site"]

#: ``[data] kind`` of a built-in data set's site (``dataset`` and ``site`` name it).
BUILTIN = "builtin"
_KINDS = (*(k.value for k in SourceKind), BUILTIN)

_TOP = {"site", "data", "source", "schema", "fhir", "stats", "policy", "coordinator", "server", "connection", "audit"}
_SITE = {"id", "name", "memory_dir"}
_DATA = {
    "kind",
    "path",
    "dataset",
    "site",
    "delimiter",
    "na_values",
    "labels",
    "window",
    "size",
    "file_column",
    "stream",
}
_POLICY = {
    "studies",
    "approved_task_hashes",
    "approved_study_hashes",
    "max_epsilon",
    "delta",
    "trust_central_noise",
    "allow_seeded_noise",
    "require_secure_aggregation",
    "require_encryption",
    "require_peer_to_peer",
    "min_peers",
    "ledger",
    "trusted_reviewer_keys",
    "task_signatures",
    "revoked_reviewer_keys",
    "approved_task_manifests",
}
#: Signed approvals (docs/tasks.md): trusted reviewer keys, signature files, revoked keys, approved manifests.
_SIGNED = ("trusted_reviewer_keys", "task_signatures", "revoked_reviewer_keys", "approved_task_manifests")
_COORDINATOR = {"address", "ca", "cert", "key", "server_name"}
_CONNECTION = {"proxy", "backoff_initial_s", "backoff_max_s", "connect_timeout_s"}
_AUDIT = {"path"}
_PLACES: dict[str, set[str]] = {
    "": _TOP,
    "site.": _SITE,
    "data.": _DATA,
    "policy.": _POLICY,
    "coordinator.": _COORDINATOR,
    "connection.": _CONNECTION,
    "audit.": _AUDIT,
}


@dataclass(frozen=True)
class CoordinatorSpec:
    """Where a deployed node dials out to, with which certificates, and how it reconnects."""

    address: str
    tls: TlsFiles
    server_name: str | None = None
    proxy: str | None = None
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    connect_timeout_s: float = 10.0


@dataclass(frozen=True)
class SiteSpec:
    """A validated ``site.toml``.

    Attributes
    ----------
    site_id, display_name
        The site's id in the federation and its human-readable name.
    kind : str
        The connector (``csv``, ``parquet``, ``fhir``, ``dicom``, ``npz``) or ``builtin``.
    path : Path or None
        The data file or folder (None for a built-in data set).
    options : Mapping[str, Any]
        Connector options (delimiter, DICOM label table, built-in ``dataset``/``site``...).
    policy : SitePolicy
        Everything the node enforces: studies, approved task and study hashes, budget,
        secure-aggregation demands.
    raw : Mapping[str, Any]
        The file's ``[schema]``, ``[fhir]`` and ``[stats]`` tables as written (checked
        against the study when the site's data is loaded).
    coordinator : CoordinatorSpec or None
        Deployment only.
    audit_log, ledger_url, memory_dir
        Where the node keeps its audit trail, privacy ledger and per-run memory.
    path : Path or None
        The file itself.
    """

    site_id: SiteId
    display_name: str
    kind: str
    path: Path | None
    options: Mapping[str, Any]
    policy: SitePolicy
    raw: Mapping[str, Any]
    audit_log: Path
    ledger_url: str
    memory_dir: Path
    coordinator: CoordinatorSpec | None = None
    origin: Path | None = None
    studies: tuple[str, ...] = field(default_factory=tuple)

    @property
    def where(self) -> str:
        """How messages name this site's file."""
        return str(self.origin) if self.origin is not None else f"site {self.site_id!r}"

    @property
    def builtin(self) -> bool:
        """True for a built-in data set's site."""
        return self.kind == BUILTIN

    def data_config(self, study: StudySpec | None = None) -> DataSiteConfig:
        """The connector's view of this site: source, the study's schema, FHIR mapping, stats rules.

        The study's ``[data]`` schema wins; a site file may carry its own ``[schema]`` for a
        ``data check`` without a study, and must then agree with the study's.
        """
        if self.builtin:
            raise ConfigError(f"{self.where}: a built-in data set's site has no connector configuration")
        raw: dict[str, Any] = {
            "site": {"id": self.site_id, "name": self.display_name},
            "source": {"kind": self.kind, "path": str(self.path), **dict(self.options)},
        }
        schema = self.raw.get("schema")
        if study is not None and study.data.schema is not None:
            described = study.data.describe()
            raw["schema"] = {
                "target": described["target"],
                "columns": {
                    name: {k: v for k, v in col.items() if v is not None} for name, col in described["columns"].items()
                },
            }
            if study.data.fhir is not None and "fhir" not in self.raw:
                raw["fhir"] = {
                    "conditions": {k: list(v) for k, v in study.data.fhir.conditions.items()},
                    "observations": _observations(study.data.fhir),
                    **(
                        {"reference_date": str(study.data.fhir.reference_date)}
                        if study.data.fhir.reference_date
                        else {}
                    ),
                }
        elif schema is not None:
            raw["schema"] = schema
        else:
            raise ConfigError(f"{self.where}: no schema to check the data against: give --study (or a [schema] table)")
        if "fhir" in self.raw:
            raw["fhir"] = self.raw["fhir"]
        if "stats" in self.raw:
            raw["stats"] = self.raw["stats"]
        try:
            return parse_site_config(raw, origin=self.origin)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("site config", self.where)) from None

    def policy_for(self, study: StudySpec) -> str | None:
        """Why this site does not take part in ``study`` (opt-in or pinned hash), or None."""
        refusal = self.policy.study_refusal(study.name)
        if refusal is not None:
            return refusal
        pinned = self.policy.approved_study_hashes
        if pinned is not None and study.hash not in pinned:
            return f"refused: study {study.name!r} hash {study.hash} is not approved by this site"
        return None


def _observations(mapping: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col, obs in mapping.observations.items():
        out[col] = {k: v for k, v in vars(obs).items() if v is not None} if hasattr(obs, "__dict__") else obs
    return out


def load_site(path: str | Path) -> SiteSpec:
    """Read and validate a ``site.toml`` (see :func:`parse_site`)."""
    p = Path(path)
    return parse_site(read_toml(p, "site file"), origin=p.resolve())


def _hashes(c: Checker, policy: Mapping[str, Any], key: str) -> frozenset[str] | None:
    values = c.names(policy, key, f"policy.{key}")
    if values is None:
        return None
    for h in values:
        if len(h) != 64 or any(ch not in "0123456789abcdef" for ch in h):
            c.bad.append(
                f"policy.{key}: {h[:70]!r} is not a 64-digit hex sha256 "
                "(`fedcare tasks list` or `fedcare study hash STUDY` prints the one to approve)"
            )
    return frozenset(values)


def parse_site(raw: Mapping[str, Any], *, origin: Path | None = None) -> SiteSpec:
    """Validate a parsed site file; ``origin`` is the file (relative paths resolve against its folder).

    Raises
    ------
    ConfigError
        One line starting with the file: unknown keys with a "did you mean", missing or
        wrong values.
    """
    where = str(origin) if origin is not None else "site file"
    base = origin.parent if origin is not None else Path.cwd()
    c = Checker(where, _PLACES)
    c.keys(raw, _TOP, "")
    site = c.table(raw, "site", "[site]")
    data = c.table(raw, "data", "[data]") or c.table(raw, "source", "[source]")
    policy = c.table(raw, "policy", "[policy]")
    coord = c.table(raw, "coordinator", "[coordinator]") or c.table(raw, "server", "[server]")
    conn = c.table(raw, "connection", "[connection]")
    audit = c.table(raw, "audit", "[audit]")
    c.keys(site, _SITE, "site.")
    c.keys(data, _DATA, "data.")
    c.keys(policy, _POLICY, "policy.")
    c.keys(coord, _COORDINATOR, "coordinator.")
    c.keys(conn, _CONNECTION, "connection.")
    c.keys(audit, _AUDIT, "audit.")
    c.raise_unknown()

    site_id = c.string(site, "id", "site.id") or c.string(site, "name", "site.name")
    if site_id is None:
        c.bad.append("site.id is required (the site's id in the federation)")
        site_id = "site"
    display = c.string(site, "name", "site.name", site_id) or site_id
    kind = data.get("kind", BUILTIN if "dataset" in data else None)
    if kind not in _KINDS:
        c.bad.append(f"data.kind must be one of {', '.join(_KINDS)}, got {kind!r}")
        kind = BUILTIN
    data_path: Path | None = None
    if kind == BUILTIN:
        if c.string(data, "dataset", "data.dataset") is None:
            c.bad.append("data.kind = 'builtin' needs data.dataset (e.g. 'heart-disease')")
    else:
        text = c.string(data, "path", "data.path")
        if text is None:
            c.bad.append(f"data.kind = {kind!r} needs data.path (the file or folder)")
        else:
            data_path = resolve_path(base, text)
    options = {k: v for k, v in data.items() if k not in ("kind", "path")}
    if kind == BUILTIN:
        options.setdefault("site", site_id)

    studies = c.names(policy, "studies", "policy.studies")
    task_hashes = _hashes(c, policy, "approved_task_hashes")
    study_hashes = _hashes(c, policy, "approved_study_hashes")
    delta = c.number(policy, "delta", "policy.delta", 1e-5, positive=True) or 1e-5
    if delta >= 1:
        c.bad.append(f"policy.delta must be below 1, got {delta}")
        delta = 1e-5
    rules: SitePolicy | None = None
    max_eps = c.number(policy, "max_epsilon", "policy.max_epsilon", None, positive=True)
    min_peers = c.integer(policy, "min_peers", "policy.min_peers", 1, minimum=1)
    flags = {
        k: c.boolean(policy, k, f"policy.{k}", False)
        for k in (
            "trust_central_noise",
            "allow_seeded_noise",
            "require_secure_aggregation",
            "require_encryption",
            "require_peer_to_peer",
        )
    }
    coordinator = _coordinator(c, coord, conn, base) if coord else None
    key_files = {k: c.names(policy, k, f"policy.{k}") or () for k in _SIGNED}
    c.raise_bad()
    try:
        approvals = load_task_approvals(
            hashes=task_hashes or (),
            trusted_keys=[resolve_path(base, p) for p in key_files["trusted_reviewer_keys"]],
            signatures=[resolve_path(base, p) for p in key_files["task_signatures"]],
            revoked_keys=key_files["revoked_reviewer_keys"],
            manifests=[resolve_path(base, p) for p in key_files["approved_task_manifests"]],
        )
    except ConfigError as exc:
        raise ConfigError(f"{where} [policy]: {exc}") from None
    rules = SitePolicy(
        approved_task_hashes=task_hashes,
        studies=frozenset(studies) if studies is not None else None,
        approved_study_hashes=study_hashes,
        max_epsilon=max_eps,
        delta=delta,
        min_peers=min_peers,
        task_approvals=approvals,
        **flags,
    )
    fedcare_dir = base / "fedcare-site"
    ledger = policy.get("ledger")
    memory = site.get("memory_dir")
    audit_path = audit.get("path")
    return SiteSpec(
        site_id=SiteId(site_id),
        display_name=display,
        kind=str(kind),
        path=data_path,
        options=options,
        policy=rules,
        raw={k: raw[k] for k in ("schema", "fhir", "stats") if k in raw},
        audit_log=resolve_path(base, audit_path)
        if isinstance(audit_path, str)
        else fedcare_dir / f"audit-{site_id}.jsonl",
        ledger_url=ledger
        if isinstance(ledger, str) and ledger
        else f"sqlite:///{(fedcare_dir / f'privacy-{site_id}.db').resolve()}",
        memory_dir=resolve_path(base, memory) if isinstance(memory, str) else fedcare_dir / f"memory-{site_id}",
        coordinator=coordinator,
        origin=origin,
        studies=tuple(studies or ()),
    )


def _coordinator(c: Checker, coord: Mapping[str, Any], conn: Mapping[str, Any], base: Path) -> CoordinatorSpec | None:
    address = c.string(coord, "address", "coordinator.address")
    files = {k: c.string(coord, k, f"coordinator.{k}") for k in ("ca", "cert", "key")}
    missing = [k for k in ("address", "ca", "cert", "key") if (address if k == "address" else files[k]) is None]
    if missing:
        c.bad.append(f"[coordinator] needs {', '.join(missing)}")
        return None
    assert address is not None
    return CoordinatorSpec(
        address=address,
        tls=TlsFiles(**{k: resolve_path(base, str(v)) for k, v in files.items()}),
        server_name=c.string(coord, "server_name", "coordinator.server_name"),
        proxy=c.string(conn, "proxy", "connection.proxy"),
        backoff_initial_s=c.number(conn, "backoff_initial_s", "connection.backoff_initial_s", 0.5, positive=True)
        or 0.5,
        backoff_max_s=c.number(conn, "backoff_max_s", "connection.backoff_max_s", 30.0, positive=True) or 30.0,
        connect_timeout_s=c.number(conn, "connect_timeout_s", "connection.connect_timeout_s", 10.0, positive=True)
        or 10.0,
    )
