"""Message <-> protobuf frames: chunked encoding and a validating, zero-copy assembler.

A :class:`~fedcare.types.Message` travels as ``MessageHeader, Chunk*, MessageEnd``
(see ``proto/fedcare.proto``). Array records are safetensors bytes (``fedcare.serde``)
cut into chunks of ``chunk_bytes``. The sending side never builds those bytes in one
piece: :func:`encode_message` keeps each record as views of the arrays' memory plus its
BLAKE3 digest, and :meth:`EncodedMessage.frames` copies each slice once, into its chunk
frame. For a peer at protocol 1.3 a large record's digest can instead be computed on a
thread of its own while the chunks leave and declared in the end frame, so the stream
does not wait for a pass over the whole record. :class:`MessageAssembler` is the
receiving side, shared by the server and the node: it checks every declared and received
size against its limit, writes chunks straight into one preallocated buffer per record
(hashing them as they land, on a thread of its own for large records), checks each
record against the digest its header or end frame declares, and decodes each record into
numpy views of that buffer (no second copy), validated with
:func:`fedcare.serde.check_state` (dtype allow-list, finite values). Anything malformed
raises :class:`~fedcare.errors.ProtocolError` naming what and where; the caller turns
that into an error reply, never a crash.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import blake3
import numpy as np

from fedcare.errors import ProtocolError, SerdeError
from fedcare.serde import decode_view, encode_parts
from fedcare.transport.frames import RawChunk, chunk_frame
from fedcare.transport.proto import fedcare_pb2 as pb
from fedcare.types import ConfigValue, Message, MessageKind, ModelState, Payload, RunId, SiteId

__all__ = [
    "BufferPool",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "EncodedMessage",
    "MessageAssembler",
    "Record",
    "audit_records",
    "build_message",
    "decode_state_view",
    "digest_of",
    "encode_message",
    "header_of",
    "message_arrays",
    "message_from_parts",
    "message_parts",
]

#: Chunk size: 4 MiB keeps each protobuf message small and throughput near the link's.
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024
#: Largest whole message (all records) accepted by default: 2 GiB.
DEFAULT_MAX_MESSAGE_BYTES = 2 * 1024**3
_MAX_RECORDS = 64
#: Records smaller than this are hashed on the calling thread: for them BLAKE3's thread
#: pool costs more than it saves when the cores are busy (many small replies at once).
_THREADED_DIGEST_BYTES = 4 * 1024 * 1024
Frame = TypeVar("Frame", pb.SiteFrame, pb.ServerFrame)
_MAX_CONFIG_ENTRIES = 256
_MAX_STRING = 4096


@dataclass
class Record:
    """One array record ready to send: its safetensors parts, total size and digest ("" until hashed)."""

    parts: list[memoryview]
    size: int
    digest: str


class _Digester:
    """BLAKE3 digests of records computed on a thread of its own, following their bytes as they fill in.

    A sender hashes a record while its chunks leave, a receiver while the next chunks
    arrive (``blake3`` releases the GIL), instead of one more pass over the record before
    the first byte or after the last: on a link that keeps one core busy with TLS, the
    other core hashes.
    """

    def __init__(self, records: list[list[memoryview]], filled: list[int]) -> None:
        self._records = records
        self._filled = list(filled)
        self._cond = threading.Condition()
        self._cancelled = False
        self._digests: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True, name="fedcare-blake3")
        self._thread.start()

    def advance(self, index: int, filled: int) -> None:
        """Bytes ``[0, filled)`` of record ``index`` are in place and may be hashed."""
        with self._cond:
            self._filled[index] = filled
            self._cond.notify()

    def cancel(self) -> None:
        """Stop (the message was dropped); the thread lets go of the buffers after its current piece."""
        with self._cond:
            self._cancelled = True
            self._cond.notify()

    def digests(self) -> list[str]:
        """Hex digests of every record, once all their bytes were hashed (call when all are filled)."""
        self._thread.join()
        return self._digests

    def _run(self) -> None:
        try:
            for index, parts in enumerate(self._records):
                hasher = blake3.blake3(max_threads=1)
                size, done = sum(len(p) for p in parts), 0
                while done < size:
                    with self._cond:
                        while self._filled[index] <= done and not self._cancelled:
                            self._cond.wait()
                        if self._cancelled:
                            return
                        upto = self._filled[index]
                    _hash_range(hasher, parts, done, upto)
                    done = upto
                self._digests.append(hasher.hexdigest())
        finally:
            self._records = []  # hold no buffer once done


def _hash_range(hasher: Any, parts: list[memoryview], start: int, end: int) -> None:
    """Feed bytes ``[start, end)`` of the concatenated ``parts`` to ``hasher``."""
    at = 0
    for part in parts:
        lo, hi = max(start - at, 0), min(end - at, len(part))
        if lo < hi:
            hasher.update(part[lo:hi])
        at += len(part)
        if at >= end:
            return


@dataclass
class EncodedMessage:
    """A message ready to send: its header and the safetensors parts of each record.

    The parts view the arrays' own memory (see :func:`fedcare.serde.encode_parts`), so the
    arrays must not change until :attr:`sent` is set. ``on_end`` is called once the last
    chunk has been taken and every digest is known, before the end frame: the sender's
    "sent" audit entry; it returns the audit head the end frame carries ("" for none).
    """

    header: pb.MessageHeader
    records: list[Record] = field(default_factory=list)
    sent: threading.Event = field(default_factory=threading.Event)
    on_end: Callable[[EncodedMessage], str] | None = None

    @property
    def size_bytes(self) -> int:
        """Total bytes of the array records."""
        return sum(r.size for r in self.records)

    def frames(self, frame_type: type[Frame], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes | Frame]:
        """Yield the frames of this message for a stream of ``frame_type`` (SiteFrame or ServerFrame).

        Header and end are frame objects; chunks come already serialised (``frames.py``),
        each a single copy of its slice of the arrays. Records without a digest yet are
        hashed on another thread while their chunks go out, and every record's digest is
        declared in the end frame (protocol 1.3; only for peers that speak it).
        :attr:`sent` is set once the end has been taken, i.e. when the stream has sent
        everything before it.
        """
        mid = self.header.message_id
        mid_bytes = mid.encode()
        chunk_field = frame_type.DESCRIPTOR.fields_by_name["chunk"].number
        later = [i for i, r in enumerate(self.records) if not r.digest]
        digester = (
            _Digester([self.records[i].parts for i in later], [self.records[i].size for i in later]) if later else None
        )
        done = False
        try:
            yield frame_type(header=self.header)
            for index, record in enumerate(self.records):
                pieces: list[memoryview] = []
                room = chunk_bytes
                for part in record.parts:
                    while len(part):
                        take = part[:room]
                        pieces.append(take)
                        part = part[len(take) :]
                        room -= len(take)
                        if room == 0:
                            yield chunk_frame(chunk_field, mid_bytes, index, pieces)
                            pieces, room = [], chunk_bytes
                if pieces:
                    yield chunk_frame(chunk_field, mid_bytes, index, pieces)
            done = True
        finally:
            if not done and digester is not None:
                digester.cancel()
        end = pb.MessageEnd(message_id=mid)
        if digester is not None:
            for i, digest in zip(later, digester.digests(), strict=True):
                self.records[i].digest = self.header.records[i].blake3 = digest
            end.blake3.extend(r.digest for r in self.records)
        if self.on_end is not None:
            end.audit_head = self.on_end(self)
        yield frame_type(end=end)
        self.sent.set()


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


def header_of(message: Message, records: Mapping[str, Record]) -> pb.MessageHeader:
    """Build the protobuf header of ``message`` with one RecordHeader per encoded record."""
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
    for name, record in records.items():
        header.records.append(pb.RecordHeader(name=name, size_bytes=record.size, blake3=record.digest))
    return header


def audit_records(header: pb.MessageHeader) -> list[dict[str, object]]:
    """What an audit entry says about a message's records: name, size, BLAKE3 digest (never data)."""
    return [{"name": r.name[:100], "size": r.size_bytes, "blake3": r.blake3[:64]} for r in header.records]


