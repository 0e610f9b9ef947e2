"""The studies shipped with fedcare (the demos), and finding a study by file or by name."""

from __future__ import annotations

from pathlib import Path

from fedcare.errors import ConfigError
from fedcare.study.spec import StudySpec, load_study

__all__ = ["BUILTIN_STUDIES", "builtin_study_path", "resolve_study"]

_FOLDER = Path(__file__).resolve().parent.parent / "studies"
#: Names of the shipped studies: ``fedcare demo --dataset NAME`` and ``--study NAME``.
BUILTIN_STUDIES = ("heart-disease", "pneumonia", "tcga-brca")


def builtin_study_path(name: str) -> Path:
    """The shipped study file called ``name``."""
    if name not in BUILTIN_STUDIES:
        raise ConfigError(f"unknown built-in study {name!r}; available: {', '.join(BUILTIN_STUDIES)}")
    return _FOLDER / f"{name}.toml"


def resolve_study(text: str | Path) -> StudySpec:
    """A study file by path, or a shipped study by name (``heart-disease``)."""
    path = Path(text)
    if path.exists() or path.suffix == ".toml" or str(text) not in BUILTIN_STUDIES:
        if not path.exists() and str(text) not in BUILTIN_STUDIES and path.suffix != ".toml":
            raise ConfigError(
                f"{text}: no such study file, nor a built-in study (built in: {', '.join(BUILTIN_STUDIES)})"
            )
        return load_study(path)
    return load_study(builtin_study_path(str(text)))
