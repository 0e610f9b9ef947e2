"""Mask expansion: AES-128-CTR keystream read as ring elements with numpy.

A mask is the AES-CTR keystream of a 16-byte seed (zero IV) viewed as ``uint32`` (or
``uint64``) words: a PRG that is indistinguishable from uniform under AES's PRP
assumption, as Bonawitz et al. (CCS 2017) require of ``PRG(b_u)`` and ``PRG(s_uv)``.
The keystream is written straight into a reusable buffer (``update_into``) and added or
subtracted in place: no per-element Python work, two passes over memory per mask.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["MaskExpander"]

_IV = bytes(16)
_BLOCK = 16
_local = threading.local()


@lru_cache(maxsize=4)
def _zeros(nbytes: int) -> bytes:
    """Shared read-only plaintext of zeros (CTR keystream = encryption of zeros)."""
    return bytes(nbytes)


def _scratch(nbytes: int) -> bytearray:
    """A per-thread keystream buffer, reused across masks and rounds (no page faults per mask)."""
    buf: bytearray | None = getattr(_local, "buf", None)
    if buf is None or len(buf) < nbytes:
        buf = bytearray(nbytes)
        _local.buf = buf
    return buf


class MaskExpander:
    """Expand seeds into masks and add them to a vector, reusing one scratch buffer.

    Parameters
    ----------
    size : int
        Number of ring elements in a mask.
    dtype : numpy unsigned dtype
        ``np.uint32`` or ``np.uint64``.
    """

    def __init__(self, size: int, dtype: type[np.unsignedinteger[Any]]) -> None:
        self.size = int(size)
        self.dtype = np.dtype(dtype)
        self._nbytes = self.size * self.dtype.itemsize
        self._zeros = _zeros(self._nbytes)
        self._buf = _scratch(self._nbytes + _BLOCK - 1)
        self._view = np.frombuffer(self._buf, dtype=self.dtype, count=self.size)

    def expand(self, seed: bytes) -> npt.NDArray[Any]:
        """Return the mask of ``seed`` (a view into the scratch buffer: copy to keep it)."""
        if len(seed) != 16:
            raise ValueError(f"mask seeds are 16 bytes, got {len(seed)}")
        enc = Cipher(algorithms.AES(seed), modes.CTR(_IV)).encryptor()
        enc.update_into(self._zeros, self._buf)
        return self._view

    def apply(self, target: npt.NDArray[Any], seed: bytes, sign: int) -> None:
        """``target += sign * PRG(seed)`` in the ring (wrap-around arithmetic), in place."""
        mask = self.expand(seed)
        if sign > 0:
            np.add(target, mask, out=target)
        else:
            np.subtract(target, mask, out=target)