def digest_of(parts: list[memoryview]) -> str:
    """Hex BLAKE3 digest of the concatenated parts (several GB/s; the audit trail's hash)."""
    threads = blake3.blake3.AUTO if sum(len(p) for p in parts) >= _THREADED_DIGEST_BYTES else 1
    hasher = blake3.blake3(max_threads=threads)
    for part in parts:
        hasher.update(part)
    return hasher.hexdigest()


def encode_message(
    message: Message, *, cache: dict[int, Record] | None = None, digest_now: bool = True
) -> EncodedMessage:
    """Encode ``message``: safetensors parts and a BLAKE3 digest per record, no copy of the arrays.

    ``cache`` maps a record's identity to its encoding, so a model broadcast to N sites
    is encoded and hashed once. ``digest_now=False`` (for a peer at protocol 1.3) leaves
    the digest of records of 4 MiB and more to :meth:`EncodedMessage.frames`, which
    computes it while the chunks stream and declares it in the end frame.
    """
    records: dict[str, Record] = {}
    for name, state in message.payload.arrays.items():
        key = id(state)
        record = cache.get(key) if cache is not None else None
        if record is None:
            parts = encode_parts(state)
            size = sum(len(p) for p in parts)
            later = not digest_now and size >= _THREADED_DIGEST_BYTES
            record = Record(parts, size, "" if later else digest_of(parts))
            if cache is not None:
                cache[key] = record
        records[name] = record
    return EncodedMessage(header=header_of(message, records), records=list(records.values()))


