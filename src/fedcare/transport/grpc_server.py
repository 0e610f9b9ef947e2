"""GrpcChannel: the coordinator's side of deployment, a Channel over gRPC + mutual TLS.

Sites dial out to this server and keep one bidirectional stream open
(``fedcare.v1.Federation/Connect``). :meth:`GrpcChannel.send` queues instructions on
the right site's stream; :meth:`GrpcChannel.receive` yields replies as they finish
arriving. The Coordinator cannot tell this from the in-process channel.

Security and robustness, in the order a connection meets them:

1. TLS handshake: the client must present a certificate signed by the study CA
   (``require_client_auth``); no certificate or another CA fails the handshake.
2. Identity: the certificate's CN must be on the allow-list, else PERMISSION_DENIED.
3. Hello: the protocol version must be compatible, else a refusal frame saying why.
4. Every frame afterwards goes through :class:`~fedcare.transport.wire.MessageAssembler`
   (sizes, order, dtypes, finite values). A malformed reply becomes an error reply for
   the instruction it answers: recorded as that site's failure, never a crash.

Memory: replies are assembled into one buffer each and decoded as views of it. Replies
assembled and not yet consumed by the Coordinator may total ``max_inflight_bytes``
(64 MiB by default), or be a single reply of any size: small models are received from
many sites at once, a 100 MB model one site at a time. Other sites wait for their turn
without sending: a site sends a reply's chunks only after the server's ``Proceed`` for
its header (protocol 1.2; older sites are held back by HTTP/2 flow control instead, a
few MiB each). For large models the server holds the global model, the fold, and one
reply. A site that stops sending while it has the turn loses its connection after
``stall_timeout_s``.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc

from fedcare.errors import ConfigError, ProtocolError
from fedcare.protocols import AuditSink
from fedcare.transport.base import freeze
from fedcare.transport.frames import BadFrame, RawChunk, connect_handler, frame_kind
from fedcare.transport.proto import fedcare_pb2 as pb
from fedcare.transport.tls import TlsFiles, server_credentials
from fedcare.transport.version import PROTOCOL_VERSION, compatibility_problem, parse_version, speaks
from fedcare.transport.wire import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    BufferPool,
    EncodedMessage,
    MessageAssembler,
    Record,
    audit_records,
    encode_message,
)
from fedcare.types import Message, MessageKind, RunId, SiteId

__all__ = ["GrpcChannel", "StudyInfo", "grpc_options", "share_malloc_arena"]

log = logging.getLogger(__name__)

#: What the server's request stream yields: a fast-path chunk or any other site frame.
SiteFrame = RawChunk | BadFrame | pb.SiteFrame

_HANDSHAKE_TIMEOUT_S = 30.0


def grpc_options(chunk_bytes: int) -> list[tuple[str, int]]:
    """Explicit limits and keep-alives shared by server and node.

    One protobuf message is at most one chunk plus its header: the gRPC message limit is
    ``chunk_bytes`` + 1 MiB, so a 1 GB model crosses as ~256 messages of 4 MiB, never as
    one. HTTP/2 PINGs every 20 s (timeout 10 s) detect a dead peer behind a NAT or proxy.
    """
    limit = chunk_bytes + 1024 * 1024
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.min_time_between_pings_ms", 10_000),
        # A long upload carries BDP-probe and keep-alive pings; never answer them with a
        # "too_many_pings" GOAWAY (seen on a 1 GB transfer under load).
        ("grpc.http2.max_ping_strikes", 0),
        # Fixed HTTP/2 stream window of two chunks instead of BDP-probed windows, which grow
        # until a stream buffers a whole upload: the memory a stream can hold stays fixed
        # (sites of protocol 1.1, which do not wait for Proceed, hold at most this much).
        ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 2 * chunk_bytes),
    ]


def share_malloc_arena(chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> bool:
    """Make every thread of this process allocate from glibc's main heap, and keep chunk-sized blocks there.

    glibc gives threads that allocate their own heaps ("arenas") and each keeps the
    4 MiB chunk buffers freed in it. With one reader thread per site that retained
    ~0.5 x a 100 MB model at the server, and ten sites in one process spent ~100 ms of
    system time per round faulting in fresh pages (``benchmarks/transport.py``); one
    shared arena (``M_ARENA_MAX = 1``) removed both at no cost in throughput.

    glibc also returns the top of its heap to the kernel once 8 MiB of it is free, and
    serves blocks above its mmap threshold with fresh pages: every chunk a stream moves
    then faults its pages in again (~6,000 page faults per 100 MB received, 10-20 % of
    the CPU time of a transfer under ``perf``). A threshold of two chunks and a trim
    threshold of four keep chunk buffers on the heap (at most four idle chunks kept), which
    removed those faults. Returns False where there is no glibc (nothing done).
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt(_M_MMAP_THRESHOLD, min(2 * chunk_bytes, _MMAP_THRESHOLD_MAX))
    mallopt(_M_TRIM_THRESHOLD, 4 * chunk_bytes)
    return bool(mallopt(_M_ARENA_MAX, 1))


