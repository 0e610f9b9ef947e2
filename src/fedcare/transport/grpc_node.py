"""The site's side of deployment: dial out, join a study, answer instructions.

:class:`GrpcNodeAgent` opens one outbound gRPC stream to the coordinator (mutual TLS;
through an HTTPS proxy when ``https_proxy``/``grpc_proxy`` is set or ``proxy`` is
given), says hello with its protocol version, checks that the study it is welcomed
into is one its config opts in to, then answers instructions by calling
:meth:`fedcare.runtime.node.SiteNode.handle` (the site's policy: approved task hashes,
and whatever the privacy and secure-aggregation rules add). Every incoming message is
assembled and validated by :class:`~fedcare.transport.wire.MessageAssembler` before
use; a malformed instruction gets an error reply, never a crash.

When the server or the network goes away the agent reconnects with exponential
backoff (with jitter); a refusal by the server (not allow-listed, incompatible
protocol) or a study the site did not opt in to ends it with a clear error instead.

Audit trail (site side): instruction received (kind, round, sizes, task hash),
refused (reason), executed (duration), and what left the site (kind, sizes, BLAKE3
digest of each record; the coordinator's "received" entry names the same digest). With a
coordinator at protocol 1.3 a large reply is hashed while it streams and its "sent" entry
is logged after its last chunk, before the end frame that makes the reply count.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import grpc

from fedcare.errors import PolicyError, ProtocolError, TransportError
from fedcare.protocols import AuditSink
from fedcare.runtime.policy import SitePolicy
from fedcare.transport.frames import RawChunk, connect_stub, frame_kind
from fedcare.transport.grpc_server import grpc_options, share_malloc_arena
from fedcare.transport.proto import fedcare_pb2 as pb
from fedcare.transport.tls import TlsFiles, client_credentials, issuer_problem
from fedcare.transport.version import PROTOCOL_VERSION, parse_version, speaks
from fedcare.transport.wire import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    BufferPool,
    EncodedMessage,
    MessageAssembler,
    audit_records,
    encode_message,
)
from fedcare.types import Message, MessageKind

__all__ = ["Backoff", "GrpcNodeAgent", "describe_rpc_error"]

log = logging.getLogger(__name__)

#: An assembled instruction and what its audit entry says of its records (name, size, BLAKE3).
_Instruction = tuple[Message, list[dict[str, object]]]

#: Handler of one instruction (usually ``SiteNode.handle``).
Handler = Callable[[Message], Message]
_OutQueue = queue.SimpleQueue[pb.SiteFrame | EncodedMessage | None]


@dataclass
class Backoff:
    """Exponential backoff with full jitter: ``uniform(0, min(max, initial * 2**n))``."""

    initial_s: float = 0.5
    max_s: float = 30.0
    attempt: int = 0

    def next_delay(self) -> float:
        """Delay before the next attempt (and count the attempt)."""
        cap = min(self.max_s, self.initial_s * (2.0**self.attempt))
        self.attempt += 1
        return cap * (0.5 + 0.5 * secrets.randbelow(1_000_000) / 1_000_000)

    def reset(self) -> None:
        """Back to the initial delay (after a successful join)."""
        self.attempt = 0


def describe_rpc_error(exc: grpc.RpcError) -> str:
    """One line a site's IT officer can act on, from a gRPC error."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    low = details.lower()
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"the coordinator refused this site: {details}"
    if "handshake" in low or "ssl" in low or "certificate" in low or "tls" in low:
        return (
            f"TLS handshake with the coordinator failed ({details}); check that ca/cert/key are the study's "
            "(run `fedcare doctor`)"
        )
    if code == grpc.StatusCode.UNAVAILABLE and ("socket closed" in low or "connection reset" in low):
        return (
            f"the coordinator closed the connection during the TLS handshake ({details}): it may have "
            "rejected this site's certificate; run `fedcare doctor`"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"the coordinator is unreachable ({details})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the coordinator did not answer in time ({details})"
    return f"{code.name if code else 'error'}: {details}"


class _RunOver(Exception):
    """The coordinator said its run is over (a Finished frame)."""


class _Fatal(Exception):
    """The server or the site's own policy ended the session for good."""


class GrpcNodeAgent:
    """Keep a site connected to its coordinator and answer instructions.

    Parameters
    ----------
    site : str
        This site's name; must equal the CN of its certificate.
    handler : Handler
        Answers one instruction (``SiteNode.handle``).
    address : str
        Coordinator ``host:port``.
    tls : TlsFiles
        Study CA, site certificate and key.
    studies : Sequence[str]
        Studies this site opts in to; any other study is declined.
    audit : AuditSink or None (default: None)
        The site's audit trail.
    proxy : str or None (default: None)
        HTTPS proxy URL (``http://host:port``); ``None`` uses the standard environment
        variables (``grpc_proxy``, ``https_proxy``, ``http_proxy``, ``no_proxy``).
    server_name : str or None (default: None)
        Name expected in the server certificate when it differs from the address host.
    chunk_bytes : int (default: 4 MiB)
        Chunk size of outgoing records.
    max_message_bytes : int (default: 2 GiB)
        Largest instruction accepted.
    backoff : Backoff or None (default: None)
        Reconnection policy (0.5 s doubling to 30 s).
    connect_timeout_s : float (default: 10.0)
        Deadline for the TCP + TLS + hello/welcome exchange.
    """

    def __init__(
        self,
        *,
        site: str,
        handler: Handler,
        address: str,
        tls: TlsFiles,
        studies: Sequence[str],
        audit: AuditSink | None = None,
        proxy: str | None = None,
        server_name: str | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        backoff: Backoff | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.site = site
        self.handler = handler
        self.address = address
        self.tls = tls
        self.studies = frozenset(studies)
        self.audit = audit
        self.proxy = proxy
        self.server_name = server_name
        self.chunk_bytes = chunk_bytes
        self.max_message_bytes = max_message_bytes
        self.backoff = backoff or Backoff()
        self.connect_timeout_s = connect_timeout_s
        self.stop_event = threading.Event()
        self.run_id: str | None = None
        self.joined = threading.Event()
        self._joins = 0  # sessions joined so far
        self._pool = BufferPool()  # receive buffers kept across rounds and reconnections
        share_malloc_arena(chunk_bytes)  # before gRPC starts its threads (see the function)

    def _audit(self, event: str, **fields: object) -> None:
        if self.audit is not None:
            self.audit.append(event, **fields)

    # -- lifecycle -------------------------------------------------------------------------

    def run_forever(self, *, max_attempts: int | None = None, exit_after_run: bool = False) -> None:
        """Connect, serve, reconnect with backoff; return when stopped.

        When the coordinator says its run is over (protocol 1.2), the agent returns if
        ``exit_after_run``, else it waits for the next run, reconnecting at the backoff's
        pace without counting failures.

        Raises
        ------
        TransportError
            The coordinator refused this site (allow-list, protocol version) or
            ``max_attempts`` consecutive connection attempts failed.
        PolicyError
            The coordinator runs a study this site's config does not opt in to.
        """
        failures = 0
        between_runs = False  # the last run finished: a coordinator that is not up is expected
        while not self.stop_event.is_set():
            joins = self._joins
            try:
                self.serve_once()
                failures = 0
            except _RunOver as exc:
                failures, between_runs = 0, True
                if exit_after_run:
                    log.info("site %s: %s; exiting", self.site, exc)
                    return
                log.info("site %s: %s; waiting for the next run", self.site, exc)
            except _Fatal as exc:
                raise exc.__cause__ or TransportError(str(exc)) from None
            except TransportError as exc:
                failures += 1
                between_runs = between_runs and self._joins == joins  # still no new run joined
                (log.info if between_runs else log.warning)("site %s: %s", self.site, exc)
                if max_attempts is not None and failures >= max_attempts:
                    raise
            if self.stop_event.is_set():
                return
            delay = self.backoff.next_delay()
            log.info("site %s: reconnecting in %.1f s", self.site, delay)
            self.stop_event.wait(delay)

    def stop(self) -> None:
        """Ask :meth:`run_forever` to return (closes the current stream)."""
        self.stop_event.set()
        call = getattr(self, "_call", None)
        if call is not None:
            call.cancel()

    def _channel(self) -> grpc.Channel:
        options: list[tuple[str, int | str]] = list(grpc_options(self.chunk_bytes))
        # the server picks its chunk size (at most 64 MiB): accept any legal chunk from it
        options = [o for o in options if o[0] != "grpc.max_receive_message_length"]
        options += [
            ("grpc.max_receive_message_length", 65 * 1024 * 1024),
            ("grpc.initial_reconnect_backoff_ms", 500),
            ("grpc.max_reconnect_backoff_ms", 10_000),
            # The agent reconnects itself (Backoff). gRPC's own transparent retry of a Connect
            # that a stopping coordinator answered with GOAWAY could leave the site waiting on
            # no server for a minute or more (seen about once in 25 runs of two queries served
            # back to back on one port); without it the attempt fails and the agent retries.
            ("grpc.enable_retries", 0),
        ]
        if self.proxy:
            options.append(("grpc.http_proxy", self.proxy))
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.secure_channel(self.address, client_credentials(self.tls), options=options)

    def serve_once(self) -> None:
        """One session: handshake, then answer instructions until the stream ends.

        Raises
        ------
        TransportError
            The connection failed or broke (the caller retries).
        _Fatal
            A refusal that retrying cannot fix.
        _RunOver
            The coordinator said its run is over.
        """
        link = _Link(self.chunk_bytes)
        channel = self._channel()
        try:
            link.outq.put(
                pb.SiteFrame(
                    hello=pb.Hello(protocol_version=PROTOCOL_VERSION, software_version=_software(), site=self.site)
                )
            )
            call = connect_stub(channel)(self._requests(link))
            self._call = call
            try:
                self._session(call, link)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED and self.stop_event.is_set():
                    return
                message = describe_rpc_error(exc)
                problem = issuer_problem(self.tls) if exc.code() == grpc.StatusCode.UNAVAILABLE else None
                if problem is not None:  # the coordinator refuses it at every attempt: say so, stop
                    message = f"the coordinator rejected this site's certificate: {problem}; run `fedcare doctor`"
                self._audit("connection_failed", reason=message[:500])
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED or problem is not None:
                    raise _Fatal(message) from TransportError(message)
                raise TransportError(message) from None
        finally:
            link.close()
            self._call = None
            self.joined.clear()
            channel.close()

    def _requests(self, link: _Link) -> Iterator[pb.SiteFrame | bytes]:
        """The site's side of the stream: queued frames, and each reply's chunks after its go-ahead."""
        while True:
            item = link.outq.get()
            if item is None:
                return
            if not isinstance(item, EncodedMessage):
                yield item
                continue
            frames = item.frames(pb.SiteFrame, link.chunk_bytes)
            mid = item.header.message_id
            if link.credit and item.records:
                link.expect(mid)
                yield next(frames)  # the header; the chunks wait for the coordinator's Proceed
                refusal = link.wait_proceed(mid)
                if refusal is None:
                    return  # the stream closed while waiting
                if refusal:
                    frames.close()
                    log.warning("site %s: the coordinator refused reply %s: %s", self.site, mid, refusal)
                    self._audit("reply_refused", message_id=mid, reason=refusal[:500])
                    item.sent.set()
                    continue
            try:
                yield from frames
            except Exception:  # its "sent" entry could not be logged: the end frame must not leave
                log.exception("site %s: reply %s not completed", self.site, mid)
                link.close()
                return

    def _session(self, call: Iterator[RawChunk | pb.ServerFrame], link: _Link) -> None:
        timer = threading.Timer(self.connect_timeout_s, call.cancel)  # type: ignore[attr-defined]
        timer.daemon = True
        timer.start()
        try:
            first = next(call, None)
        finally:
            timer.cancel()
        if first is None:
            raise TransportError("the coordinator closed the stream before welcoming this site")
        if not isinstance(first, pb.ServerFrame):  # a chunk, or bytes that are no frame at all
            raise TransportError("protocol error: the coordinator's first frame is not a welcome")
        if first.WhichOneof("frame") == "refusal":
            reason = first.refusal.reason[:500]
            self._audit("refused_by_server", reason=reason)
            message = f"the coordinator refused this site: {reason}"
            raise _Fatal(message) from TransportError(message)
        if first.WhichOneof("frame") != "welcome":
            raise TransportError("protocol error: the coordinator's first frame is not a welcome")
        welcome = first.welcome
        refusal = SitePolicy(studies=self.studies).study_refusal(welcome.study)
        if refusal is not None:
            reason = refusal.removeprefix("refused: ")
            link.outq.put(pb.SiteFrame(refusal=pb.Refusal(reason=reason)))
            self._audit("declined_study", study=welcome.study, run_id=welcome.run_id, reason=reason)
            raise _Fatal(reason) from PolicyError(refusal)
        skew_s = time.time() - welcome.server_time_unix_ms / 1000.0
        link.outq.put(pb.SiteFrame(join=pb.Join(study=welcome.study)))
        self.run_id = welcome.run_id
        self._audit(
            "joined",
            study=welcome.study,
            run_id=welcome.run_id,
            task=welcome.task,
            task_hash=welcome.task_hash,
            protocol=welcome.protocol_version,
            clock_skew_s=round(skew_s, 3),
        )
        log.info("site %s joined study %s (run %s)", self.site, welcome.study, welcome.run_id)
        self.backoff.reset()
        self._joins += 1
        self.joined.set()
        limit = min(self.max_message_bytes, welcome.max_message_bytes or self.max_message_bytes)
        # the server's gRPC message limit is its chunk size + 1 MiB: never send larger chunks
        link.chunk_bytes = min(self.chunk_bytes, welcome.chunk_bytes or self.chunk_bytes)
        link.credit = (parse_version(welcome.protocol_version) or (0, 0)) >= (1, 2)
        link.digest_at_end = speaks(welcome.protocol_version, "1.3") and speaks(PROTOCOL_VERSION, "1.3")
        # Instructions are answered on their own thread, so that this one keeps reading the
        # stream (the coordinator's Proceed for a reply arrives while the next task may run).
        work: queue.SimpleQueue[_Instruction | None] = queue.SimpleQueue()
        worker = threading.Thread(
            target=self._work, args=(work, welcome.run_id, link, limit), daemon=True, name=f"fedcare-{self.site}"
        )
        worker.start()
        link.on_close(lambda: work.put(None))
        try:
            self._read(call, link, work)
        finally:
            link.close()
            # let the instruction at hand finish before a new session can start another
            worker.join(None if not self.stop_event.is_set() else 5.0)
        if link.finished:
            raise _RunOver(link.finished)
        raise TransportError("the coordinator closed the stream")

    def _read(
        self,
        call: Iterator[RawChunk | pb.ServerFrame],
        link: _Link,
        work: queue.SimpleQueue[_Instruction | None],
    ) -> None:
        """Read frames until the stream ends: instructions to the worker, go-aheads to the sender."""
        assembler = MessageAssembler(
            max_message_bytes=self.max_message_bytes,
            where="instruction",
            pool=self._pool,
            require_digest=link.credit,
        )
        skip = ""
        header: pb.MessageHeader | None = None
        for frame in call:
            which = frame_kind(frame)
            try:
                if which == "header":
                    header = frame.header  # type: ignore[union-attr]
                    skip = ""
                    assembler.start(header)
                elif which == "chunk":
                    chunk = frame if isinstance(frame, RawChunk) else frame.chunk
                    if not (skip and chunk.message_id == skip):
                        assembler.add(chunk)
                elif which == "end":
                    if skip and frame.end.message_id == skip:  # type: ignore[union-attr]
                        skip = ""
                        continue
                    message = assembler.finish(frame.end)  # type: ignore[union-attr]
                    assert header is not None  # finish() succeeded: a header started this message
                    work.put((message, audit_records(header)))  # digests as received, checked
                    del message
                elif which == "proceed":
                    link.proceed(frame.proceed)  # type: ignore[union-attr]
                elif which == "finished":
                    finished = frame.finished  # type: ignore[union-attr]
                    link.finished = f"run {finished.run_id[:200]!r} finished: {finished.reason[:500]}"
                    self._audit("run_finished", run_id=finished.run_id[:200], reason=finished.reason[:500])
                elif which == "bad":
                    raise ProtocolError(f"instruction stream: {frame.reason}")  # type: ignore[union-attr]
                elif which != "ping":
                    raise ProtocolError(f"instruction stream: unexpected {which or 'empty'} frame")
            except ProtocolError as exc:
                skip = assembler.current_id or (header.message_id if header is not None else "")
                assembler.reset()
                log.warning("site %s: malformed instruction: %s", self.site, exc)
                self._audit("malformed", error=str(exc)[:500])
                if header is not None:
                    self._send_error(header, f"malformed instruction: {exc}", link.outq)

    # -- one instruction -------------------------------------------------------------------

    def _work(self, work: queue.SimpleQueue[_Instruction | None], run_id: str, link: _Link, limit: int) -> None:
        """Answer instructions in arrival order until the session closes."""
        while (item := work.get()) is not None:
            message, records = item
            del item
            try:
                self._answer(message, records, run_id, link, limit)
            except Exception as exc:  # never let the worker die silently, nor the coordinator wait
                log.exception("site %s: answering %s failed", self.site, message.kind.value)
                self._answer_failed(message, exc, link)
            del message  # hold nothing while waiting for the next instruction

    def _answer_failed(self, message: Message, exc: Exception, link: _Link) -> None:
        """Send an (audited) error reply, so the coordinator need not wait for its deadline."""
        instruction = pb.MessageHeader(
            message_id=message.message_id,
            kind=message.kind.value,
            run_id=message.run_id,
            round_no=message.round_no,
        )
        try:
            self._send_error(instruction, f"site error: {type(exc).__name__}: {exc}", link.outq)
        except Exception:  # the audit log itself fails: nothing leaves unlogged
            log.exception("site %s: could not log an error reply either; nothing sent", self.site)

    def _answer(self, message: Message, records: list[dict[str, object]], run_id: str, link: _Link, limit: int) -> None:
        # The previous reply streams from its arrays' memory: let it leave before the
        # site runs anything that could change them (and the digest its audit logged).
        previous = link.last_reply
        while previous is not None and not previous.sent.wait(0.5):
            if link.closed.is_set():
                return
        self._audit(
            "received",
            kind=message.kind.value,
            run_id=message.run_id,
            round_no=message.round_no,
            message_id=message.message_id,
            task_hash=str(message.payload.config.get("task_hash", "")),
            records=records,
            **({"query": str(message.payload.config.get("query"))[:100]} if message.kind is MessageKind.QUERY else {}),
        )
        started = time.perf_counter()
        if message.run_id != run_id:
            reply = message.reply(error=f"refused: run {message.run_id!r} is not the run this site joined ({run_id!r})")
        else:
            try:
                reply = self.handler(message)
            except Exception as exc:  # a failing task is an error reply, not a dead node
                log.exception("site %s: %s failed", self.site, message.kind.value)
                reply = message.reply(error=f"{type(exc).__name__}: {exc}")
        if reply.has_error:
            event = "refused" if (reply.error or "").startswith("refused") else "failed"
            self._audit(event, kind=message.kind.value, round_no=message.round_no, reason=(reply.error or "")[:500])
        else:
            self._audit(
                "executed",
                kind=message.kind.value,
                round_no=message.round_no,
                duration_s=round(time.perf_counter() - started, 4),
            )
        encoded = encode_message(reply, digest_now=not link.digest_at_end)
        if encoded.size_bytes > limit:
            reply = message.reply(error=f"reply of {encoded.size_bytes} bytes exceeds the limit of {limit}")
            encoded = encode_message(reply)
        fields = {
            "kind": reply.kind.value,
            "round_no": reply.round_no,
            "reply_to": reply.reply_to,
            "error": reply.error is not None,
            "metrics": sorted(reply.payload.metrics),
        }

        def log_sent(sent: EncodedMessage) -> str:
            """The "sent" entry, with every digest; returns the anchor the coordinator records."""
            self._audit("sent", **fields, records=audit_records(sent.header))
            return self.audit.head if self.audit is not None else ""

        if link.digest_at_end:  # logged after the last chunk, the anchor travels in the end frame
            encoded.on_end = log_sent
        else:  # logged now, the anchor travels in the header
            encoded.header.audit_head = log_sent(encoded)
        link.last_reply = encoded
        link.outq.put(encoded)  # expanded into chunks lazily by the request stream

    def _send_error(self, header: pb.MessageHeader, error: str, outq: _OutQueue) -> None:
        reply = pb.MessageHeader(
            message_id=secrets.token_hex(16),
            kind=header.kind[:40],
            run_id=header.run_id[:200],
            round_no=header.round_no,
            site=self.site,
            reply_to=header.message_id[:128],
            has_error=True,
            error=error[:2000],
        )
        self._audit("sent", kind=reply.kind, round_no=reply.round_no, reply_to=reply.reply_to, error=True, records=[])
        if self.audit is not None:
            reply.audit_head = self.audit.head
        outq.put(pb.SiteFrame(header=reply))
        outq.put(pb.SiteFrame(end=pb.MessageEnd(message_id=reply.message_id)))


class _Link:
    """One stream's state shared by its reader, its instruction worker and its sender."""

    def __init__(self, chunk_bytes: int) -> None:
        self.outq: _OutQueue = queue.SimpleQueue()
        self.closed = threading.Event()
        self.chunk_bytes = chunk_bytes
        self.credit = False  # the coordinator speaks 1.2+: wait for its Proceed before chunks
        self.digest_at_end = False  # the coordinator speaks 1.3+: large replies are hashed while they stream
        self.last_reply: EncodedMessage | None = None
        self.finished = ""  # the coordinator's Finished, as one line
        self._answers: dict[str, str | None] = {}  # awaited message id -> refusal ("" = go ahead)
        self._cond = threading.Condition()
        self._on_close: list[Callable[[], None]] = []

    def expect(self, message_id: str) -> None:
        """A header is about to be sent: its Proceed will be awaited."""
        with self._cond:
            self._answers[message_id] = None

    def proceed(self, frame: pb.Proceed) -> None:
        """The coordinator's go-ahead (or refusal) for a message this site is waiting to send."""
        with self._cond:
            if frame.message_id in self._answers:  # anything else answers nothing and is ignored
                self._answers[frame.message_id] = frame.refusal or ""
                self._cond.notify_all()

    def wait_proceed(self, message_id: str) -> str | None:
        """Wait for the answer to ``message_id``: "" to go ahead, a reason if refused, None if closed."""
        with self._cond:
            while self._answers.get(message_id) is None:
                if self.closed.is_set():
                    return None
                self._cond.wait(0.5)
            return self._answers.pop(message_id)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the stream closes."""
        self._on_close.append(callback)

    def close(self) -> None:
        """End the stream: the sender stops, waiters return, callbacks run (once)."""
        if self.closed.is_set():
            return
        self.closed.set()
        self.outq.put(None)
        for callback in self._on_close:
            callback()


def _software() -> str:
    try:
        from importlib.metadata import version

        return version("fedcare")
    except Exception:  # running from a source tree
        return "dev"