def decode_state_view(buf: np.ndarray | bytearray | bytes, *, where: str) -> ModelState:
    """Decode safetensors bytes into numpy arrays that VIEW ``buf`` (no copy), validated.

    See :func:`fedcare.serde.decode_view`: offsets, dtypes and shapes are checked against
    the buffer before an array is made; anything malformed raises ``SerdeError`` only.
    """
    return decode_view(buf, where=where)


def _config_value(scalar: pb.Scalar, where: str) -> ConfigValue:
    which = scalar.WhichOneof("value")
    if which is None:
        raise ProtocolError(f"{where}: config scalar has no value")
    value: ConfigValue = getattr(scalar, which)
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"{where}: config value is not finite")
    return value


class BufferPool:
    """Receive buffers, reused once nothing views them any more.

    A model arrives into one buffer per record and its arrays are views of that buffer.
    A fresh 100 MB buffer costs tens of milliseconds of page faults before the first
    byte lands, as much as the TLS link takes to carry it; a model of the same size next
    round can reuse the buffer instead. A buffer is free when no array, memoryview or
    slice refers to it any more (its reference count says so). At most ``max_buffers``
    buffers of at least ``min_bytes`` are kept; smaller ones are not worth it.
    """

    def __init__(self, max_buffers: int = 2, *, min_bytes: int = 1 << 20) -> None:
        self.max_buffers = max_buffers
        self.min_bytes = min_bytes
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def take(self, size: int) -> np.ndarray:
        """A uint8 array of ``size`` bytes (contents undefined)."""
        if size < self.min_bytes:
            return np.empty(size, dtype=np.uint8)
        with self._lock:
            free = [i for i in range(len(self._buffers)) if sys.getrefcount(self._buffers[i]) <= _POOL_ONLY_REFS]
            for i in free:
                if self._buffers[i].nbytes == size:
                    return self._buffers[i][:]  # a view: the buffer counts as busy while it lives
            if len(self._buffers) >= self.max_buffers and free:
                del self._buffers[free[0]]  # forget a free buffer of another size
            # numpy backs allocations of 4 MiB and more with transparent huge pages
            new = np.empty(size, dtype=np.uint8)
            if len(self._buffers) < self.max_buffers:
                self._buffers.append(new)
                return new[:]
            return new


#: References to a free pooled buffer seen by getrefcount: the pool's list and the call's argument.
_POOL_ONLY_REFS = 2


