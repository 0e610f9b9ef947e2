"""Byte-level codec of the ``Connect`` stream: chunk frames without protobuf's copies.

Chunk frames carry a model's bytes and are nearly all of the traffic. Building each one
as a protobuf object copies its 4 MiB three times (into the ``Chunk``, into the frame,
out as bytes) and reading one copies it twice more; at 100 MB per model that alone costs
more than the TLS link. So chunk frames are written and read here directly in protobuf's
wire format, exactly the bytes ``SiteFrame(chunk=Chunk(...)).SerializeToString()``
produces (tests check the two agree), with one copy on each side. Every other frame
(handshake, headers, ends, pings) goes through the generated classes.

The reader only takes the fast path for the canonical layout it would write itself; any
other bytes (other field orders, unknown fields, anything malformed) are handed to the
protobuf parser, so the fast path never accepts something protobuf would not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as _Proto

from fedcare.transport.proto import fedcare_pb2 as pb

__all__ = [
    "BadFrame",
    "SERVER_CHUNK_FIELD",
    "SITE_CHUNK_FIELD",
    "RawChunk",
    "chunk_frame",
    "connect_handler",
    "connect_stub",
    "frame_kind",
    "parse_server_frame",
    "parse_site_frame",
    "serialize_frame",
]

#: Field numbers of ``chunk`` in the ``SiteFrame`` and ``ServerFrame`` oneofs (fedcare.proto).
SITE_CHUNK_FIELD = pb.SiteFrame.DESCRIPTOR.fields_by_name["chunk"].number
SERVER_CHUNK_FIELD = pb.ServerFrame.DESCRIPTOR.fields_by_name["chunk"].number

_LEN = 2  # protobuf wire type of length-delimited fields
_VARINT = 0
_ID_TAG = (1 << 3) | _LEN  # Chunk.message_id
_INDEX_TAG = (2 << 3) | _VARINT  # Chunk.record_index
_DATA_TAG = (3 << 3) | _LEN  # Chunk.data


@dataclass(frozen=True, slots=True)
class BadFrame:
    """Bytes on the stream that are not a frame; ``reason`` says why (protobuf's message).

    The deserialisers return this instead of raising: a raising deserialiser makes gRPC
    tear the whole stream down, so one malformed reply would look like a disconnected
    site. The receiver turns it into a :class:`~fedcare.errors.ProtocolError` for the
    message it belongs to (a recorded failure of that site, with this reason).
    """

    reason: str


@dataclass(frozen=True, slots=True)
class RawChunk:
    """A chunk frame read without protobuf: ``data`` is a view of the received bytes."""

    message_id: str
    record_index: int
    data: memoryview


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def chunk_frame(field: int, message_id: bytes, record_index: int, pieces: list[memoryview]) -> bytes:
    """Serialise ``XFrame(chunk=Chunk(message_id, record_index, data=b"".join(pieces)))``.

    One copy of the data (the join); fields in protobuf's canonical order, zero values
    omitted as proto3 does.
    """
    size = sum(len(p) for p in pieces)
    inner = [bytes((_ID_TAG,)), _varint(len(message_id)), message_id] if message_id else []
    if record_index:
        inner += [bytes((_INDEX_TAG,)), _varint(record_index)]
    if size:
        inner += [bytes((_DATA_TAG,)), _varint(size)]
    head = b"".join(inner)
    return b"".join([bytes(((field << 3) | _LEN,)), _varint(len(head) + size), head, *pieces])


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    return None


def _fast_chunk(data: bytes, field: int) -> RawChunk | None:
    """The chunk in ``data`` if it is a canonical chunk frame, else None (let protobuf decide)."""
    end = len(data)
    if end < 2 or data[0] != ((field << 3) | _LEN):
        return None
    got = _read_varint(data, 1, end)
    if got is None or got[1] + got[0] != end:
        return None
    pos = got[1]
    message_id, index, start = "", 0, end
    if pos < end and data[pos] == _ID_TAG:
        got = _read_varint(data, pos + 1, end)
        if got is None or got[1] + got[0] > end:
            return None
        length, pos = got
        try:
            message_id = data[pos : pos + length].decode("utf-8")
        except UnicodeDecodeError:
            return None
        pos += length
    if pos < end and data[pos] == _INDEX_TAG:
        got = _read_varint(data, pos + 1, end)
        if got is None or got[0] > 0xFFFFFFFF:
            return None
        index, pos = got
    if pos < end and data[pos] == _DATA_TAG:
        got = _read_varint(data, pos + 1, end)
        if got is None or got[1] + got[0] != end:
            return None
        start, pos = got[1], end
    if pos != end:
        return None
    return RawChunk(message_id, index, memoryview(data)[start:end])


def _parse(data: bytes, frame_type: type[_Proto], field: int) -> RawChunk | BadFrame | _Proto:
    fast = _fast_chunk(data, field)
    if fast is not None:
        return fast
    try:
        return frame_type.FromString(data)
    except DecodeError as exc:
        return BadFrame(f"undecodable {frame_type.__name__} of {len(data)} bytes ({str(exc)[:200]})")


def parse_site_frame(data: bytes) -> RawChunk | BadFrame | pb.SiteFrame:
    """Deserialiser of the server's request stream (fast path for chunk frames); never raises."""
    return _parse(data, pb.SiteFrame, SITE_CHUNK_FIELD)  # type: ignore[return-value]


def parse_server_frame(data: bytes) -> RawChunk | BadFrame | pb.ServerFrame:
    """Deserialiser of the site's response stream (fast path for chunk frames); never raises."""
    return _parse(data, pb.ServerFrame, SERVER_CHUNK_FIELD)  # type: ignore[return-value]


def serialize_frame(frame: bytes | _Proto) -> bytes:
    """Serialiser of both streams: chunk frames arrive already serialised."""
    return frame if isinstance(frame, bytes) else frame.SerializeToString()


_CONNECT_SERVICE = pb.DESCRIPTOR.services_by_name["Federation"].full_name  # "fedcare.v1.Federation"


def connect_handler(
    serve: Callable[[Iterator[RawChunk | pb.SiteFrame], grpc.ServicerContext], Iterator[bytes | pb.ServerFrame]],
) -> grpc.GenericRpcHandler:
    """The server's ``Federation/Connect`` handler, with this module's (de)serialisers."""
    method = grpc.stream_stream_rpc_method_handler(
        serve, request_deserializer=parse_site_frame, response_serializer=serialize_frame
    )
    return grpc.method_handlers_generic_handler(_CONNECT_SERVICE, {"Connect": method})


def connect_stub(channel: grpc.Channel) -> grpc.StreamStreamMultiCallable:
    """The site's ``Federation/Connect`` call, with this module's (de)serialisers."""
    return channel.stream_stream(
        f"/{_CONNECT_SERVICE}/Connect", request_serializer=serialize_frame, response_deserializer=parse_server_frame
    )


def frame_kind(frame: RawChunk | BadFrame | pb.SiteFrame | pb.ServerFrame) -> str:
    """Which oneof field a received frame holds ("chunk" for fast-path chunks, "bad" for undecodable bytes)."""
    if type(frame) is RawChunk:
        return "chunk"
    if type(frame) is BadFrame:
        return "bad"
    return frame.WhichOneof("frame") or ""  # type: ignore[union-attr]
