"""FHIR R4 connector: a folder of Bundle JSON files -> one row per patient.

Each ``*.json`` file is parsed and validated with ``fhir.resources``. fhir.resources 8.x
ships FHIR R5 as its default package and R4B (4.3.0) as ``fhir.resources.R4B``; there is
no separate R4 package any more. R4B changed none of the resources this connector reads
(Bundle, Patient, Condition, Observation, Encounter, Organization) in a way that affects
R4 content, so R4 bundles (e.g. Synthea's) validate against ``fhir.resources.R4B``.

The study config declares the mapping from codes to columns::

    [fhir]
    reference_date = "2021-06-01"          # age and "latest" are taken at this date
    [fhir.conditions]                      # column = codes, "system|code" or a bare code
    hypertension = ["http://snomed.info/sct|38341003", "http://hl7.org/fhir/sid/icd-10-cm|I10"]
    [fhir.observations]                    # column = LOINC code, or {code, unit}
    bmi = { code = "39156-5", unit = "kg/m2" }
    systolic_bp = "8480-6"                 # matched in Observation.component too

Each patient row holds ``bundle`` (the file name), ``patient_id``, ``organization`` (the Organization most of the
patient's encounters name as service provider; the bundle's first Organization
otherwise), ``age`` (completed years at the reference date, or at death), ``sex``
(``Patient.gender``), one 0/1 column per declared condition (recorded with onset on or
before the reference date, or without onset) and one column per declared observation
(the latest value on or before the reference date).

References are resolved as FHIR R4 says for a Bundle (bundle.html#references): a
reference equal to an entry's ``fullUrl`` (``urn:uuid:…``, ``urn:oid:…`` or an absolute
URL) is that entry; a relative ``Patient/<id>`` is looked up against the base of the
referring entry's RESTful ``fullUrl`` and otherwise by type and id; a conditional
``Organization?identifier=system|value`` by identifier; a version (``/_history/<v>``)
is ignored. A patient's id is its ``Patient.id``, or the uuid of its ``urn:uuid:``
``fullUrl`` when a transaction bundle leaves the id out.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedcare.data.fhir_mapping import FhirMapping, ObservationCode
from fedcare.data.schema import CheckReport

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FhirMapping", "ObservationCode", "read_bundles"]

#: Validation errors quoted per file before "and N more".
_MAX_ERRORS = 10


def _as_date(value: Any) -> dt.date | None:
    """A FHIR date/dateTime (parsed or partial text) as a date; ``None`` when absent."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value)
    for size, fmt in ((10, "%Y-%m-%d"), (7, "%Y-%m"), (4, "%Y")):
        try:
            return dt.datetime.strptime(text[:size], fmt).date()
        except ValueError:
            continue
    return None


def _years(born: dt.date, at: dt.date) -> int:
    return at.year - born.year - ((at.month, at.day) < (born.month, born.day))


def _codes(concept: Any) -> list[tuple[str | None, str]]:
    if concept is None or not concept.coding:
        return []
    return [(c.system, c.code) for c in concept.coding if c.code]


def _matches(codes: list[tuple[str | None, str]], wanted: tuple[str, ...]) -> bool:
    for system, code in codes:
        for w in wanted:
            if "|" in w:
                ws, wc = w.rsplit("|", 1)
                if ws == system and wc == code:
                    return True
            elif w == code:
                return True
    return False


_ABSOLUTE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|urn:)")
_RESTFUL = re.compile(r"^(?P<base>.+)/(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})$")
_RELATIVE = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})$")
_HISTORY = re.compile(r"/_history/[^/]*$")


class _BundleIndex:
    """Where a ``Reference.reference`` points inside one Bundle (FHIR R4 bundle.html#references)."""

    def __init__(self, entries: list[Any]) -> None:
        self.urls: dict[str, int] = {}
        self.typed: dict[tuple[str, str], int] = {}
        self.identified: dict[tuple[str, str, str], int] = {}
        self.full_urls: list[str | None] = []
        for i, entry in enumerate(entries):
            res, url = entry.resource, entry.fullUrl
            self.full_urls.append(url)
            if url:
                self.urls.setdefault(_HISTORY.sub("", url), i)
            kind = res.get_resource_type()
            if res.id:
                self.typed.setdefault((kind, res.id), i)
            idents = getattr(res, "identifier", None) or []
            for ident in idents if isinstance(idents, list) else [idents]:  # 0..1 in some resources
                if getattr(ident, "value", None):
                    self.identified.setdefault((kind, ident.system or "", ident.value), i)

    def resolve(self, reference: Any, referrer: int) -> int | None:
        """The entry index ``reference`` (a Reference) points to from entry ``referrer``; None if not in the bundle."""
        ref = getattr(reference, "reference", None)
        if not ref:
            return None
        ref = _HISTORY.sub("", ref)
        if _ABSOLUTE.match(ref):  # urn:uuid, urn:oid or an absolute URL: only an entry with that fullUrl
            return self.urls.get(ref)
        if "?" in ref:  # a conditional reference of a transaction: Type?identifier=system|value
            kind, _, query = ref.partition("?")
            key, _, value = query.partition("=")
            if key != "identifier" or not value:
                return None
            system, _, code = value.rpartition("|")
            return self.identified.get((kind, system, code))
        relative = _RELATIVE.match(ref)
        if relative is None:
            return None
        base = _RESTFUL.match(self.full_urls[referrer] or "")
        if base is not None:  # relative to the RESTful base of the referring entry
            found = self.urls.get(f"{base['base']}/{ref}")
            if found is not None:
                return found
        return self.typed.get((relative["type"], relative["id"]))


