"""Checks a command makes on where it will write, BEFORE any training: output folder and store.

A command that trains for minutes must not find out at the end that its output folder
is a file, is not writable, or already holds another run's report (which it would
silently overwrite), nor that its SQLite store cannot be created. These checks only
look; they create nothing, so a refused command leaves the disk exactly as it was.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedcare.errors import ConfigError, StoreError

__all__ = ["check_db_url", "check_out_dir"]


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable_parent(path: Path, what: str) -> None:
    base = _nearest_existing(path)
    if not base.is_dir():
        raise ConfigError(f"{what} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path}: cannot create it, {base} is not writable")


def check_out_dir(out_dir: Path, *, force: bool) -> Path | None:
    """Check that the run can write into ``out_dir``; return it if the run will create it.

    Raises
    ------
    ConfigError
        ``out_dir`` is a file, cannot be created or written, or already holds files
        (refused unless ``force``: an earlier run's report would be overwritten).
    """
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError(f"output folder {out_dir} is a file")
        if not os.access(out_dir, os.W_OK | os.X_OK):
            raise ConfigError(f"output folder {out_dir} is not writable")
        if any(out_dir.iterdir()) and not force:
            raise ConfigError(
                f"output folder {out_dir} is not empty (an earlier run's files would be overwritten); "
                "choose another --out or pass --force"
            )
        return None
    _writable_parent(out_dir, "output folder")
    return out_dir


def check_db_url(url: str) -> None:
    """Check that a SQLite store can be opened or created; other URLs are checked when opened.

    Raises
    ------
    StoreError
        The SQLite file is a folder, or it does not exist and its folder cannot be created.
    """
    if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:///:memory:"):
        return
    path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    if path.exists():
        if path.is_dir():
            raise StoreError(f"store {path} is a folder, not a SQLite file")
        if not os.access(path, os.R_OK | os.W_OK):
            raise StoreError(f"store {path} cannot be read and written")
        return
    try:
        _writable_parent(path, "store")
    except ConfigError as exc:
        raise StoreError(str(exc)) from None
