"""What a task hash covers: every file that decides what runs on a site's data.

A :class:`TaskManifest` lists, with their sha256 digests, the files behind a task:

* an **installed task package** (any top-level package other than ``fedcare``): every file
  of its module tree (sources, shipped weight files, data files; ``__pycache__`` is left
  out), labelled by its path inside the package, plus the distribution's name and version;
* the **fedcare code it uses**: the transitive closure of the ``fedcare`` modules its
  sources import (found by reading their ``import`` statements, also those inside
  functions), so a change to the shared training loop (``fedcare/tasks/torch_common.py``)
  changes the hash of every task that trains with it;
* a **built-in task**: its own module and the same closure;
* **extra files** the task names through an optional ``hashed_files()`` method (e.g.
  pretrained weights kept outside the package);
* its **parameters** (``task.params()``).

The task hash is the sha256 of the manifest's canonical JSON. Labels are relative
(``fedcare/tasks/cnn.py``, ``my_task/weights.safetensors``), so the coordinator and every
site compute the same hash for the same files wherever they are installed. Digests are
cached by (path, size, mtime), so repeated hashing reads each file once.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from fedcare.errors import ConfigError

__all__ = ["MANIFEST_FORMAT", "ManifestDiff", "TaskManifest", "fedcare_closure", "task_manifest"]

#: Version tag of the manifest layout (part of the hashed JSON).
MANIFEST_FORMAT = "fedcare-task-manifest/1"

_SKIP_DIRS = {"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class ManifestDiff:
    """Files added, removed and modified between an approved manifest and an installed one."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    modified: tuple[str, ...]
    params_changed: bool = False
    version_changed: bool = False

    def __bool__(self) -> bool:
        """True when anything differs."""
        return bool(self.added or self.removed or self.modified or self.params_changed or self.version_changed)

    def describe(self, limit: int = 8) -> str:
        """One line: ``modified a.py, b.py; added w.bin; removed c.py; parameters changed``."""

        def names(items: tuple[str, ...]) -> str:
            shown = ", ".join(items[:limit])
            return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")

        parts = [
            f"{what} {names(items)}"
            for what, items in (("modified", self.modified), ("added", self.added), ("removed", self.removed))
            if items
        ]
        if self.params_changed:
            parts.append("parameters changed")
        if self.version_changed:
            parts.append("version changed")
        return "; ".join(parts) or "nothing differs"


@dataclass(frozen=True)
class TaskManifest:
    """The files, version and parameters one task hash stands for.

    Attributes
    ----------
    name : str
        The task's registry name.
    distribution : str
        The Python distribution that ships it (``fedcare`` for built-ins, or ``""`` for a
        module outside any installed distribution).
    version : str
        That distribution's version.
    params : Mapping[str, Any]
        The task's parameters (JSON values).
    files : Mapping[str, str]
        Relative label -> sha256 hex digest of every covered file.
    """

    name: str
    distribution: str
    version: str
    params: Mapping[str, Any]
    files: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready data (what is hashed, plus the format tag)."""
        return {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "params": dict(self.params),
            "files": dict(sorted(self.files.items())),
        }

    @property
    def digest(self) -> str:
        """The task hash: sha256 of the manifest's canonical JSON."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "manifest") -> TaskManifest:
        """Read a manifest written by :meth:`to_dict`, with a clear error for a malformed one."""
        if not isinstance(data, Mapping) or data.get("format") != MANIFEST_FORMAT:
            raise ConfigError(f"{where}: not a {MANIFEST_FORMAT} document")
        files = data.get("files")
        params = data.get("params")
        ok = isinstance(files, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in files.items()
        )
        if not ok or not isinstance(params, Mapping):
            raise ConfigError(f"{where}: 'files' must map labels to sha256 digests and 'params' must be a table")
        fields = [data.get(k) for k in ("name", "distribution", "version")]
        if not all(isinstance(v, str) for v in fields):
            raise ConfigError(f"{where}: 'name', 'distribution' and 'version' must be strings")
        assert isinstance(files, Mapping) and isinstance(params, Mapping)
        return cls(
            name=str(fields[0]),
            distribution=str(fields[1]),
            version=str(fields[2]),
            params=dict(params),
            files=dict(files),
        )

    def diff_from(self, approved: TaskManifest) -> ManifestDiff:
        """What changed from ``approved`` to this manifest."""
        old, new = approved.files, self.files
        return ManifestDiff(
            added=tuple(sorted(set(new) - set(old))),
            removed=tuple(sorted(set(old) - set(new))),
            modified=tuple(sorted(k for k in set(old) & set(new) if old[k] != new[k])),
            params_changed=json.dumps(dict(approved.params), sort_keys=True, default=str)
            != json.dumps(dict(self.params), sort_keys=True, default=str),
            version_changed=approved.version != self.version,
        )


@lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest(path: Path) -> str:
    try:
        st = path.stat()
        return _file_digest(str(path), st.st_size, st.st_mtime_ns)
    except OSError as exc:
        raise ConfigError(f"cannot read {path} for the task hash: {exc}") from None


@lru_cache(maxsize=4096)
def _imports(path: str, size: int, mtime_ns: int, module: str, is_package: bool) -> tuple[str, ...]:
    """Absolute names of every module ``path`` imports (also inside functions); ``X.Y`` for ``from X import Y``."""
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except SyntaxError:
        return ()
    package = module if is_package else module.rpartition(".")[0]
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join([*parts, base] if base else parts)
            out.append(base)
            out += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return tuple(out)


def _fedcare_root() -> Path:
    return Path(__file__).resolve().parent


