"""Message <-> protobuf frames: chunked encoding and a validating, zero-copy assembler.

A :class:`~fedcare.types.Message` travels as ``MessageHeader, Chunk*, MessageEnd``
(see ``proto/fedcare.proto``). Array records are safetensors bytes (``fedcare.serde``)
cut into chunks of ``chunk_bytes``. :class:`MessageAssembler` is the receiving side,
shared by the server and the node: it checks every declared and received size against
its limit, writes chunks straight into one preallocated buffer per record, and decodes
each record into numpy views of that buffer (no second copy), validated with
:func:`fedcare.serde.check_state` (dtype allow-list, finite values). Anything malformed
raises :class:`~fedcare.errors.ProtocolError` naming what and where; the caller turns
that into an error reply, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedcare.errors import ProtocolError, SerdeError
from fedcare.serde import ALLOWED_DTYPES, check_state, encode_state
from fedcare.transport.proto import fedcare_pb2 as pb
from fedcare.types import ConfigValue, Message, MessageKind, ModelState, Payload, RunId, SiteId

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "EncodedMessage",
    "MessageAssembler",
    "decode_state_view",
    "encode_message",
    "header_of",
]

#: Chunk size: 4 MiB keeps each protobuf message small and throughput near the link's.
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
#: Largest whole message (all records) accepted by default: 2 GiB.
DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024**3
_MAX_RECORDS = 64
_MAX_CONFIG_ENTRIES = 256
_MAX_STRING = 4096
_ORDER_KEY = "fedcare.order"
_SCALARS_KEY = "fedcare.scalars"
_ST_DTYPES = {
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "U32": "uint32",
    "U64": "uint64",
    "BOOL": "bool",
}


@dataclass
class EncodedMessage:
    """A message ready to send: its header and the safetensors bytes of each record."""

    header: pb.MessageHeader
    blobs: list[bytes] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        """Total bytes of the array records."""
        return sum(len(b) for b in self.blobs)

    def chunks(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[pb.Chunk]:
        """Yield the records' bytes as chunks of at most ``chunk_bytes``."""
        mid = self.header.message_id
        for index, blob in enumerate(self.blobs):
            view = memoryview(blob)
            for start in range(0, len(blob), chunk_bytes):
                yield pb.Chunk(message_id=mid, record_index=index, data=view[start : start + chunk_bytes].tobytes())


def _scalar(value: ConfigValue) -> pb.Scalar:
    if isinstance(value, bool):
        return pb.Scalar(bool_value=value)
    if isinstance(value, int):
        return pb.Scalar(int_value=value)
    if isinstance(value, float):
        return pb.Scalar(float_value=value)
    if isinstance(value, str):
        return pb.Scalar(string_value=value)
    raise ProtocolError(f"config value of type {type(value).__name__} cannot be sent")


def header_of(message: Message, records: Mapping[str, tuple[bytes, str]]) -> pb.MessageHeader:
    """Build the protobuf header of ``message``; ``records`` maps name -> (bytes, sha256 hex or "")."""
    header = pb.MessageHeader(
        message_id=message.message_id,
        kind=message.kind.value,
        run_id=message.run_id,
        round_no=message.round_no,
        site=message.site,
        reply_to=message.reply_to or "",
        has_error=message.error is not None,
        error=message.error or "",
    )
    for key, value in message.payload.config.items():
        header.config[key].CopyFrom(_scalar(value))
    for key, metric in message.payload.metrics.items():
        header.metrics[key] = float(metric)
    for name, (blob, digest) in records.items():
        header.records.append(pb.RecordHeader(name=name, size_bytes=len(blob), sha256=digest))
    return header


def encode_message(
    message: Message,
    *,
    cache: dict[int, tuple[bytes, str]] | None = None,
    with_sha256: bool = True,
) -> EncodedMessage:
    """Encode ``message`` (safetensors per record, optional sha256 per record).

    ``cache`` maps a record's identity to its encoding, so a model broadcast to N sites
    is encoded and hashed once.
    """
    records: dict[str, tuple[bytes, str]] = {}
    for name, state in message.payload.arrays.items():
        key = id(state)
        entry = cache.get(key) if cache is not None else None
        if entry is None:
            blob = encode_state(state)
            entry = (blob, hashlib.sha256(blob).hexdigest() if with_sha256 else "")
            if cache is not None:
                cache[key] = entry
        records[name] = entry
    return EncodedMessage(header=header_of(message, records), blobs=[b for b, _ in records.values()])