class MessageAssembler:
    """Rebuild one :class:`Message` at a time from incoming frames, validating as it goes.

    Parameters
    ----------
    max_message_bytes : int (default: 2 GiB)
        Largest total size of a message's records; larger declarations are refused
        before any memory is reserved.
    where : str (default: "message")
        Names the peer in error messages (e.g. ``"reply from site-a"``).
    pool : BufferPool or None (default: None)
        Where record buffers come from (shared by a server's sessions); a private pool
        of two buffers by default.
    require_digest : bool (default: False)
        Refuse a record for which neither the header nor the end frame declares a digest
        (peers at protocol 1.2 and later always declare one; 1.1 peers never do).
    """

    def __init__(
        self,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        where: str = "message",
        pool: BufferPool | None = None,
        require_digest: bool = False,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.where = where
        self.pool = pool or BufferPool()
        self.require_digest = require_digest
        self._header: pb.MessageHeader | None = None
        self._buffers: list[memoryview] = []
        self._filled: list[int] = []
        self._hashers: list[Any] = []
        self._digester: _Digester | None = None
        self._record = 0

    @property
    def busy(self) -> bool:
        """True between a header and its end frame."""
        return self._header is not None

    @property
    def header(self) -> pb.MessageHeader | None:
        """Header of the message being assembled (None when idle)."""
        return self._header

    @property
    def current_id(self) -> str:
        """Id of the message being assembled ("" when idle)."""
        return self._header.message_id if self._header is not None else ""

    def reset(self) -> None:
        """Drop a partial message (after an error)."""
        if self._digester is not None:
            self._digester.cancel()
        self._header, self._digester = None, None
        self._buffers, self._filled, self._hashers, self._record = [], [], [], 0

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
        self._buffers = [memoryview(self.pool.take(r.size_bytes)) for r in header.records]
        self._filled = [0] * len(header.records)
        if total >= _THREADED_DIGEST_BYTES:  # hash on another thread as the chunks land
            self._digester = _Digester([[b] for b in self._buffers], self._filled)
        else:
            self._hashers = [blake3.blake3() for _ in header.records]
        self._record = 0

    def add(self, chunk: pb.Chunk | RawChunk) -> None:
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
        if self._digester is not None:
            self._digester.advance(index, end)
        else:
            self._hashers[index].update(self._buffers[index][filled:end])

    def finish(self, end: pb.MessageEnd) -> Message:
        """Complete the message: sizes and digests must match, arrays decode and validate.

        A record's digest is declared in its header (protocol 1.2) or in the end frame
        (1.3); the header then holds the digest as received, for the audit, and the end
        frame's audit head, if any.
        """
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
            at_end = list(end.blake3)
            if at_end and len(at_end) != len(header.records):
                raise ProtocolError(
                    f"{self.where}: the end of {header.message_id[:32]!r} declares {len(at_end)} digest(s) "
                    f"for {len(header.records)} record(s)"
                )
            digester, self._digester = self._digester, None
            digests = digester.digests() if digester is not None else [h.hexdigest() for h in self._hashers]
            for i, (rec, digest) in enumerate(zip(header.records, digests, strict=True)):
                declared = [d for d in (rec.blake3, at_end[i] if at_end else "") if d]
                if not declared and self.require_digest:
                    raise ProtocolError(f"{self.where}: record {rec.name!r} came without a BLAKE3 digest")
                for expected in declared:
                    if expected != digest:
                        raise ProtocolError(
                            f"{self.where}: record {rec.name!r} does not match its declared BLAKE3 digest "
                            f"(declared {expected[:16]}…, received {digest[:16]}…)"
                        )
                rec.blake3 = digest  # what the receiver's audit logs is what it received (1.1 peers send none)
            if end.audit_head:
                header.audit_head = end.audit_head
            return self._message(header)
        finally:
            self.reset()

    def _message(self, header: pb.MessageHeader) -> Message:
        return build_message(header, self._buffers, where=self.where)


def build_message(header: pb.MessageHeader, buffers: Sequence[Any], *, where: str) -> Message:
    """Build a :class:`Message` from its header and one complete buffer per record, validated."""
    where = f"{where} ({header.kind or '?'} round {header.round_no})"
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
    for rec, buf in zip(header.records, buffers, strict=True):
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


def message_from_parts(
    header: bytes,
    records: Sequence[Any],
    *,
    where: str,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    verified: set[tuple[int, bytes]] | None = None,
) -> Message:
    """Decode a message moved as whole buffers (a protobuf header, one safetensors blob per record).

    For transports that carry complete buffers instead of frames (Ray): the same checks
    as :class:`MessageAssembler` (sizes, BLAKE3 digests, dtypes, finite values).
    ``verified`` remembers (buffer identity, digest) pairs already checked, so a record
    shared by many messages decoded together (one model, many sites) is hashed once;
    the caller keeps the buffers alive while the set is in use.
    """
    try:
        parsed = pb.MessageHeader.FromString(bytes(header))
    except Exception as exc:  # protobuf's DecodeError; the message names what was wrong
        raise ProtocolError(f"{where}: malformed message header ({exc})") from None
    if len(parsed.records) != len(records) or len(records) > _MAX_RECORDS:
        raise ProtocolError(f"{where}: header declares {len(parsed.records)} record(s), {len(records)} received")
    if sum(rec.size_bytes for rec in parsed.records) > max_message_bytes:
        raise ProtocolError(f"{where}: message larger than {max_message_bytes} bytes")
    for rec, buf in zip(parsed.records, records, strict=True):
        view = memoryview(buf).cast("B")
        if len(view) != rec.size_bytes:
            raise ProtocolError(f"{where}: record {rec.name[:40]!r} is {len(view)} bytes, declared {rec.size_bytes}")
        if not rec.blake3 or (verified is not None and (id(buf), rec.blake3) in verified):
            continue
        if digest_of([view]) != rec.blake3:
            raise ProtocolError(f"{where}: record {rec.name[:40]!r} does not match its declared BLAKE3 digest")
        if verified is not None:
            verified.add((id(buf), rec.blake3))
    return build_message(parsed, records, where=where)


def message_parts(message: Message, *, cache: dict[int, Record] | None = None) -> tuple[bytes, list[bytes]]:
    """Encode ``message`` as whole buffers: its protobuf header and one safetensors blob per record."""
    encoded = encode_message(message, cache=cache)
    return encoded.header.SerializeToString(), [b"".join(r.parts) for r in encoded.records]


def message_arrays(message: Message, *, cache: dict[int, Record] | None = None) -> tuple[bytes, list[np.ndarray]]:
    """As :func:`message_parts`, each record as one uint8 array (one copy of the parts).

    An object store that shares numpy buffers (Ray's) then hands the receiver a view of
    the record instead of a private copy of it.
    """
    encoded = encode_message(message, cache=cache)
    out = []
    for record in encoded.records:
        buf = np.empty(record.size, dtype=np.uint8)
        at = 0
        for part in record.parts:
            buf[at : at + len(part)] = np.frombuffer(part, dtype=np.uint8)
            at += len(part)
        out.append(buf)
    return encoded.header.SerializeToString(), out
