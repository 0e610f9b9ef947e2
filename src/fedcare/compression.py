"""Compressed updates: a codec between a site's update and the wire.

A site that is asked to compress (fit config key ``compression``) sends, instead of
its full model, one record ``"compressed"`` that encodes the update
``Δ = w_local - w_global`` of every floating entry (the other entries travel as they
are); the Coordinator decodes it against the model it sent that site and folds
``w_global + Δ̂`` like any other reply, so every strategy works unchanged.

Codecs (all over the update flattened in model order, float32):

* ``q8`` / ``q4``: stochastic uniform quantisation to 8 or 4 bits per element, per
  chunk of :data:`CHUNK` elements with its own minimum ``lo`` and step
  ``(max - lo) / (2^b - 1)``; each value rounds up with probability equal to its
  fractional position, so ``E[Δ̂] = Δ`` (QSGD's unbiased rounding: Alistarh et al.,
  "QSGD: Communication-Efficient SGD via Gradient Quantization and Encoding",
  NeurIPS 2017). Bound: ``|Δ̂_i - Δ_i| <= step`` of the element's chunk. The codes
  are then DEFLATE-coded (zlib) when that is smaller (record ``q8z``/``q4z``): lossless,
  so the decoded update is the same; QSGD likewise entropy-codes its levels, whose
  distribution is far from uniform for real updates (most mass near the chunk's middle).
* ``topk``: the ``fraction`` of elements largest in magnitude, as int32 indices and
  float32 values (Aji & Heafield, "Sparse Communication for Distributed Gradient
  Descent", EMNLP 2017). Bound: every dropped element is at most the smallest kept one.

Error feedback (Seide et al., "1-Bit Stochastic Gradient Descent", Interspeech 2014;
Karimireddy et al., "Error Feedback Fixes SignSGD", ICML 2019): the site adds what
earlier compressions dropped to this round's update before encoding and keeps the
new remainder in its per-run memory (:data:`RESIDUAL_RECORD`); it never leaves the site.
On by default for ``topk``.

Privacy: the site compresses *after* DP (noise, clipping), so compression is
post-processing and the DP guarantee is unchanged. Secure aggregation (SecAgg+) does
not combine with it: masked field elements are uniformly random and cannot be
compressed, and a sum of differently sparsified vectors would reveal each site's
support; SecAgg+ already sends fixed-point integers of its own bit width.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt

from fedcare.errors import ConfigError, SerdeError
from fedcare.types import ConfigValue, ModelState

__all__ = [
    "CHUNK",
    "CODECS",
    "COMPRESSED_RECORD",
    "RESIDUAL_RECORD",
    "Compression",
    "compress_update",
    "decompress_update",
    "payload_bytes",
]

#: Name of the reply record that carries a compressed update (in place of ``"model"``).
COMPRESSED_RECORD = "compressed"
#: Key of the error-feedback remainder in a site's per-run memory.
RESIDUAL_RECORD = "compression_residual"
#: Elements per quantisation chunk (each chunk sends its own float32 ``lo`` and ``step``).
CHUNK = 4096
#: Codec names accepted in the fit config's ``compression`` key.
CODECS = ("none", "q8", "q4", "topk")

CodecName = Literal["none", "q8", "q4", "topk"]
_RAW = "raw."
#: zlib level for the quantised codes: level 1 already gets nearly all of level 9's gain
#: on quantised updates (measured 1.09-1.25x on Gaussian to Student-t(3) deltas) at the
#: lowest CPU cost.
_DEFLATE_LEVEL = 1


@dataclass(frozen=True)
class Compression:
    """What the sites are asked to send: a codec and its parameters.

    Parameters
    ----------
    codec : {"none", "q8", "q4", "topk"} (default: "none")
        ``none`` sends full models; ``q8``/``q4`` stochastic quantisation; ``topk``
        sparsification.
    fraction : float (default: 0.01)
        Share of elements ``topk`` keeps, in (0, 1].
    error_feedback : bool or None (default: None)
        Keep what was dropped at the site and add it to the next update; ``None`` means
        on for ``topk``, off for the (unbiased) quantisers.
    """

    codec: CodecName = "none"
    fraction: float = 0.01
    error_feedback: bool | None = None

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"compression must be one of {', '.join(CODECS)}, got {self.codec!r}")
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, int | float):
            raise ConfigError(f"compression_fraction must be a number in (0, 1], got {self.fraction!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"compression_fraction must be in (0, 1], got {self.fraction}")
        if self.error_feedback is not None and not isinstance(self.error_feedback, bool):
            raise ConfigError(f"compression_error_feedback must be true or false, got {self.error_feedback!r}")

    @property
    def enabled(self) -> bool:
        """True unless the codec is ``none``."""
        return self.codec != "none"

    @property
    def feedback(self) -> bool:
        """Whether the site keeps an error-feedback remainder."""
        return self.codec == "topk" if self.error_feedback is None else self.error_feedback

    def fit_config(self) -> dict[str, ConfigValue]:
        """The fit-config keys that ask sites for this compression (empty for ``none``)."""
        if not self.enabled:
            return {}
        out: dict[str, ConfigValue] = {"compression": self.codec, "compression_error_feedback": self.feedback}
        if self.codec == "topk":
            out["compression_fraction"] = float(self.fraction)
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, ConfigValue]) -> Compression:
        """Read the ``compression*`` keys of a fit config (absent: no compression)."""
        codec = config.get("compression", "none")
        if not isinstance(codec, str):
            raise ConfigError(f"compression must be one of {', '.join(CODECS)}, got {codec!r}")
        feedback = config.get("compression_error_feedback")
        return cls(
            codec=cast(CodecName, codec),
            fraction=cast(float, config.get("compression_fraction", 0.01)),
            error_feedback=cast(bool | None, feedback),
        )


def strip_config(config: Mapping[str, ConfigValue]) -> dict[str, ConfigValue]:
    """``config`` without the compression keys (what the task trains with)."""
    return {k: v for k, v in config.items() if not k.startswith("compression")}


def _float_names(reference: ModelState) -> list[str]:
    return [k for k, v in reference.items() if v.dtype.kind == "f"]


def _flat_delta(reference: ModelState, state: ModelState, names: list[str]) -> npt.NDArray[np.float32]:
    if not names:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(
        [(np.asarray(state[k], dtype=np.float32) - np.asarray(reference[k], dtype=np.float32)).ravel() for k in names]
    )


def _quantise(x: npt.NDArray[np.float32], bits: int, rng: np.random.Generator) -> ModelState:
    """Stochastic uniform quantisation per chunk; returns the record (codes, lo, step)."""
    n = x.size
    chunks = max(1, math.ceil(n / CHUNK))
    padded = np.pad(x, (0, chunks * CHUNK - n), mode="edge") if n else np.zeros(CHUNK, np.float32)
    blocks = padded.reshape(chunks, CHUNK).astype(np.float64)
    levels = (1 << bits) - 1
    lo = blocks.min(axis=1).astype(np.float32)
    step = ((blocks.max(axis=1) - lo) / levels).astype(np.float32)
    inv = np.divide(1.0, step, out=np.zeros(chunks), where=step > 0)
    y = (blocks - lo[:, None].astype(np.float64)) * inv[:, None]
    q = np.floor(y + rng.random(y.shape))
    np.clip(q, 0, levels, out=q)
    codes = q.astype(np.uint8).reshape(-1)[:n]
    if bits == 4:
        if n % 2:
            codes = np.append(codes, np.uint8(0))
        codes = codes[0::2] | (codes[1::2] << 4)
    return {f"q{bits}": codes, "lo": lo, "step": step}


def _deflate(record: ModelState, bits: int) -> ModelState:
    """``record`` with its codes DEFLATE-coded (``q8z``/``q4z``) when that is smaller."""
    codes = record[f"q{bits}"]
    deflated = zlib.compress(codes.tobytes(), _DEFLATE_LEVEL)
    if len(deflated) >= codes.size:
        return record
    return {f"q{bits}z": np.frombuffer(deflated, dtype=np.uint8), "lo": record["lo"], "step": record["step"]}


def _inflate(data: npt.NDArray[Any], size: int, where: str, name: str) -> npt.NDArray[np.uint8]:
    """Undo DEFLATE on ``data``, which must hold exactly ``size`` bytes (never more are produced)."""
    if data.dtype != np.uint8 or data.ndim != 1:
        raise SerdeError(f"{where}: {name} must be 1-d uint8, got {data.dtype} {data.shape}")
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data.tobytes(), size)
    except zlib.error as exc:
        raise SerdeError(f"{where}: {name} is not valid DEFLATE data ({exc})") from None
    if len(out) != size or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise SerdeError(f"{where}: {name} does not inflate to exactly {size} bytes")
    return np.frombuffer(out, dtype=np.uint8)


def _dequantise(record: ModelState, bits: int, n: int, where: str) -> npt.NDArray[np.float32]:
    lo: npt.NDArray[Any] = record["lo"]
    step: npt.NDArray[Any] = record["step"]
    chunks = max(1, math.ceil(n / CHUNK))
    want = n if bits == 8 else (n + 1) // 2
    deflated = f"q{bits}z"
    codes: npt.NDArray[Any] = (
        _inflate(record[deflated], want, where, deflated) if deflated in record else record[f"q{bits}"]
    )
    if codes.dtype != np.uint8 or codes.shape != (want,):
        raise SerdeError(f"{where}: q{bits} codes must be uint8 of shape ({want},), got {codes.dtype} {codes.shape}")
    for name, arr in (("lo", lo), ("step", step)):
        if arr.dtype != np.float32 or arr.shape != (chunks,):
            raise SerdeError(f"{where}: {name} must be float32 of shape ({chunks},), got {arr.dtype} {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise SerdeError(f"{where}: {name} holds non-finite values")
    if np.any(step < 0):
        raise SerdeError(f"{where}: a quantisation step is negative")
    if bits == 4:
        unpacked = np.empty(2 * codes.size, dtype=np.uint8)
        unpacked[0::2] = codes & 0x0F
        unpacked[1::2] = codes >> 4
        codes = unpacked[:n]
        if np.any(codes > 15):
            raise SerdeError(f"{where}: 4-bit code out of range")
    chunk_of = np.arange(n) // CHUNK
    out: npt.NDArray[np.float32] = lo[chunk_of] + codes.astype(np.float32) * step[chunk_of]
    if not np.all(np.isfinite(out)):
        raise SerdeError(f"{where}: decoded update holds non-finite values")
    return out


def _topk(x: npt.NDArray[np.float32], fraction: float) -> tuple[ModelState, npt.NDArray[np.float32]]:
    """Keep the largest ``fraction`` of ``x`` by magnitude; return the record and the dense kept part."""
    n = x.size
    k = min(n, max(1, math.ceil(fraction * n))) if n else 0
    idx = np.sort(np.argpartition(np.abs(x), n - k)[n - k :]).astype(np.int32) if k else np.zeros(0, np.int32)
    val = x[idx].astype(np.float32)
    dense = np.zeros_like(x)
    dense[idx] = val
    return {"idx": idx, "val": val}, dense


def _untopk(record: ModelState, n: int, where: str) -> npt.NDArray[np.float32]:
    idx, val = record["idx"], record["val"]
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    if idx.dtype != np.int32 or idx.ndim != 1 or not 1 <= idx.size <= n:
        raise SerdeError(f"{where}: idx must be 1-d int32 with 1..{n} entries, got {idx.dtype} {idx.shape}")
    if val.dtype != np.float32 or val.shape != idx.shape:
        raise SerdeError(f"{where}: val must be float32 of shape {idx.shape}, got {val.dtype} {val.shape}")
    if idx[0] < 0 or idx[-1] >= n or np.any(np.diff(idx) <= 0):
        raise SerdeError(f"{where}: indices must be strictly increasing in [0, {n})")
    if not np.all(np.isfinite(val)):
        raise SerdeError(f"{where}: values hold non-finite numbers")
    out = np.zeros(n, dtype=np.float32)
    out[idx] = val
    return out


def compress_update(
    reference: ModelState,
    state: ModelState,
    compression: Compression,
    *,
    rng: np.random.Generator,
    memory: dict[str, ModelState] | None = None,
) -> ModelState:
    """Encode ``state - reference`` as the ``"compressed"`` record a site sends.

    Parameters
    ----------
    reference : ModelState
        The global model the site received.
    state : ModelState
        The site's (already privatised) model.
    compression : Compression
        Codec and parameters; must be enabled.
    rng : numpy.random.Generator
        Drives stochastic rounding (seeded from the site's round seed in simulation).
    memory : dict or None (default: None)
        The site's per-run memory; holds the error-feedback remainder when enabled.
    """
    if not compression.enabled:
        raise ConfigError("compress_update called with compression 'none'")
    names = _float_names(reference)
    delta = _flat_delta(reference, state, names)
    feedback = compression.feedback and memory is not None
    if feedback:
        held: npt.NDArray[Any] | None = memory.get(RESIDUAL_RECORD, {}).get("flat") if memory is not None else None
        if held is not None and held.shape == delta.shape:
            delta = delta + held
    if compression.codec == "topk":
        record, sent = _topk(delta, compression.fraction)
    else:
        bits = 8 if compression.codec == "q8" else 4
        plain = _quantise(delta, bits, rng)
        sent = _dequantise(plain, bits, delta.size, "local")  # from the codes, before DEFLATE
        record = _deflate(plain, bits)
    if feedback and memory is not None:
        memory[RESIDUAL_RECORD] = {"flat": (delta - sent).astype(np.float32)}
    for k, v in reference.items():
        if v.dtype.kind != "f":
            record[_RAW + k] = np.asarray(state[k])
    return record


def decompress_update(record: Mapping[str, np.ndarray], reference: ModelState, *, where: str) -> ModelState:
    """Decode a ``"compressed"`` record against ``reference``; return the site's model.

    Raises
    ------
    SerdeError
        The record does not match the reference model (missing or unexpected entries,
        wrong shapes or dtypes, out-of-range indices, non-finite values).
    """
    names = _float_names(reference)
    n = int(sum(reference[k].size for k in names))
    raw = {k for k, v in reference.items() if v.dtype.kind != "f"}
    layouts = {
        "q8": [{"q8", "lo", "step"}, {"q8z", "lo", "step"}],
        "q4": [{"q4", "lo", "step"}, {"q4z", "lo", "step"}],
        "topk": [{"idx", "val"}],
    }
    keys = {k for k in record if not k.startswith(_RAW)}
    codec = next((c for c, options in layouts.items() if keys in options), None)
    if codec is None:
        raise SerdeError(f"{where}: compressed record has entries {sorted(keys)}, not a known codec's")
    got_raw = {k[len(_RAW) :] for k in record if k.startswith(_RAW)}
    if got_raw != raw:
        raise SerdeError(f"{where}: compressed record carries raw entries {sorted(got_raw)}, expected {sorted(raw)}")
    for k, arr in record.items():
        if not isinstance(arr, np.ndarray):
            raise SerdeError(f"{where}: entry {k!r} is not an array")
    if codec == "topk":
        delta = _untopk(dict(record), n, where)
    else:
        delta = _dequantise(dict(record), 8 if codec == "q8" else 4, n, where)
    out: ModelState = {}
    offset = 0
    for k, ref in reference.items():
        if ref.dtype.kind != "f":
            arr = record[_RAW + k]
            if arr.shape != ref.shape or arr.dtype != ref.dtype:
                raise SerdeError(
                    f"{where}: raw entry {k!r} has {arr.dtype} {arr.shape}, expected {ref.dtype} {ref.shape}"
                )
            out[k] = arr
            continue
        part = delta[offset : offset + ref.size].reshape(ref.shape)
        offset += ref.size
        out[k] = (ref.astype(np.float32) + part).astype(ref.dtype, copy=False)
    return out


def payload_bytes(arrays: Mapping[str, Mapping[str, np.ndarray]]) -> int:
    """Bytes of the arrays of a payload (what its tensors occupy on the wire)."""
    return int(sum(a.nbytes for record in arrays.values() for a in record.values()))