def _module_path(root: Path, name: str) -> tuple[Path, bool] | None:
    """File of module ``name`` below the package at ``root`` (its top-level name), if it exists."""
    rel = name.split(".")[1:]
    base = root.joinpath(*rel) if rel else root
    if (base / "__init__.py").is_file():
        return base / "__init__.py", True
    if rel and base.with_suffix(".py").is_file():
        return base.with_suffix(".py"), False
    return None


def fedcare_closure(sources: Iterable[tuple[str, Path, bool]]) -> dict[str, Path]:
    """The ``fedcare`` modules that ``sources`` import, transitively, as label -> path.

    ``sources`` are (module name, file, is_package). Labels look like
    ``fedcare/tasks/torch_common.py``. Parent ``__init__`` files are included only
    when imported by name.
    """
    root = _fedcare_root()
    seen: dict[str, Path] = {}
    todo = list(sources)
    done: set[str] = set()
    while todo:
        module, path, is_package = todo.pop()
        if module in done:
            continue
        done.add(module)
        st = path.stat()
        for name in _imports(str(path), st.st_size, st.st_mtime_ns, module, is_package):
            if name != "fedcare" and not name.startswith("fedcare."):
                continue
            found = _module_path(root, name)
            if found is None:
                continue
            file, pkg = found
            label = "fedcare/" + file.relative_to(root).as_posix()
            if label not in seen:
                seen[label] = file
                todo.append((name, file, pkg))
    return seen


@lru_cache(maxsize=8)
def _packages_distributions(path: tuple[str, ...]) -> Mapping[str, list[str]]:
    return metadata.packages_distributions()  # keyed by sys.path: a package installed later is seen


#: (top-level name, sys.path) found in no distribution even after a fresh scan: not scanned
#: again (a task defined outside any package, e.g. in a test, would rescan on every node).
_NO_DISTRIBUTION: set[tuple[str, tuple[str, ...]]] = set()


def _distribution_of(top: str) -> tuple[str, str]:
    path = tuple(sys.path)
    found = _packages_distributions(path).get(top)
    if found is None and (top, path) not in _NO_DISTRIBUTION:  # perhaps installed since: look again once
        _packages_distributions.cache_clear()
        found = _packages_distributions(path).get(top)
        if found is None:
            _NO_DISTRIBUTION.add((top, path))
    found = found or []
    for dist in found:
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover - stale metadata
            continue
    return "", ""


def _tree(top_dir: Path, label_root: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in sorted(top_dir.rglob("*")):
        rel = path.relative_to(top_dir)
        if any(part in _SKIP_DIRS for part in rel.parts) or not path.is_file() or path.suffix in _SKIP_SUFFIXES:
            continue
        out[f"{label_root}/{rel.as_posix()}"] = path
    return out


def _python_sources(files: Mapping[str, Path], top: str) -> list[tuple[str, Path, bool]]:
    out = []
    for label, path in files.items():
        if path.suffix != ".py":
            continue
        parts = label.removesuffix(".py").split("/")
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        out.append((".".join(parts) if parts else top, path, is_package))
    return out


def _module_files(module_name: str) -> tuple[dict[str, Path], str, str]:
    """Files covering ``module_name`` (with the fedcare code they import), its distribution and version."""
    module = sys.modules.get(module_name)
    module_file = getattr(module, "__file__", None)
    top = module_name.split(".")[0]
    files: dict[str, Path] = {}
    if module_file is None:  # pragma: no cover - a class defined in an interactive session
        return files, "", ""
    path = Path(module_file)
    if top == "fedcare":
        files.update(fedcare_closure([(module_name, path, path.name == "__init__.py")]))
        files["fedcare/" + path.resolve().relative_to(_fedcare_root()).as_posix()] = path
        distribution, version = _distribution_of("fedcare")
        return files, distribution or "fedcare", version
    distribution, version = _distribution_of(top)
    if distribution:  # an installed package: its whole module tree (sources, weights, data files)
        top_file = getattr(sys.modules.get(top), "__file__", None) or module_file
        top_path = Path(top_file)
        own = _tree(top_path.parent, top) if top_path.name == "__init__.py" else {top_path.name: top_path}
        files.update(fedcare_closure(_python_sources(own, top)))
    else:  # a module outside any distribution (a script, a test): that file
        own = {path.name: path}
        files.update(fedcare_closure([(module_name, path, path.name == "__init__.py")]))
    files.update(own)
    return files, distribution, version


def task_manifest(task: Any) -> TaskManifest:
    """Collect the manifest of ``task``: package files, fedcare code it uses, extra files, params.

    The modules covered are the task class's and those the task names through an
    optional ``source_modules()`` method (an adapter such as
    :class:`~fedcare.tasks.torch_adapter.TorchTask` names the modules its user code came
    from). The distribution reported is the first one outside fedcare, if any.
    """
    modules = [type(task).__module__]
    named = getattr(task, "source_modules", None)
    if callable(named):
        modules += [m for m in named() if m not in modules]
    files: dict[str, Path] = {}
    distribution = version = ""
    for module_name in modules:
        found, dist, ver = _module_files(module_name)
        files.update(found)
        if dist and (not distribution or (distribution == "fedcare" and dist != "fedcare")):
            distribution, version = dist, ver
    extra = getattr(task, "hashed_files", None)
    if callable(extra):
        for label, path in dict(extra()).items():
            files[f"extra/{label}"] = Path(path)
    digests = {label: _digest(path) for label, path in files.items()}
    params = json.loads(json.dumps(dict(task.params()), sort_keys=True, default=str))
    return TaskManifest(name=task.name, distribution=distribution, version=version, params=params, files=digests)
