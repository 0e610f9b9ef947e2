"""The study's ``[fhir]`` declaration: which codes become which columns.

Kept apart from the connector (:mod:`fedcare.data.fhir`) so that parsing a study or site
file imports neither numpy's data path nor ``fhir.resources``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedcare.errors import ConfigError

__all__ = ["FhirMapping", "ObservationCode"]


@dataclass(frozen=True)
class ObservationCode:
    """A LOINC code (any system when ``system`` is None) and an optional expected UCUM unit."""

    code: str
    unit: str | None = None
    system: str | None = "http://loinc.org"


@dataclass(frozen=True)
class FhirMapping:
    """Which codes become which columns (the study's declaration).

    Attributes
    ----------
    conditions : Mapping[str, tuple[str, ...]]
        Column -> codes (``"system|code"`` or a bare code matching any system).
    observations : Mapping[str, ObservationCode]
        Column -> observation code (matched in ``Observation.code`` and ``component.code``).
    reference_date : datetime.date or None (default: None)
        Date at which ages and "latest" values are taken; ``None`` means today (UTC).
    """

    conditions: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    observations: Mapping[str, ObservationCode] = field(default_factory=dict)
    reference_date: dt.date | None = None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> FhirMapping:
        """Build from the ``[fhir]`` TOML table."""
        unknown = sorted(set(raw) - {"conditions", "observations", "reference_date"})
        if unknown:
            raise ConfigError(f"[fhir] has unknown key(s) {unknown}")
        conditions: dict[str, tuple[str, ...]] = {}
        for col, codes in dict(raw.get("conditions", {})).items():
            codes = [codes] if isinstance(codes, str) else codes
            if not isinstance(codes, list) or not codes or not all(isinstance(c, str) for c in codes):
                raise ConfigError(f"[fhir.conditions] {col}: expected a list of 'system|code' strings, got {codes!r}")
            conditions[col] = tuple(codes)
        observations: dict[str, ObservationCode] = {}
        for col, spec in dict(raw.get("observations", {})).items():
            if isinstance(spec, str):
                observations[col] = ObservationCode(spec)
            elif isinstance(spec, Mapping) and isinstance(spec.get("code"), str):
                observations[col] = ObservationCode(
                    spec["code"], spec.get("unit"), spec.get("system", "http://loinc.org")
                )
            else:
                raise ConfigError(f"[fhir.observations] {col}: expected a LOINC code or {{code, unit}}, got {spec!r}")
        ref = raw.get("reference_date")
        if isinstance(ref, str):
            try:
                ref = dt.date.fromisoformat(ref)
            except ValueError:
                raise ConfigError(f"[fhir] reference_date {ref!r} is not an ISO date (YYYY-MM-DD)") from None
        elif isinstance(ref, dt.datetime):
            ref = ref.date()
        elif ref is not None and not isinstance(ref, dt.date):
            raise ConfigError(f"[fhir] reference_date must be a date, got {ref!r}")
        clash = sorted(set(conditions) & set(observations))
        if clash:
            raise ConfigError(f"[fhir] column(s) {clash} are declared both as condition and observation")
        return cls(conditions=conditions, observations=observations, reference_date=ref)

    def columns(self) -> tuple[str, ...]:
        """Every column the connector produces, in order."""
        return ("bundle", "patient_id", "organization", "age", "sex", *self.conditions, *self.observations)
