"""A site's per-run memory on its own disk, so a restarted node keeps it.

SCAFFOLD's control variate ``c_i``, FedBN/FedPer local entries and Ditto's personal
model live in :attr:`fedcare.runtime.node.SiteNode.site_state` and never leave the site.
A deployed node writes that memory after each instruction that changed it: one
safetensors file per run (records flattened as ``<record>/<entry>``), written to a
temporary file, fsynced and renamed, with the sha256 of its arrays in its metadata. A
restarted node reads it back on the run's next instruction instead of starting from
zero; a file that fails its checks is set aside as ``*.corrupt`` with a one-line
warning (nothing is deleted) and the run continues with fresh memory at this site.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedcare.errors import SerdeError, StoreError
from fedcare.serde import decode_state, encode_state, read_metadata
from fedcare.store.durable import write_durably
from fedcare.types import ModelState, RunId

__all__ = ["SiteMemoryFiles"]

log = logging.getLogger(__name__)

_RUN_KEY = "fedcare.site_memory.run_id"
_SHA_KEY = "fedcare.site_memory.sha256"


def _arrays_sha256(flat: Mapping[str, np.ndarray]) -> str:
    """sha256 over each entry's name, dtype, shape and little-endian bytes, in order."""
    h = hashlib.sha256()
    for name, arr in flat.items():
        a = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        h.update(f"{name}\0{a.dtype.str}\0{a.shape}\0".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


class SiteMemoryFiles:
    """One safetensors file per run under ``folder`` (created on first write)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, run_id: RunId) -> Path:
        """The file of ``run_id``: a readable, filesystem-safe name plus a short hash of the id."""
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)[:80]
        tag = hashlib.sha256(run_id.encode()).hexdigest()[:12]
        return self.folder / f"{safe}-{tag}.safetensors"

    def save(self, run_id: RunId, memory: Mapping[str, ModelState]) -> None:
        """Write ``memory`` atomically (temp file, fsync, rename); an empty memory writes nothing."""
        if any("/" in record or not record for record in memory):
            raise StoreError(f"site memory of run {run_id!r}: record names must be non-empty, without '/'")
        flat = {f"{record}/{key}": arr for record, state in memory.items() for key, arr in state.items()}
        if not flat:
            return
        blob = encode_state(flat, metadata={_RUN_KEY: run_id, _SHA_KEY: _arrays_sha256(flat)})
        path = self.path(run_id)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_durably(path, blob)
        except OSError as exc:
            raise StoreError(f"site memory of run {run_id!r}: cannot write {path} ({exc.strerror or exc})") from None

    def load(self, run_id: RunId) -> dict[str, ModelState]:
        """The memory saved for ``run_id``; empty when there is none or its file fails its checks."""
        path = self.path(run_id)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"site memory of run {run_id!r}: cannot read {path} ({exc.strerror or exc})") from None
        try:
            memory = self._decode(blob, run_id, where=f"site memory {path}")
        except SerdeError as exc:
            aside = path.with_suffix(".corrupt")
            n = 1
            while aside.exists():  # an earlier damaged copy stays too
                n += 1
                aside = path.with_suffix(f".corrupt-{n}")
            try:
                os.replace(path, aside)
            except OSError as err:
                raise StoreError(f"{exc}; and it cannot be set aside ({err.strerror or err})") from None
            log.warning("%s; set aside as %s, this site starts run %s with fresh memory", exc, aside.name, run_id)
            return {}
        log.info("site memory of run %s restored from %s (%d records)", run_id, path, len(memory))
        return memory

    @staticmethod
    def _decode(blob: bytes, run_id: RunId, *, where: str) -> dict[str, ModelState]:
        flat = decode_state(blob, where=where)
        meta = read_metadata(blob)
        if meta.get(_RUN_KEY) != run_id:
            raise SerdeError(f"{where}: belongs to run {meta.get(_RUN_KEY, '?')[:80]!r}, not {run_id!r}")
        if meta.get(_SHA_KEY) != _arrays_sha256(flat):
            raise SerdeError(f"{where}: sha256 mismatch, the file was modified or damaged")
        memory: dict[str, ModelState] = {}
        for name, arr in flat.items():
            record, sep, key = name.partition("/")
            if not sep or not record or not key:
                raise SerdeError(f"{where}: entry {name[:80]!r} is not '<record>/<entry>'")
            memory.setdefault(record, {})[key] = np.array(arr)  # writable, owns its memory
        return memory