def _patient_id(res: Any, url: str | None, name: str, i: int) -> str:
    """``Patient.id``; else the uuid of a ``urn:uuid:`` fullUrl, the fullUrl itself, or bundle and entry."""
    if res.id:
        return str(res.id)
    if url:
        return url[len("urn:uuid:") :] if url.startswith("urn:uuid:") else url
    return f"{name}#{i}"


@dataclass
class _Patient:
    row: dict[str, Any]
    obs_dates: dict[str, dt.date]
    providers: Counter[int]


def _parse_bundle(path: Path, report: CheckReport) -> Any | None:
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:  # bad UTF-8 and JSON syntax are ValueErrors
        report.add(path.name, "", f"is not readable JSON: {str(exc)[:200]}")
        return None
    if not isinstance(raw, dict) or raw.get("resourceType") != "Bundle":
        got = raw.get("resourceType") if isinstance(raw, dict) else type(raw).__name__
        report.add(path.name, "", f"is not a FHIR Bundle (resourceType {got!r})")
        return None
    try:
        bundle = Bundle.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        for err in errors[:_MAX_ERRORS]:
            loc = ".".join(str(x) for x in err["loc"])
            report.add(path.name, loc, f"{err['msg']} (FHIR R4 validation)")
        if len(errors) > _MAX_ERRORS:
            report.add(path.name, "", f"{len(errors) - _MAX_ERRORS} more FHIR validation error(s)")
        return None
    except Exception as exc:  # noqa: BLE001 - fhir.resources raises KeyError/TypeError for some malformed input
        reason = " ".join(str(exc).split())[:200]
        report.add(path.name, "", f"is not a valid FHIR R4 Bundle ({type(exc).__name__}: {reason})")
        return None
    ok = True
    if not bundle.type:  # 1..1 in FHIR R4; checked here in case the model lets it through
        report.add(path.name, "type", "required field is missing")
        ok = False
    for i, entry in enumerate(bundle.entry or []):
        if entry.resource is None:
            report.add(path.name, f"entry.{i}", "has no resource")
            ok = False
    return bundle if ok else None


def read_bundles(folder: Path, mapping: FhirMapping, report: CheckReport, *, needs: frozenset[str]) -> pd.DataFrame:
    """Read every ``*.json`` Bundle in ``folder`` into one row per patient.

    Parameters
    ----------
    folder : Path
        Folder of Bundle JSON files (not searched recursively).
    mapping : FhirMapping
        The study's code mapping.
    report : CheckReport
        Unreadable files, FHIR validation errors and missing required fields are recorded
        here, each with its file name and location (``entry.13.resource.status``).
    needs : frozenset[str]
        Columns the study uses: a Patient without ``birthDate`` is a problem when
        ``age`` is needed, without ``gender`` when ``sex`` is needed.

    Returns
    -------
    pandas.DataFrame
        Columns :meth:`FhirMapping.columns`; patients of unusable bundles are left out.
    """
    import pandas as pd  # the connector's own library, imported when bundles are read (not with the study file)

    ref = mapping.reference_date or dt.datetime.now(dt.UTC).date()
    if not folder.is_dir():
        report.add(folder.name, "", f"is not a folder of FHIR bundles ({folder})")
        return pd.DataFrame(columns=list(mapping.columns()))
    files = sorted(folder.glob("*.json"))
    if not files:
        report.add(folder.name, "", "holds no *.json bundle")
    rows: list[dict[str, Any]] = []
    seen: dict[str, str] = {}  # patient id -> the bundle it was first read from
    for path in files:
        bundle = _parse_bundle(path, report)
        if bundle is None:
            continue
        for row in _patients_of(bundle, path.name, mapping, ref, report, needs):
            first = seen.setdefault(row["patient_id"], path.name)
            if first != path.name:  # the same person exported twice would count twice
                report.add(path.name, f"Patient {row['patient_id']}", f"is also in bundle {first}: counted once only")
                continue
            rows.append(row)
        report.sources[path.name] = len(rows)
    frame = pd.DataFrame(rows, columns=list(mapping.columns()))
    for col in mapping.observations:
        frame[col] = frame[col].astype(np.float64)
    return frame


