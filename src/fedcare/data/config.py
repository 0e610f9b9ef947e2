"""Site data configuration: the ``site.toml`` a site keeps beside its data.

::

    [site]
    id = "lahey"                      # this site's id in the federation
    name = "Lahey Hospital"           # optional display name

    [source]
    kind = "csv"                      # csv | parquet | fhir | dicom | npz
    path = "patients.csv"             # relative to this file

    [schema]                          # the study's schema (same at every site)
    target = "disease"
    [schema.columns.age]
    type = "number"                   # number | integer | category | boolean
    min = 0
    max = 120

    [stats]                           # optional: federated cohort statistics
    min_count = 5

Connector-specific keys live in ``[source]`` (CSV delimiter, DICOM label table, FHIR
reference date) and ``[fhir]`` (the code mapping); see ``docs/data.md``.
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedcare.data.fhir_mapping import FhirMapping
from fedcare.data.schema import StudySchema
from fedcare.data.stats import StatsSpec
from fedcare.errors import ConfigError
from fedcare.types import SiteId

__all__ = ["SiteConfig", "SourceKind", "load_site_config", "parse_site_config"]


class SourceKind(enum.Enum):
    """Which connector reads a site's files."""

    CSV = "csv"
    PARQUET = "parquet"
    FHIR = "fhir"
    DICOM = "dicom"
    NPZ = "npz"


_TOP_LEVEL = {"site", "source", "schema", "fhir", "stats"}


@dataclass(frozen=True)
class SiteConfig:
    """A site's data configuration, parsed and checked.

    Attributes
    ----------
    site_id : SiteId
        The site's id in the federation.
    display_name : str
        Human-readable name (defaults to the id).
    kind : SourceKind
        Which connector reads the data.
    path : Path
        The data file or folder, resolved against the config file's folder.
    options : Mapping[str, Any]
        The rest of ``[source]`` (connector options).
    schema : StudySchema
        The study's schema.
    fhir : FhirMapping or None
        Code mapping for ``kind = "fhir"``.
    stats : StatsSpec
        What ``fedcare stats`` computes and releases.
    origin : Path or None
        The config file, when read from disk.
    """

    site_id: SiteId
    display_name: str
    kind: SourceKind
    path: Path
    schema: StudySchema
    options: Mapping[str, Any] = field(default_factory=dict)
    fhir: FhirMapping | None = None
    stats: StatsSpec = field(default_factory=StatsSpec)
    origin: Path | None = None

    def option(self, name: str, default: Any) -> Any:
        """A ``[source]`` option, or ``default``."""
        return self.options.get(name, default)

    def resolve(self, value: str) -> Path:
        """A path option resolved like ``path`` (relative to the config file)."""
        p = Path(value).expanduser()
        base = self.origin.parent if self.origin is not None else Path.cwd()
        return p if p.is_absolute() else (base / p)


def parse_site_config(raw: Mapping[str, Any], *, origin: Path | None = None) -> SiteConfig:
    """Build a :class:`SiteConfig` from parsed TOML; relative paths resolve against ``origin``'s folder."""
    where = str(origin) if origin is not None else "site config"
    unknown = sorted(set(raw) - _TOP_LEVEL)
    if unknown:
        raise ConfigError(f"{where}: unknown table(s) {unknown}; allowed: {sorted(_TOP_LEVEL)}")
    site = raw.get("site", {})
    site_id = site.get("id") if isinstance(site, Mapping) else None
    if not isinstance(site_id, str) or not site_id:
        raise ConfigError(f"{where}: [site] needs id = '<site id>'")
    source = raw.get("source")
    if not isinstance(source, Mapping):
        raise ConfigError(f"{where}: missing [source] table (kind and path)")
    try:
        kind = SourceKind(source.get("kind"))
    except ValueError:
        allowed = [k.value for k in SourceKind]
        raise ConfigError(f"{where}: [source] kind {source.get('kind')!r} is not one of {allowed}") from None
    path_value = source.get("path")
    if not isinstance(path_value, str) or not path_value:
        raise ConfigError(f"{where}: [source] needs path = '<file or folder>'")
    schema_raw = raw.get("schema")
    if not isinstance(schema_raw, Mapping):
        raise ConfigError(f"{where}: missing [schema] table")
    try:
        schema = StudySchema.from_mapping(schema_raw)
        fhir = FhirMapping.from_mapping(raw.get("fhir", {})) if kind is SourceKind.FHIR else None
        stats = StatsSpec.from_mapping(raw.get("stats", {}), schema)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    options = {k: v for k, v in source.items() if k not in ("kind", "path")}
    cfg = SiteConfig(
        site_id=SiteId(site_id),
        display_name=str(site.get("name", site_id)),
        kind=kind,
        path=Path("."),
        schema=schema,
        options=options,
        fhir=fhir,
        stats=stats,
        origin=origin,
    )
    return replace(cfg, path=cfg.resolve(path_value))


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and check a ``site.toml``."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"site config {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"site config {p} cannot be read: {exc}") from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:  # RecursionError: nesting too deep
        raise ConfigError(f"site config {p} is not valid TOML: {str(exc)[:200]}") from None
    return parse_site_config(raw, origin=p.resolve())
