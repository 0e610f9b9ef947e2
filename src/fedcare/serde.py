"""Safe (de)serialisation of model states: safetensors bytes, validated on decode.

No pickle anywhere: tensors travel and rest as safetensors, whose format is a JSON
header plus raw little-endian buffers, so decoding can never execute code. Decoding
checks, before any array is used, that the payload is within a size limit, parses,
holds only allowed dtypes, matches the declared names/shapes/dtypes when a spec is
given, and contains only finite values.
"""

from __future__ import annotations

import json
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fedcare.errors import SerdeError
from fedcare.types import ModelState

__all__ = [
    "ALLOWED_DTYPES",
    "ST_DTYPE_CODES",
    "DEFAULT_MAX_BYTES",
    "ArraySpec",
    "StateSpec",
    "all_finite",
    "check_state",
    "decode_state",
    "decode_view",
    "encode_parts",
    "encode_state",
    "read_metadata",
    "spec_of",
]

#: Default ceiling for one encoded state (2 GiB); callers pass tighter limits.
DEFAULT_MAX_BYTES = 2 * 1024**3
#: dtypes a model state may contain; object/str dtypes can never appear.
ALLOWED_DTYPES = frozenset(
    {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint32", "uint64", "bool"}
)
_ORDER_KEY = "fedcare.order"
_SCALARS_KEY = "fedcare.scalars"  # 0-d entries: safetensors' numpy binding stores them as (1,)


@dataclass(frozen=True)
class ArraySpec:
    """Declared shape and dtype of one entry of a model state."""

    shape: tuple[int, ...]
    dtype: str


#: Declared layout of a model state: name -> (shape, dtype), in order.
StateSpec = Mapping[str, ArraySpec]


def spec_of(state: ModelState) -> dict[str, ArraySpec]:
    """Return the spec (names, shapes, dtypes) that ``state`` has."""
    return {k: ArraySpec(tuple(v.shape), v.dtype.name) for k, v in state.items()}


def all_finite(arr: np.ndarray) -> bool:
    """Return True when every value of a floating array is finite (no NaN, no +-Inf).

    Exact, and one read of the array without a temporary on the common path: the dot
    product ``a . a`` is finite only if every term is (IEEE arithmetic propagates NaN,
    ``Inf * Inf = Inf``, and all terms are non-negative so ``Inf - Inf`` cannot occur), so
    a finite result proves the array finite. A non-finite result can also come from
    squares of large finite values overflowing (``|a| > 1.8e19`` in float32); then the
    elementwise ``isfinite`` pass decides, so the answer is always exact.
    """
    if arr.dtype.kind != "f" or arr.size == 0:
        return True
    if arr.dtype in (np.float32, np.float64) and arr.flags.c_contiguous:
        flat = arr.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.dot(flat, flat)):
                return True
    return bool(np.isfinite(arr).all())


#: Read-only arrays that own their memory and were already found finite (in-process only).
_FINITE_FROZEN: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()


def _frozen_owner(arr: np.ndarray) -> bool:
    return not arr.flags.writeable and arr.base is None


def check_state(
    state: Mapping[str, np.ndarray],
    spec: StateSpec | None = None,
    *,
    where: str = "model state",
    require_finite: bool = True,
    reuse_frozen: bool = False,
) -> None:
    """Validate a decoded state; raise :class:`SerdeError` naming the first problem.

    Parameters
    ----------
    state : Mapping[str, np.ndarray]
        The arrays to check.
    spec : StateSpec or None (default: None)
        When given, ``state`` must have exactly these names, shapes and dtypes.
    where : str (default: "model state")
        Names the payload's origin in error messages (e.g. ``"fit reply from site-a"``).
    require_finite : bool (default: True)
        Reject NaN and +-Inf in floating arrays.
    reuse_frozen : bool (default: False)
        Remember read-only arrays that own their memory once they are found finite, and
        skip the value scan when the same array object comes again. For in-process
        receivers of one broadcast (N simulated sites checking the same frozen model):
        the scan runs once instead of N times. Arrays decoded from bytes are new
        objects, so this never skips a check of data that came over a wire.
    """
    if spec is not None:
        missing = [k for k in spec if k not in state]
        extra = [k for k in state if k not in spec]
        if missing or extra:
            raise SerdeError(
                f"{where}: entries do not match the declared model (missing {missing}, unexpected {extra})"
            )
    for name, arr in state.items():
        if not isinstance(arr, np.ndarray):
            raise SerdeError(f"{where}: entry {name!r} is not an array")
        if arr.dtype.name not in ALLOWED_DTYPES:
            raise SerdeError(f"{where}: entry {name!r} has disallowed dtype {arr.dtype}")
        if spec is not None:
            want = spec[name]
            if tuple(arr.shape) != tuple(want.shape):
                raise SerdeError(f"{where}: entry {name!r} has shape {tuple(arr.shape)}, expected {tuple(want.shape)}")
            if arr.dtype.name != want.dtype:
                raise SerdeError(f"{where}: entry {name!r} has dtype {arr.dtype.name}, expected {want.dtype}")
        if require_finite and arr.dtype.kind == "f":
            if reuse_frozen and _FINITE_FROZEN.get(id(arr)) is arr and _frozen_owner(arr):
                continue
            if not all_finite(arr):
                raise SerdeError(f"{where}: entry {name!r} contains NaN or Inf")
            if reuse_frozen and _frozen_owner(arr):
                _FINITE_FROZEN[id(arr)] = arr


