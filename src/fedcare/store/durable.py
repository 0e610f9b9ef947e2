"""Durable file writes for stored artefacts (checkpoints, site memory)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_durably"]


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` all or nothing: a temporary file, fsynced, renamed over it.

    A crash (even SIGKILL) leaves either the old file or the new one, never a torn one.
    Raises ``OSError`` as ``open``/``os.replace`` do; callers name the artefact.
    """
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
