"""Synthetic FHIR R4 sites for a study with meaningful numbers: ``fedcare data synth-fhir``.

Ten Synthea bundles prove the FHIR path, not the model. This writes a few thousand
synthetic patients as FHIR R4 transaction Bundles (one per patient, one folder per site),
a ready ``study.toml`` (hypertension from age, sex, BMI and systolic pressure) and one
``site.toml`` per site, so ``data check``, ``stats``, ``simulate`` and ``up`` run on them
unchanged.

The patients come from `carebundle <https://pypi.org/project/carebundle/>`_ (Apache-2.0,
pure Python, offline, byte-identical output for a seed; the optional extra ``synth``).
carebundle draws each patient's clinical profile (healthy, hypertension, type 2 diabetes,
CKD stage 3) by a prevalence mix, then coherent values from that profile: systolic
pressure carries the hypertension signal, BMI a little, and age none within a cohort
(carebundle's hypertension does not depend on age). The sites differ on purpose, as
hospitals do: site ``k`` of ``n`` serves an older population with a larger share of
hypertensive patients (age 30-55 and 20 % hypertension profile at the first site,
60-85 and 40 % at the last), so age relates to the diagnosis across sites only. The
numbers describe carebundle's model of a visit, not a real population (docs/study.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcare.errors import ConfigError
from fedcare.study.toml import dump_toml

__all__ = ["REFERENCE_DATE", "SynthSite", "SyntheticFhir", "site_mix", "study_table", "write_synthetic_fhir"]

#: carebundle's visit date (its DEFAULT_REFERENCE_DATE): ages and "latest" values are taken here.
REFERENCE_DATE = "2026-01-01"
#: The fewest patients a site may get (its rows are split into training and test).
MIN_PER_SITE = 10
MAX_SITES = 26
EXTRA_HINT = "pip install 'fedcare[synth]'"


@dataclass(frozen=True)
class SynthSite:
    """One synthetic site: its id, patients, age range, profile mix and carebundle seed."""

    site_id: str
    patients: int
    age_range: tuple[int, int]
    prevalence: Mapping[str, float]
    seed: int


@dataclass
class SyntheticFhir:
    """What :func:`write_synthetic_fhir` wrote, and how long the generator took per site."""

    out: Path
    study: Path
    site_files: list[Path]
    sites: list[SynthSite]
    hypertensive: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    generator: str = ""


def site_mix(k: int, n: int, patients: int, seed: int) -> SynthSite:
    """Site ``k`` of ``n``: older and more often hypertensive the larger ``k`` (see the module doc)."""
    t = k / (n - 1) if n > 1 else 0.5
    ages = (round(30 + 30 * t), round(55 + 30 * t))
    prevalence = {
        "healthy": round(0.60 - 0.25 * t, 4),
        "hypertension": round(0.20 + 0.20 * t, 4),
        "type2_diabetes": 0.15,
        "ckd_stage3": round(0.05 + 0.05 * t, 4),
    }
    # distinct carebundle seeds per site and per study seed: no patient appears at two sites
    return SynthSite(f"site-{chr(ord('a') + k)}", patients, ages, prevalence, seed * 1009 + k)


def study_table(name: str, *, rounds: int = 20, min_sites: int = 2) -> dict[str, Any]:
    """The study: hypertension (ICD-10-CM I10 or SNOMED 38341003) from age, sex, BMI and systolic pressure."""
    return {
        "study": {
            "name": name,
            "description": "synthetic FHIR R4 patients (carebundle) at several sites, hypertension",
            "seed": 0,
        },
        "task": {"name": "logreg"},
        "data": {
            "target": "hypertension",
            "test_fraction": 0.3,
            "split_seed": 0,
            "normalization": "federated",
            "columns": {
                "age": {"type": "number", "min": 0, "max": 120},
                "sex": {"type": "category", "codes": ["female", "male"]},
                "bmi": {"type": "number", "min": 10, "max": 80},
                "systolic_bp": {"type": "number", "min": 50, "max": 250},
                "hypertension": {"type": "boolean"},
            },
            "fhir": {
                "reference_date": REFERENCE_DATE,
                "conditions": {
                    "hypertension": ["http://hl7.org/fhir/sid/icd-10-cm|I10", "http://snomed.info/sct|38341003"]
                },
                "observations": {"bmi": {"code": "39156-5", "unit": "kg/m2"}, "systolic_bp": "8480-6"},
            },
        },
        "strategy": {"name": "fedavg"},
        "federation": {"rounds": rounds, "min_sites": min_sites, "round_timeout_s": 300},
        "fit": {"optimizer": "sgd", "lr": 0.1, "batch_size": 32, "local_epochs": 1},
        "baseline": {"optimizer": "sgd", "lr": 0.1, "batch_size": 32, "local_epochs": 20},
    }


def _has_i10(bundle: Any) -> bool:
    """Whether a generated bundle holds a Condition coded ICD-10-CM I10 (for the summary line)."""
    for entry in bundle.entry or []:
        res = entry.resource  # carebundle keeps entry resources as FHIR JSON dicts
        if isinstance(res, dict) and res.get("resourceType") == "Condition":
            if any(c.get("code") == "I10" for c in (res.get("code") or {}).get("coding", [])):
                return True
    return False


def _carebundle() -> Any:
    try:
        import carebundle
    except ImportError:
        raise ConfigError(f"synthetic FHIR patients need the 'carebundle' package: {EXTRA_HINT}") from None
    return carebundle


def write_synthetic_fhir(
    out: Path,
    *,
    patients: int,
    sites: int,
    seed: int,
    rounds: int = 20,
    name: str = "synthetic-fhir-htn",
    on_site: Callable[[SynthSite, int, float], None] | None = None,
) -> SyntheticFhir:
    """Write ``patients`` synthetic patients over ``sites`` sites, the study file and the site files to ``out``.

    Parameters
    ----------
    out : Path
        A new or empty folder; gets ``study.toml``, ``site-a.toml`` … and ``site-a/*.json`` ….
    patients, sites : int
        Patients in all (shared out evenly) and sites (1 to 26, at least 10 patients each).
    seed : int
        Same seed, same bundles (byte for byte).
    rounds : int (default: 20)
        ``[federation] rounds`` of the study file.
    on_site : callable or None
        Called with (site, hypertensive patients, seconds) when a site is written.

    Raises
    ------
    ConfigError
        Bad counts, a non-empty ``out``, or carebundle not installed (naming the extra).
    """
    if not 1 <= sites <= MAX_SITES:
        raise ConfigError(f"--sites must be 1 to {MAX_SITES}, got {sites}")
    if patients < MIN_PER_SITE * sites:
        raise ConfigError(f"--patients {patients} is too few for {sites} site(s): at least {MIN_PER_SITE} per site")
    if seed < 0:
        raise ConfigError(f"--seed must be 0 or more, got {seed}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not an empty folder; give a new --out")
    carebundle = _carebundle()
    out.mkdir(parents=True, exist_ok=True)
    share, extra = divmod(patients, sites)
    plan = [site_mix(k, sites, share + (k < extra), seed) for k in range(sites)]
    result = SyntheticFhir(
        out=out, study=out / "study.toml", site_files=[], sites=plan, generator=f"carebundle {carebundle.__version__}"
    )
    for site in plan:
        started = time.perf_counter()
        folder = out / site.site_id
        folder.mkdir()
        bundles = carebundle.generate_cohort(
            count=site.patients,
            seed=site.seed,
            prevalence=dict(site.prevalence),
            sex="mixed",
            age_range=site.age_range,
            panels=(),  # the study reads vital signs and conditions, not the laboratory panels
        )
        hypertensive = 0
        for i, bundle in enumerate(bundles):
            hypertensive += _has_i10(bundle)
            text = carebundle.to_json(bundle, indent=None)  # type: ignore[arg-type]  # compact: a third of the size
            (folder / f"patient-{i:05d}.json").write_text(text, encoding="utf-8")
        seconds = time.perf_counter() - started
        result.hypertensive[site.site_id] = hypertensive
        result.seconds[site.site_id] = seconds
        site_file = out / f"{site.site_id}.toml"
        site_file.write_text(
            f"# synthetic site {plan.index(site) + 1} of {sites}: {site.patients} patients aged {site.age_range[0]}-"
            f"{site.age_range[1]}, profile mix {dict(site.prevalence)} ({result.generator}, seed {site.seed})\n"
            + dump_toml({"site": {"id": site.site_id}, "data": {"kind": "fhir", "path": site.site_id}}),
            encoding="utf-8",
        )
        result.site_files.append(site_file)
        if on_site is not None:
            on_site(site, hypertensive, seconds)
    runs = " ".join(f"--site {p.name}" for p in result.site_files)
    result.study.write_text(
        f"# {patients} synthetic patients at {sites} site(s) ({result.generator}, seed {seed}):\n"
        f"#   fedcare data check --config {result.site_files[0].name} --study study.toml\n"
        f"#   fedcare simulate --study study.toml {runs}\n"
        + dump_toml(study_table(name, rounds=rounds, min_sites=min(sites, 2))),
        encoding="utf-8",
    )
    return result