def _patients_of(
    bundle: Any, name: str, mapping: FhirMapping, ref: dt.date, report: CheckReport, needs: frozenset[str]
) -> list[dict[str, Any]]:
    entries = [e for e in bundle.entry or [] if e.resource is not None]
    index = _BundleIndex(entries)
    organizations: dict[int, str] = {}
    patients: dict[int, _Patient] = {}
    for i, entry in enumerate(entries):
        res = entry.resource
        kind = res.get_resource_type()
        if kind == "Organization":
            organizations[i] = res.name or res.id or ""
        elif kind == "Patient":
            pid = _patient_id(res, entry.fullUrl, name, i)
            born = _as_date(res.birthDate)
            died = _as_date(res.deceasedDateTime)
            if born is None and "age" in needs:
                report.add(name, f"Patient {pid}", "has no birthDate (needed for 'age')")
            if not res.gender and "sex" in needs:
                report.add(name, f"Patient {pid}", "has no gender (needed for 'sex')")
            age = _years(born, min(ref, died) if died else ref) if born else None
            row: dict[str, Any] = {
                "bundle": name,
                "patient_id": pid,
                "organization": None,
                "age": age,
                "sex": res.gender,
            }
            row.update(dict.fromkeys(mapping.conditions, 0))
            row.update(dict.fromkeys(mapping.observations, np.nan))
            patients[i] = _Patient(row, {}, Counter())
    if not patients:
        report.add(name, "", "holds no Patient resource")
        return []
    only = next(iter(patients)) if len(patients) == 1 else None
    for i, entry in enumerate(entries):
        res = entry.resource
        kind = res.get_resource_type()
        if kind not in ("Condition", "Observation", "Encounter"):
            continue
        subject = getattr(res.subject, "reference", None)
        target = index.resolve(res.subject, i) if subject else only
        patient = patients.get(target) if target is not None else None
        if patient is None:
            report.add(name, _where(i, kind, res, entry), f"refers to unknown patient {subject!r}")
            continue
        if kind == "Encounter":
            org = index.resolve(res.serviceProvider, i)
            if org in organizations:
                patient.providers[org] += 1
        elif kind == "Condition":
            onset = _as_date(res.onsetDateTime)
            if onset is not None and onset > ref:
                continue
            codes = _codes(res.code)
            for col, wanted in mapping.conditions.items():
                if _matches(codes, wanted):
                    patient.row[col] = 1
        else:
            _observation(res, _where(i, kind, res, entry), name, mapping, ref, patient, report)
    out = []
    for patient in patients.values():
        named = [organizations[o] for o, _ in patient.providers.most_common()]
        patient.row["organization"] = named[0] if named else next(iter(organizations.values()), None)
        out.append(patient.row)
    return out


def _where(i: int, kind: str, res: Any, entry: Any) -> str:
    """``entry.13 (Observation <id or fullUrl>)``: where in a bundle a problem is."""
    return f"entry.{i} ({kind} {res.id or entry.fullUrl or '(no id)'})"


def _observation(
    res: Any, where: str, name: str, mapping: FhirMapping, ref: dt.date, patient: _Patient, report: CheckReport
) -> None:
    when = _as_date(res.effectiveDateTime) or _as_date(getattr(res.effectivePeriod, "start", None))
    when = when or _as_date(res.issued)
    if when is None or when > ref:
        return
    parts = [(res.code, res.valueQuantity)] + [(c.code, c.valueQuantity) for c in res.component or []]
    for col, spec in mapping.observations.items():
        for concept, quantity in parts:
            if not any(
                code == spec.code and (spec.system is None or system == spec.system) for system, code in _codes(concept)
            ):
                continue
            if quantity is None or quantity.value is None:
                report.add(name, where, f"code {spec.code} for {col!r} has no valueQuantity")
                continue
            if spec.unit is not None and quantity.code not in (spec.unit, None) and quantity.unit != spec.unit:
                report.add(
                    name,
                    where,
                    f"{col!r} in unit {quantity.code or quantity.unit!r}, the study expects {spec.unit!r}",
                )
                continue
            last = patient.obs_dates.get(col)
            if last is None or when >= last:
                patient.row[col] = float(quantity.value)
                patient.obs_dates[col] = when