def decode_state_view(buf: bytearray | bytes, *, where: str) -> ModelState:
    """Decode safetensors bytes into numpy arrays that VIEW ``buf`` (no copy), validated.

    Every offset, dtype and shape in the header is checked against the buffer before an
    array is made; the arrays then pass :func:`fedcare.serde.check_state`.
    """
    n = len(buf)
    if n < 8:
        raise SerdeError(f"{where}: safetensors payload is truncated (shorter than its header)")
    hlen = int.from_bytes(bytes(buf[:8]), "little")
    if hlen > n - 8 or hlen > 100 * 1024 * 1024:
        raise SerdeError(f"{where}: safetensors header length {hlen} overruns the payload")
    try:
        header = json.loads(bytes(buf[8 : 8 + hlen]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SerdeError(f"{where}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SerdeError(f"{where}: safetensors header is not an object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise SerdeError(f"{where}: safetensors metadata is not an object")
    base = 8 + hlen
    data_len = n - base
    state: ModelState = {}
    for name, info in header.items():
        if not isinstance(info, dict):
            raise SerdeError(f"{where}: entry {name!r} has a malformed description")
        dtype = _ST_DTYPES.get(str(info.get("dtype")))
        if dtype is None or dtype not in ALLOWED_DTYPES:
            raise SerdeError(f"{where}: entry {name!r} has disallowed dtype {info.get('dtype')!r}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if (
            not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise SerdeError(f"{where}: entry {name!r} has a malformed shape or offsets")
        start, end = offsets
        itemsize = np.dtype(dtype).itemsize
        count = math.prod(shape)
        if not 0 <= start <= end <= data_len or end - start != count * itemsize:
            raise SerdeError(f"{where}: entry {name!r} offsets {offsets} do not match shape {shape} / {dtype}")
        arr = np.frombuffer(buf, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=base + start)
        state[str(name)] = arr.reshape(shape)
    order = _json_list(meta.get(_ORDER_KEY))
    if order is not None and sorted(order) == sorted(state):
        state = {k: state[k] for k in order}
    for key in _json_list(meta.get(_SCALARS_KEY)) or []:
        if key in state and state[key].size == 1:
            state[key] = state[key].reshape(())
    check_state(state, where=where)
    return state


def _json_list(raw: object) -> list[str] | None:
    if not isinstance(raw, str):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return [str(v) for v in value] if isinstance(value, list) else None


def _config_value(scalar: pb.Scalar, where: str) -> ConfigValue:
    which = scalar.WhichOneof("value")
    if which is None:
        raise ProtocolError(f"{where}: config scalar has no value")
    value: ConfigValue = getattr(scalar, which)
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"{where}: config value is not finite")
    return value


class MessageAssembler:
    """Rebuild one :class:`Message` at a time from incoming frames, validating as it goes.

    Parameters
    ----------
    max_message_bytes : int (default: 2 GiB)
        Largest total size of a message's records; larger declarations are refused
        before any memory is reserved.
    where : str (default: "message")
        Names the peer in error messages (e.g. ``"reply from site-a"``).
    """

    def __init__(self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, where: str = "message") -> None:
        self.max_message_bytes = max_message_bytes
        self.where = where
        self._header: pb.MessageHeader | None = None
        self._buffers: list[bytearray] = []
        self._filled: list[int] = []
        self._record = 0

    @property
    def busy(self) -> bool:
        """True between a header and its end frame."""
        return self._header is not None

    @property
    def current_id(self) -> str:
        """Id of the message being assembled ("" when idle)."""
        return self._header.message_id if self._header is not None else ""

    def reset(self) -> None:
        """Drop a partial message (after an error)."""
        self._header = None
        self._buffers, self._filled, self._record = [], [], 0

    def start(self, header: pb.MessageHeader) -> None:
        """Begin a message: check its header, reserve one buffer per record."""
        if self._header is not None:
            raise ProtocolError(f"{self.where}: header of {header.message_id!r} before the end of {self.current_id!r}")
        where = f"{self.where} {header.message_id[:32]!r}"
        if not header.message_id or len(header.message_id) > 128:
            raise ProtocolError(f"{self.where}: message id is empty or too long")
        if len(header.records) > _MAX_RECORDS:
            raise ProtocolError(f"{where}: {len(header.records)} records, at most {_MAX_RECORDS}")
        if len(header.config) > _MAX_CONFIG_ENTRIES or len(header.metrics) > _MAX_CONFIG_ENTRIES:
            raise ProtocolError(f"{where}: too many config or metric entries")
        total = 0
        for rec in header.records:
            if rec.size_bytes < 0:
                raise ProtocolError(f"{where}: record {rec.name!r} declares a negative size")
            total += rec.size_bytes
        if total > self.max_message_bytes:
            raise ProtocolError(f"{where}: records of {total} bytes exceed the limit of {self.max_message_bytes}")
        names = [r.name for r in header.records]
        if len(set(names)) != len(names) or not all(names):
            raise ProtocolError(f"{where}: record names are empty or repeated")
        self._header = header
        self._buffers = [bytearray(r.size_bytes) for r in header.records]
        self._filled = [0] * len(header.records)
        self._record = 0

    def add(self, chunk: pb.Chunk) -> None:
        """Copy one chunk into its record's buffer (records in order, sizes checked)."""
        header = self._header
        if header is None:
            raise ProtocolError(f"{self.where}: chunk for {chunk.message_id[:32]!r} outside a message")
        if chunk.message_id != header.message_id:
            raise ProtocolError(f"{self.where}: chunk for {chunk.message_id[:32]!r} inside {header.message_id!r}")
        index = chunk.record_index
        if index >= len(self._buffers) or index < self._record:
            raise ProtocolError(f"{self.where}: chunk for record {index} out of order")
        self._record = index
        filled = self._filled[index]
        end = filled + len(chunk.data)
        if end > len(self._buffers[index]):
            raise ProtocolError(
                f"{self.where}: record {header.records[index].name!r} overruns its declared "
                f"{header.records[index].size_bytes} bytes"
            )
        self._buffers[index][filled:end] = chunk.data
        self._filled[index] = end

    def finish(self, end: pb.MessageEnd) -> Message:
        """Complete the message: sizes must match, arrays decode and validate."""
        header = self._header
        if header is None or end.message_id != header.message_id:
            self.reset()
            raise ProtocolError(f"{self.where}: end of {end.message_id[:32]!r} without its header")
        try:
            for rec, filled in zip(header.records, self._filled, strict=True):
                if filled != rec.size_bytes:
                    raise ProtocolError(
                        f"{self.where}: record {rec.name!r} is truncated ({filled} of {rec.size_bytes} bytes)"
                    )
            return self._message(header)
        finally:
            self.reset()

    def _message(self, header: pb.MessageHeader) -> Message:
        where = f"{self.where} ({header.kind or '?'} round {header.round_no})"
        try:
            kind = MessageKind(header.kind)
        except ValueError:
            raise ProtocolError(f"{where}: unknown message kind {header.kind[:40]!r}") from None
        for text in (header.run_id, header.site, header.reply_to):
            if len(text) > _MAX_STRING:
                raise ProtocolError(f"{where}: an id field is longer than {_MAX_STRING} characters")
        if header.round_no < 0:
            raise ProtocolError(f"{where}: negative round number")
        config = {k: _config_value(v, f"{where}, config {k[:40]!r}") for k, v in header.config.items()}
        metrics: dict[str, float] = {}
        for key, value in header.metrics.items():
            if not math.isfinite(value):
                raise ProtocolError(f"{where}: metric {key[:40]!r} is not finite")
            metrics[key] = value
        arrays: dict[str, ModelState] = {}
        for rec, buf in zip(header.records, self._buffers, strict=True):
            try:
                arrays[rec.name] = decode_state_view(buf, where=f"{where}, record {rec.name[:40]!r}")
            except SerdeError as exc:
                raise ProtocolError(str(exc)) from None
        return Message(
            kind=kind,
            run_id=RunId(header.run_id),
            round_no=int(header.round_no),
            site=SiteId(header.site),
            payload=Payload(arrays=arrays, config=config, metrics=metrics),
            message_id=header.message_id,
            reply_to=header.reply_to or None,
            error=header.error if header.has_error else None,
        )