#: numpy dtype name -> safetensors dtype code (the allowed dtypes only).
ST_DTYPE_CODES = {
    "float16": "F16",
    "float32": "F32",
    "float64": "F64",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "uint8": "U8",
    "uint32": "U32",
    "uint64": "U64",
    "bool": "BOOL",
}
_ST_DTYPES = {code: name for name, code in ST_DTYPE_CODES.items()}


def encode_parts(state: ModelState, *, metadata: Mapping[str, str] | None = None) -> list[memoryview]:
    """Encode ``state`` as safetensors, returned as parts: the header, then each array's bytes.

    The array parts are views of the arrays' own memory (no copy when an array is already
    C-contiguous little-endian), so a sender can stream or hash a model without first
    building a second copy of it; ``b"".join(parts)`` is the safetensors file.
    """
    meta = dict(metadata or {})
    meta[_ORDER_KEY] = json.dumps(list(state))
    scalars = [k for k, v in state.items() if v.ndim == 0]
    if scalars:
        meta[_SCALARS_KEY] = json.dumps(scalars)
    header: dict[str, object] = {"__metadata__": meta}
    parts: list[memoryview] = []
    offset = 0
    for name, value in state.items():
        code = ST_DTYPE_CODES.get(value.dtype.name)
        if code is None:
            raise SerdeError(f"entry {name!r} has dtype {value.dtype}, which cannot be encoded")
        arr = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        parts.append(arr.reshape(-1).view(np.uint8).data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8-byte alignment
    return [memoryview(len(text).to_bytes(8, "little") + text), *parts]


def encode_state(state: ModelState, *, metadata: Mapping[str, str] | None = None) -> bytes:
    """Encode a model state as safetensors bytes, keeping the entry order."""
    return b"".join(encode_parts(state, metadata=metadata))


#: Longest safetensors JSON header accepted (our headers are a few hundred bytes per entry).
MAX_HEADER_BYTES = 100 * 1024 * 1024
_MAX_NDIM = 32


def _loads(raw: bytes | str, what: str) -> object:
    """``json.loads`` that raises only :class:`SerdeError` (bad UTF-8, syntax, nesting too deep)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise SerdeError(f"{what} is not valid JSON ({str(exc)[:120]})") from None


def _header(buf: memoryview, where: str) -> tuple[dict[str, str], dict[str, object], int]:
    """Parse a safetensors header: (metadata, entries, offset of the data), every field type-checked."""
    n = len(buf)
    if n < 8:
        raise SerdeError(f"{where}: safetensors payload is truncated (shorter than its header)")
    hlen = int.from_bytes(bytes(buf[:8]), "little")
    if hlen > MAX_HEADER_BYTES:
        raise SerdeError(f"{where}: safetensors header declares {hlen} bytes, over the {MAX_HEADER_BYTES} limit")
    if hlen > n - 8:
        raise SerdeError(f"{where}: safetensors payload is truncated (header of {hlen} bytes overruns it)")
    header = _loads(bytes(buf[8 : 8 + hlen]), f"{where}: safetensors header")
    if not isinstance(header, dict):
        raise SerdeError(f"{where}: safetensors header is not an object")
    meta = header.pop("__metadata__", None)
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise SerdeError(f"{where}: safetensors __metadata__ is not an object of strings")
    return meta, header, 8 + hlen


def _name_list(meta: Mapping[str, str], key: str, where: str) -> list[str] | None:
    """The JSON list of entry names stored under ``key`` (None when absent); malformed raises."""
    if key not in meta:
        return None
    value = _loads(meta[key], f"{where}: metadata {key}")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SerdeError(f"{where}: metadata {key} is not a list of entry names")
    return value


def read_metadata(data: bytes | bytearray | memoryview, *, where: str = "model state") -> dict[str, str]:
    """Return the safetensors header metadata of ``data`` without loading arrays."""
    meta, _, _ = _header(memoryview(data).cast("B"), where)
    return dict(meta)


def decode_view(
    buf: bytes | bytearray | memoryview | np.ndarray,
    spec: StateSpec | None = None,
    *,
    where: str = "model state",
    require_finite: bool = True,
) -> ModelState:
    """Decode safetensors bytes into arrays that VIEW ``buf`` (no copy), validated.

    Every offset, dtype and shape in the header is checked against the buffer before an
    array is made, then the arrays pass :func:`check_state`. Any malformed input raises
    :class:`SerdeError` (and nothing else) naming ``where``.
    """
    buf = memoryview(buf.data if isinstance(buf, np.ndarray) else buf).cast("B")  # numpy types no Buffer on 3.11
    meta, entries, base = _header(buf, where)
    data_len = len(buf) - base
    state: ModelState = {}
    for name, info in entries.items():
        if not isinstance(info, dict):
            raise SerdeError(f"{where}: entry {name[:80]!r} has a malformed description")
        code = info.get("dtype")
        dtype = _ST_DTYPES.get(code) if isinstance(code, str) else None
        if dtype is None:
            raise SerdeError(f"{where}: entry {name[:80]!r} has disallowed dtype {str(code)[:40]!r}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_NDIM
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise SerdeError(f"{where}: entry {name[:80]!r} has a malformed shape or offsets")
        start, end = offsets
        itemsize = np.dtype(dtype).itemsize
        count = math.prod(shape)
        if not 0 <= start <= end <= data_len or end - start != count * itemsize:
            raise SerdeError(f"{where}: entry {name[:80]!r} offsets {offsets} do not match shape {shape[:8]} / {dtype}")
        try:
            arr = np.frombuffer(buf, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=base + start)
            state[name] = arr.reshape(shape)
        except ValueError as exc:  # a shape numpy cannot represent (e.g. a 0 beside a huge dimension)
            raise SerdeError(f"{where}: entry {name[:80]!r} has an unusable shape ({exc})") from None
    order = _name_list(meta, _ORDER_KEY, where)
    if order is not None:
        if sorted(order) != sorted(state):
            raise SerdeError(f"{where}: metadata {_ORDER_KEY} does not list exactly the entries")
        state = {k: state[k] for k in order}
    for key in _name_list(meta, _SCALARS_KEY, where) or []:
        if key in state and state[key].size == 1:
            state[key] = state[key].reshape(())
    check_state(state, spec, where=where, require_finite=require_finite)
    return state


def decode_state(
    data: bytes | bytearray | memoryview,
    spec: StateSpec | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    where: str = "model state",
    require_finite: bool = True,
) -> ModelState:
    """Decode and validate safetensors bytes into a model state of writable arrays.

    Parameters
    ----------
    data : bytes
        The encoded payload.
    spec : StateSpec or None (default: None)
        Declared names, shapes and dtypes the payload must match.
    max_bytes : int (default: 2 GiB)
        Payloads larger than this are rejected before parsing.
    where : str (default: "model state")
        Names the payload's origin in error messages.
    require_finite : bool (default: True)
        Reject NaN and +-Inf values.

    Raises
    ------
    SerdeError
        With a one-line message naming ``where`` and the problem; never another exception,
        whatever the bytes (tests/robustness fuzz this).
    """
    if len(data) > max_bytes:
        raise SerdeError(f"{where}: payload of {len(data)} bytes exceeds the limit of {max_bytes}")
    view = decode_view(data, spec, where=where, require_finite=require_finite)
    return {k: np.array(v, dtype=v.dtype.newbyteorder("=")) for k, v in view.items()}
