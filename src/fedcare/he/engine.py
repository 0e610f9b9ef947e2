"""OpenFheEngine: the :class:`~fedcare.secure.ckks.CkksBackend` that runs OpenFHE in a side process.

OpenFHE's Python bindings on PyPI are built for CPython 3.10 and 3.12 only (the wheel is
tagged ``py3-none-any`` but holds a ``cpython-310`` extension, and pybind11 refuses it on
3.11: "Python version mismatch: module was compiled for Python 3.10"). fedcare runs on
3.11, so each party starts :mod:`fedcare.he.worker` under an interpreter that has the
bindings and talks to it over a pipe: OpenFHE's own BINARY serialisation for every
object, a JSON header per call, never pickle. Secret key shares live in that process
only; this side holds opaque handles.

The interpreter is ``FEDCARE_OPENFHE_PYTHON``, else the current one when it can import
``openfhe``. ``make openfhe-env`` builds a side environment (``.venv-openfhe``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from fedcare.errors import ConfigError
from fedcare.secure.ckks import CkksEngineError, CkksParams

__all__ = ["OpenFheEngine", "find_openfhe_python"]

_WORKER = Path(__file__).with_name("worker.py")
_MAX_BLOB = 1 << 33  # 8 GiB: a corrupt length field must not allocate the machine


def find_openfhe_python() -> str | None:
    """The engine interpreter: ``$FEDCARE_OPENFHE_PYTHON``, ``./.venv-openfhe``, this one (with openfhe), or None."""
    env = os.environ.get("FEDCARE_OPENFHE_PYTHON", "").strip()
    if env:
        return env
    side = Path(".venv-openfhe") / "bin" / "python"  # `make openfhe-env` in the working directory
    if side.exists():
        return str(side.absolute())
    try:
        if importlib.util.find_spec("openfhe") is not None:
            return sys.executable
    except (ImportError, ValueError):
        pass
    return None


def _read_exact(stream: IO[bytes], n: int) -> bytes:
    buf = stream.read(n)
    if buf is None or len(buf) != n:
        raise CkksEngineError("the OpenFHE engine process ended")
    return buf


class OpenFheEngine:
    """Threshold CKKS through an OpenFHE engine process (started on first use, one per party or simulation).

    Parameters
    ----------
    params : CkksParams (default: CkksParams())
        Security level, scale and first modulus; every party must use the same.
    python : str or None (default: None)
        Interpreter with OpenFHE's bindings; ``None`` = :func:`find_openfhe_python`.
    """

    def __init__(self, params: CkksParams | None = None, *, python: str | None = None) -> None:
        self.params = params or CkksParams()
        self._python = python
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.info: dict[str, Any] = {}

    # -- process ---------------------------------------------------------------------

    def _start(self) -> subprocess.Popen[bytes]:
        python = self._python or find_openfhe_python()
        if not python:
            raise ConfigError(
                "CKKS aggregation needs OpenFHE's Python bindings, which PyPI builds for CPython 3.10/3.12 only: "
                "set FEDCARE_OPENFHE_PYTHON to such a Python with `pip install openfhe numpy` (make openfhe-env)"
            )
        try:
            proc = subprocess.Popen(
                [python, "-I", str(_WORKER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
            )
        except OSError as exc:
            raise ConfigError(f"cannot start the OpenFHE engine with {python!r}: {exc.strerror}") from None
        self._proc = proc
        header, _ = self._call_locked({"op": "init", "params": self.params.to_engine()}, [])
        self.info = {k: header[k] for k in ("ring_dim", "slots", "ckks_slots", "packing", "log_q") if k in header}
        return proc

    def close(self) -> None:
        """Stop the engine process (its secret key shares die with it)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin:
                proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout:
                proc.stdout.close()

    def __del__(self) -> None:  # best effort: do not leave engine processes behind
        try:
            self.close()
        except Exception:
            pass

    def _call(self, header: dict[str, Any], blobs: Sequence[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            return self._call_locked(header, blobs)

    def _call_locked(self, header: dict[str, Any], blobs: Sequence[bytes]) -> tuple[dict[str, Any], list[bytes]]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        raw = json.dumps(header).encode()
        try:
            proc.stdin.write(struct.pack("<I", len(raw)) + raw + struct.pack("<I", len(blobs)))
            for blob in blobs:
                proc.stdin.write(struct.pack("<Q", len(blob)))
                proc.stdin.write(blob)
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise CkksEngineError("the OpenFHE engine process ended") from None
        out = proc.stdout
        (hlen,) = struct.unpack("<I", _read_exact(out, 4))
        reply = json.loads(_read_exact(out, hlen))
        (count,) = struct.unpack("<I", _read_exact(out, 4))
        got = []
        for _ in range(count):
            (n,) = struct.unpack("<Q", _read_exact(out, 8))
            if n > _MAX_BLOB:
                raise CkksEngineError(f"engine reply blob of {n} bytes")
            got.append(_read_exact(out, n))
        if not reply.get("ok"):
            raise CkksEngineError(str(reply.get("error", "engine error")))
        return reply, got

    # -- CkksBackend -----------------------------------------------------------------

    @property
    def slots(self) -> int:
        """Values per ciphertext: the ring dimension under complex packing (two per slot), half of it under real."""
        if "slots" not in self.info:
            self._call({"op": "forget", "handle": ""}, [])  # starts the engine
        return int(self.info["slots"])

    def keygen(self, lead_public_key: bytes | None = None) -> tuple[str, bytes]:
        """A new secret key share (kept in the engine) and its public key; on ``lead_public_key``'s ``a`` if given."""
        header, blobs = self._call({"op": "keygen"}, [lead_public_key] if lead_public_key is not None else [])
        return str(header["handle"]), blobs[0]

    def join(self, public_keys: Sequence[bytes]) -> bytes:
        """The joint public key: the sum of the parties' public keys (public operation)."""
        if not public_keys:
            raise CkksEngineError("join: no public keys")
        return self._call({"op": "join"}, list(public_keys))[1][0]

    def encrypt(self, public_key: bytes, values: npt.NDArray[np.float64]) -> list[bytes]:
        """Encrypt ``values`` under ``public_key``, packed ``slots`` per ciphertext."""
        vec = np.ascontiguousarray(values, dtype="<f8")
        return self._call({"op": "encrypt"}, [public_key, vec.tobytes()])[1]

    def add(self, ciphertexts: Sequence[Sequence[bytes]]) -> list[bytes]:
        """Slot-wise sum of several parties' ciphertext lists (each the same length)."""
        m = len(ciphertexts[0]) if ciphertexts else 0
        if m == 0 or any(len(c) != m for c in ciphertexts):
            raise CkksEngineError("add: every party must send the same number of ciphertexts")
        return self._call({"op": "add", "per_party": m}, [b for c in ciphertexts for b in c])[1]

    def check(self, ciphertexts: Sequence[bytes]) -> None:
        """Raise CkksEngineError unless every blob is a fresh ciphertext of this context."""
        self._call({"op": "check"}, list(ciphertexts))

    def fold(self, acc: str | None, ciphertexts: Sequence[bytes]) -> str:
        """Check one party's ciphertexts and add them into the engine-held sum ``acc`` (a new one if None)."""
        return str(self._call({"op": "fold", "acc": acc or ""}, list(ciphertexts))[0]["acc"])

    def take(self, acc: str) -> list[bytes]:
        """The engine-held sum's ciphertexts (the handle is dropped)."""
        return self._call({"op": "take", "acc": acc}, [])[1]

    def partial_decrypt(self, handle: str, ciphertexts: Sequence[bytes], *, lead: bool) -> list[bytes]:
        """The decryption shares of ``ciphertexts`` by the holder of ``handle`` (OpenFHE smudges them)."""
        return self._call({"op": "partial", "handle": handle, "lead": lead}, list(ciphertexts))[1]

    def fuse(self, partials: Sequence[Sequence[bytes]], length: int) -> npt.NDArray[np.float64]:
        """Combine every party's decryption shares into the first ``length`` plaintext values."""
        m = len(partials[0]) if partials else 0
        if m == 0 or any(len(p) != m for p in partials):
            raise CkksEngineError("fuse: every party must send the same number of decryption shares")
        blob = self._call({"op": "fuse", "per_party": m, "length": int(length)}, [b for p in partials for b in p])[1][0]
        return np.frombuffer(blob, dtype="<f8").astype(np.float64)

    def forget(self, handle: str) -> None:
        """Drop a secret key share (after its one decryption) or a running sum."""
        self._call({"op": "forget", "handle": handle}, [])