_M_ARENA_MAX, _M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD = -8, -3, -1  # glibc malloc.h
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's largest on 64-bit


class _ReplyBudget:
    """Bytes of replies assembled and not yet consumed; one reply always fits."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._count = 0
        self._cond = threading.Condition()

    def acquire(self, size: int, *, timeout_s: float) -> bool:
        """Reserve ``size`` bytes; False if they did not fit within ``timeout_s``."""
        with self._cond:
            fits = self._cond.wait_for(lambda: self._count == 0 or self._used + size <= self.limit, timeout_s)
            if fits:
                self._used += size
                self._count += 1
            return fits

    def release(self, size: int) -> None:
        """Give back a reservation."""
        with self._cond:
            self._used -= size
            self._count -= 1
            self._cond.notify_all()


@dataclass(frozen=True)
class StudyInfo:
    """What the server tells each site in its welcome."""

    study: str
    run_id: str
    task: str
    task_hash: str


@dataclass
class _Pending:
    kind: MessageKind
    run_id: str
    round_no: int


@dataclass
class _Session:
    site: SiteId
    context: grpc.ServicerContext
    outq: queue.SimpleQueue[EncodedMessage | pb.ServerFrame | None] = field(default_factory=queue.SimpleQueue)
    pending: dict[str, _Pending] = field(default_factory=dict)
    alive: bool = True
    credit: bool = False  # the site waits for Proceed before sending chunks (protocol >= 1.2)
    digest_at_end: bool = False  # the site reads digests from end frames (protocol >= 1.3)
    holding_since: float | None = None  # monotonic time of its last progress while it has the turn


class GrpcChannel:
    """Serve sites over gRPC with mutual TLS and act as the Coordinator's Channel.

    Parameters
    ----------
    listen : str
        ``host:port`` to bind, e.g. ``"127.0.0.1:50051"`` (port 0 picks a free one).
    tls : TlsFiles
        Study CA, server certificate and key.
    allowed_sites : Sequence[str]
        Certificate CNs allowed to connect; everyone else is refused.
    study : StudyInfo
        Study, run and task announced in the welcome.
    chunk_bytes : int (default: 4 MiB)
        Chunk size of outgoing records.
    max_message_bytes : int (default: 2 GiB)
        Largest reply (all records) accepted.
    max_inflight_bytes : int (default: 64 MiB)
        Bytes of replies held at once; one reply is always allowed (see module docstring).
    audit : AuditSink or None (default: None)
        Where connections, instructions sent and replies received are logged.
    stall_timeout_s : float (default: 120.0)
        A site that has the turn to send a reply and sends nothing for this long is
        disconnected, so it cannot hold up the other sites' replies.
    """

    def __init__(
        self,
        *,
        listen: str,
        tls: TlsFiles,
        allowed_sites: Sequence[str],
        study: StudyInfo,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_inflight_bytes: int = 64 * 1024 * 1024,
        audit: AuditSink | None = None,
        stall_timeout_s: float = 120.0,
    ) -> None:
        if not allowed_sites:
            raise ConfigError("the server needs at least one allow-listed site")
        if not 64 * 1024 <= chunk_bytes <= 64 * 1024 * 1024:
            raise ConfigError(f"chunk_bytes must be between 64 KiB and 64 MiB, got {chunk_bytes}")
        if max_inflight_bytes < 0:
            raise ConfigError(f"max_inflight_bytes must not be negative, got {max_inflight_bytes}")
        share_malloc_arena(chunk_bytes)  # before gRPC starts its threads
        self.allowed = frozenset(allowed_sites)
        self.study = study
        self.chunk_bytes = chunk_bytes
        self.max_message_bytes = max_message_bytes
        self.audit = audit
        self._sessions: dict[SiteId, _Session] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._replies: queue.SimpleQueue[tuple[Message, int | None]] = queue.SimpleQueue()
        self._inflight = _ReplyBudget(max_inflight_bytes)
        self._pool = BufferPool(2)
        self._closed = threading.Event()
        self.stall_timeout_s = stall_timeout_s
        threading.Thread(target=self._watch_stalls, daemon=True, name="fedcare-stall-watch").start()
        _check_port_free(listen)
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=2 * len(self.allowed) + 4, thread_name_prefix="fedcare-grpc"),
            # No SO_REUSEPORT: with it, a second coordinator binds the same port and the
            # kernel splits the sites between two studies at random.
            options=[*grpc_options(chunk_bytes), ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=2 * len(self.allowed) + 4,
        )
        self._server.add_generic_rpc_handlers((connect_handler(self._serve),))
        try:
            self.port = self._server.add_secure_port(listen, server_credentials(tls))
        except RuntimeError:  # grpcio raises when the bind fails
            self.port = 0
        if self.port == 0:
            raise ConfigError(f"cannot listen on {listen}: the address is in use or not available on this machine")
        self._server.start()
        self._audit("listening", address=listen, port=self.port, protocol=PROTOCOL_VERSION)

    # -- Channel ------------------------------------------------------------------------

    def sites(self) -> Sequence[SiteId]:
        """Sites with an open, joined session, sorted."""
        with self._lock:
            return sorted(s for s, sess in self._sessions.items() if sess.alive)

    def wait_for_sites(self, count: int, *, timeout_s: float) -> list[SiteId]:
        """Block until ``count`` sites have joined or ``timeout_s`` passes; return who is there."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while len(self._sessions) < count and not self._closed.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return sorted(self._sessions)

    def send(self, messages: Sequence[Message]) -> None:
        """Queue each instruction on its site's stream (a broadcast is encoded and hashed once).

        The arrays are streamed from their own memory, so they are made read-only here,
        as the in-process channel does: what the sites receive is what the audit logged.
        A record sent to one site of protocol 1.3 is hashed while it streams; one sent to
        several sites is hashed once, here. Each "sent" entry is logged after the
        instruction's last chunk left, with its digests, before its end frame.
        """
        cache: dict[int, Record] = {}
        uses: dict[int, int] = {}
        for message in messages:
            for state in message.payload.arrays.values():
                uses[id(state)] = uses.get(id(state), 0) + 1
        for message in messages:
            with self._lock:
                session = self._sessions.get(message.site)
            if session is None or not session.alive:
                self._replies.put((message.reply(error=f"site {message.site} is not connected"), None))
                continue
            freeze(message)
            alone = all(uses[id(state)] == 1 for state in message.payload.arrays.values())
            encoded = encode_message(message, cache=cache, digest_now=not (session.digest_at_end and alone))
            encoded.on_end = self._sent_entry(message)
            with self._lock:
                session.pending[message.message_id] = _Pending(message.kind, message.run_id, message.round_no)
            session.outq.put(encoded)

    def _sent_entry(self, message: Message) -> Callable[[EncodedMessage], str]:
        """The audit's "sent" entry of an instruction, written once its digests are known (see send)."""
        query = message.payload.config.get("query") if message.kind is MessageKind.QUERY else None
        fields = {
            "site": message.site,
            "kind": message.kind.value,
            "round_no": message.round_no,
            "message_id": message.message_id,
            **({"query": str(query)[:100]} if query is not None else {}),
        }

        def log_sent(encoded: EncodedMessage) -> str:
            self._audit("sent", **fields, records=audit_records(encoded.header))
            return ""

        return log_sent

    def receive(self, *, timeout_s: float) -> Iterator[Message]:
        """Yield complete, validated replies in arrival order until the deadline."""
        deadline = time.monotonic() + timeout_s
        token: int | None = None
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    message, token = self._replies.get(timeout=remaining)
                except queue.Empty:
                    return
                yield message
                del message  # hold nothing once the consumer moves on (O(1) replies in memory)
                if token is not None:
                    self._inflight.release(token)
                    token = None
        finally:
            if token is not None:
                self._inflight.release(token)

    def finish(self, reason: str) -> None:
        """Tell every site the run is over (protocol 1.2+), then :meth:`close`.

        Waits up to 5 s for the frame to be sent; sites then stop reconnecting to this run.
        """
        with self._lock:
            sessions = [s for s in self._sessions.values() if s.alive and s.credit]
        frame = pb.ServerFrame(finished=pb.Finished(run_id=self.study.run_id, reason=reason[:500]))
        for session in sessions:
            session.outq.put(frame)
            session.outq.put(None)  # the stream ends right after it
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(s.alive for s in sessions):
            time.sleep(0.05)
        self._audit("finished_sent", run_id=self.study.run_id, reason=reason[:500], sites=len(sessions))
        self.close()

    def close(self) -> None:
        """End every session and stop the server (1 s grace)."""
        self._closed.set()
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.outq.put(None)
        self._server.stop(grace=1.0).wait(5)

    # -- sessions -----------------------------------------------------------------------

    def _audit(self, event: str, **fields: object) -> None:
        if self.audit is not None:
            self.audit.append(event, **fields)

    def _serve(self, requests: Iterator[SiteFrame], context: grpc.ServicerContext) -> Iterator[pb.ServerFrame | bytes]:
        """One site's session (see the module docstring for the checks, in order)."""
        auth = context.auth_context()
        cns = auth.get("x509_common_name") or []
        cn = cns[0].decode(errors="replace") if cns else ""
        peer = context.peer()
        if cn not in self.allowed:
            self._audit("refused", peer=peer, site=cn, reason="certificate CN not allow-listed")
            log.warning("refused %s: certificate CN %r is not allow-listed", peer, cn)
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"certificate CN {cn!r} is not allow-listed for study {self.study.study!r}",
            )
        site = SiteId(cn)
        timer = threading.Timer(_HANDSHAKE_TIMEOUT_S, context.cancel)  # a silent peer cannot hold a thread
        timer.daemon = True
        timer.start()
        first = _next_frame(requests)
        if first is None or first.WhichOneof("frame") != "hello":
            timer.cancel()
            self._audit("refused", site=site, reason="no hello")
            yield pb.ServerFrame(refusal=pb.Refusal(reason="protocol error: the first frame must be a hello"))
            return
        hello = first.hello
        problem = compatibility_problem(hello.protocol_version)
        if problem is None and hello.site and hello.site != cn:
            problem = f"the hello names site {hello.site[:64]!r} but the certificate says {cn!r}"
        if problem is not None:
            timer.cancel()
            self._audit("refused", site=site, protocol=hello.protocol_version[:20], reason=problem)
            yield pb.ServerFrame(refusal=pb.Refusal(reason=problem))
            return
        yield pb.ServerFrame(
            welcome=pb.Welcome(
                protocol_version=PROTOCOL_VERSION,
                study=self.study.study,
                run_id=self.study.run_id,
                task=self.study.task,
                task_hash=self.study.task_hash,
                max_message_bytes=self.max_message_bytes,
                chunk_bytes=self.chunk_bytes,
                server_time_unix_ms=int(time.time() * 1000),
            )
        )
        answer = _next_frame(requests)
        timer.cancel()
        if answer is None or answer.WhichOneof("frame") != "join":
            reason = answer.refusal.reason[:500] if answer is not None and answer.HasField("refusal") else "no join"
            self._audit("declined", site=site, reason=reason)
            log.info("site %s declined study %s: %s", site, self.study.study, reason)
            return
        session = _Session(site=site, context=context)
        session.credit = (parse_version(hello.protocol_version) or (0, 0)) >= (1, 2)
        session.digest_at_end = speaks(hello.protocol_version, "1.3") and speaks(PROTOCOL_VERSION, "1.3")
        self._register(session, hello.protocol_version)
        reader = threading.Thread(target=self._read, args=(session, requests), daemon=True, name=f"fedcare-rx-{site}")
        reader.start()
        try:
            while session.alive:
                item = session.outq.get()
                if item is None:
                    break
                if isinstance(item, EncodedMessage):
                    yield from item.frames(pb.ServerFrame, self.chunk_bytes)
                else:
                    yield item
        finally:
            self._unregister(session, "stream closed")

    def _register(self, session: _Session, version: str) -> None:
        with self._changed:
            old = self._sessions.get(session.site)
            self._sessions[session.site] = session
            self._changed.notify_all()
        if old is not None:
            self._end(old, "replaced by a new connection from the same site")
        self._audit("joined", site=session.site, protocol=version[:20], peer=session.context.peer())
        log.info("site %s joined (protocol %s)", session.site, version)

    def _unregister(self, session: _Session, why: str) -> None:
        with self._changed:
            if self._sessions.get(session.site) is session:
                del self._sessions[session.site]
                self._changed.notify_all()
        self._end(session, why)

    def _end(self, session: _Session, why: str) -> None:
        with self._lock:
            if not session.alive:
                return
            session.alive = False
            pending = dict(session.pending)
            session.pending.clear()
        session.outq.put(None)
        for mid, p in pending.items():
            self._replies.put((self._error_reply(session.site, mid, p, f"site disconnected ({why})"), None))
        self._audit("left", site=session.site, reason=why, pending=len(pending))
        log.info("site %s left: %s", session.site, why)

    @staticmethod
    def _error_reply(site: SiteId, reply_to: str, p: _Pending, error: str) -> Message:
        return Message(
            kind=p.kind, run_id=RunId(p.run_id), round_no=p.round_no, site=site, reply_to=reply_to, error=error
        )

    def _read(self, session: _Session, requests: Iterator[SiteFrame]) -> None:
        assembler = MessageAssembler(
            max_message_bytes=self.max_message_bytes,
            where=f"reply from {session.site}",
            pool=self._pool,
            require_digest=session.credit,
        )
        skip = ""  # id of a rejected message whose remaining frames are dropped
        reply_to = ""  # what the message being assembled answers
        token: int | None = None  # bytes of the reply being assembled, counted in the budget
        try:
            for frame in requests:
                which = frame_kind(frame)
                try:
                    if which == "header":
                        reply_to = frame.header.reply_to
                        if assembler.busy:
                            raise ProtocolError(f"reply from {session.site}: a header arrived mid-message")
                        skip = ""
                        if frame.header.records:
                            size = max(0, sum(r.size_bytes for r in frame.header.records))
                            if not self._acquire(session, size):
                                return
                            token = size
                            self._start(session, assembler, frame.header)
                        else:
                            assembler.start(frame.header)
                    elif which == "chunk":
                        chunk = frame if isinstance(frame, RawChunk) else frame.chunk
                        if not (skip and chunk.message_id == skip):
                            session.holding_since = time.monotonic()
                            assembler.add(chunk)
                    elif which == "end":
                        if skip and frame.end.message_id == skip:
                            skip = ""
                            continue
                        # no local name for the reply: this thread must not keep the last one alive
                        header = assembler.header
                        session.holding_since = None
                        self._deliver(session, assembler.finish(frame.end), header, token)
                        token, reply_to = None, ""
                    elif which == "bad":
                        raise ProtocolError(f"reply from {session.site}: {frame.reason}")  # type: ignore[union-attr]
                    elif which != "ping":
                        raise ProtocolError(f"reply from {session.site}: unexpected {which or 'empty'} frame")
                except ProtocolError as exc:
                    skip = assembler.current_id or (frame.header.message_id if which == "header" else "")
                    assembler.reset()
                    session.holding_since = None
                    if token is not None:
                        self._inflight.release(token)
                        token = None
                    self._reject(session, reply_to, exc)
                    reply_to = ""
        except grpc.RpcError:
            pass
        except Exception:  # never let a reader thread die silently
            log.exception("reader for %s failed", session.site)
        finally:
            if token is not None:
                self._inflight.release(token)
            self._unregister(session, "stream closed")
            try:
                session.context.cancel()
            except Exception:  # pragma: no cover - context already done
                pass

    def _start(self, session: _Session, assembler: MessageAssembler, header: pb.MessageHeader) -> None:
        """Begin a reply with records (this session has the turn) and give the site its go-ahead."""
        try:
            assembler.start(header)
        except ProtocolError as exc:
            if session.credit:  # tell the site not to send the rest
                refusal = pb.Proceed(message_id=header.message_id[:128], refusal=str(exc)[:500])
                session.outq.put(pb.ServerFrame(proceed=refusal))
            raise
        session.holding_since = time.monotonic()
        if session.credit:
            session.outq.put(pb.ServerFrame(proceed=pb.Proceed(message_id=header.message_id)))

    def _watch_stalls(self) -> None:
        """Disconnect a site that has the turn to send and sends nothing (it would block the others)."""
        while not self._closed.wait(min(1.0, self.stall_timeout_s / 4)):
            with self._lock:
                sessions = list(self._sessions.values())
            now = time.monotonic()
            for session in sessions:
                since = session.holding_since
                if since is not None and now - since > self.stall_timeout_s:
                    session.holding_since = None
                    why = f"sent nothing for {self.stall_timeout_s:g} s while it had the turn to send a reply"
                    log.warning("disconnecting site %s: %s", session.site, why)
                    self._audit("stalled", site=session.site, reason=why)
                    session.context.cancel()

    def _acquire(self, session: _Session, size: int) -> bool:
        while session.alive and not self._closed.is_set():
            if self._inflight.acquire(size, timeout_s=0.5):
                return True
        return False

    def _deliver(self, session: _Session, reply: Message, header: pb.MessageHeader, token: int | None) -> None:
        with self._lock:
            sent = session.pending.pop(reply.reply_to or "", None)
        if sent is None or reply.site != session.site:
            if token is not None:
                self._inflight.release(token)
            self._audit(
                "ignored", site=session.site, message_id=reply.message_id[:64], reason="answers nothing pending"
            )
            log.warning("ignored a reply from %s that answers no pending instruction", session.site)
            return
        self._audit(
            "received",
            site=session.site,
            kind=reply.kind.value,
            round_no=reply.round_no,
            reply_to=reply.reply_to,
            error=reply.error,
            records=audit_records(header),
            site_audit_head=header.audit_head[:80],
        )
        self._replies.put((reply, token))

    def _reject(self, session: _Session, reply_to: str, exc: ProtocolError) -> None:
        log.warning("malformed frame from %s: %s", session.site, exc)
        self._audit("malformed", site=session.site, reply_to=reply_to[:64], error=str(exc)[:500])
        with self._lock:
            if not reply_to and len(session.pending) == 1:  # its header was unreadable: one thing is pending
                reply_to = next(iter(session.pending))
            sent = session.pending.pop(reply_to, None)
        if sent is not None:
            self._replies.put((self._error_reply(session.site, reply_to, sent, f"malformed reply: {exc}"), None))


def _check_port_free(listen: str) -> None:
    """Refuse a ``host:port`` another process listens on, before gRPC tries (and logs its own error).

    The probe sets SO_REUSEADDR like gRPC does, so connections of an earlier server still
    in TIME_WAIT do not count; a listening socket does, on Linux and macOS alike.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) == 0:
        return  # port 0 picks a free one; other forms are left to gRPC
    host = host.strip("[]") or "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):
        return
    for family, kind, proto, _, address in infos[:1]:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(
                        f"cannot listen on {listen}: the port is already in use (is another fedcare server running?)"
                    ) from None


def _next_frame(requests: Iterator[SiteFrame]) -> pb.SiteFrame | None:
    try:
        frame = next(requests, None)
    except grpc.RpcError:
        return None
    return frame if isinstance(frame, pb.SiteFrame) else None  # a chunk is no handshake frame
