"""Transport benchmark: gRPC + mutual TLS on loopback vs in process.

1. Throughput, each direction, for models of 10 MB, 100 MB, 1 GB and one site in another
   process: download = server encodes, hashes (BLAKE3, audit trail) and streams the model,
   the site assembles, checks the digest and validates it; upload = the same from the
   site to the server. Beside it, interleaved repeat by repeat in the same run: bare
   grpcio streaming messages of the same chunk size one way with the same TLS
   credentials (no protocol, no validation), the same without TLS, which shows the
   ceiling TLS itself sets on this machine, and bare grpcio + TLS doing fedcare's
   per-byte work at both ends (a copy and a BLAKE3 pass each, the finite check; no
   protocol), the ceiling of any protocol that keeps that work. Medians, ranges, CPU
   seconds of both ends per transfer, and the rate ratios within each repeat.
2. Server memory while 10 sites (threads of one separate process) each upload a full
   model of ``--rss-mb`` MB, three rounds, folded into a float32 running sum as replies
   arrive (what a streaming strategy does): peak RSS of a fresh server process above
   its RSS once the sites joined, as a multiple of the model size. The accumulator
   itself (1x) is included.
3. Per-round overhead (BENCHMARKS.md workload 1): FedAvg over N = 10 shift sites,
   P = 1M float32, R = 10 rounds, no evaluation: seconds per round over gRPC (sites in
   one separate process) vs InProcessChannel; checks the closed form.

Prints a table, then one JSON line. Usage: ``python benchmarks/transport.py [--quick]``
(``--sizes 100 --repeats 9 --skip-rss --skip-rounds`` for the throughput alone).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3
import grpc
import numpy as np
import psutil

from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.recorder import RunSpec
from fedcare.serde import all_finite
from fedcare.strategies.fedavg import FedAvg
from fedcare.transport.grpc_node import Backoff, GrpcNodeAgent
from fedcare.transport.grpc_server import GrpcChannel, StudyInfo, grpc_options
from fedcare.transport.inprocess import InProcessChannel
from fedcare.transport.tls import TlsFiles, create_ca, issue_certificate, server_credentials
from fedcare.types import FitResult, Message, MessageKind, Payload, RunId, SiteId

MB = 1024 * 1024


def certs(root: Path, n: int) -> None:
    create_ca(root, study="bench")
    issue_certificate(root, root, name="hub", kind="server", hosts=("127.0.0.1",))
    for k in range(n):
        issue_certificate(root, root, name=f"site-{k:02d}", kind="site")


def tls(root: Path, name: str) -> TlsFiles:
    return TlsFiles(root / "ca.pem", root / f"{name}.pem", root / f"{name}.key")


# -- the sites' process ---------------------------------------------------------------------------


_REPLIES: dict[int, np.ndarray] = {}
_REPLIES_LOCK = threading.Lock()


def shift_reply(k: int):
    """Site k returns x + 1e-3 (k+1) with num_examples = k+1 (workload 1).

    With ``reply_floats`` in the config it instead uploads a model of that many floats,
    whatever it received (one array per size shared by the process's sites, built before
    the timed exchanges).
    """

    def handle(message: Message) -> Message:
        w = message.payload.arrays["model"]["w"]
        size = message.payload.config.get("reply_floats")
        if isinstance(size, int):
            with _REPLIES_LOCK:
                if size not in _REPLIES:
                    for big in [n for n in _REPLIES if n > 1024]:  # hold one large reply at most
                        del _REPLIES[big]
                    _REPLIES[size] = np.linspace(-1, 1, size, dtype=np.float32)
                out = _REPLIES[size]
        else:
            out = w + np.float32(1e-3 * (k + 1))
        return message.reply(Payload(arrays={"model": {"w": out}}, metrics={"num_examples": float(k + 1)}))

    return handle


def run_sites(address: str, root: Path, n: int, chunk_bytes: int = 4 * MB) -> None:
    agents = []
    for k in range(n):
        agent = GrpcNodeAgent(
            site=f"site-{k:02d}",
            handler=shift_reply(k),
            address=address,
            tls=tls(root, f"site-{k:02d}"),
            studies=["bench"],
            backoff=Backoff(initial_s=0.05, max_s=0.5),
            chunk_bytes=chunk_bytes,
        )
        threading.Thread(target=agent.run_forever, daemon=True).start()
        agents.append(agent)
    sys.stdin.read()  # the parent closes stdin to stop us
    for agent in agents:
        agent.stop()


def spawn_sites(port: int, root: Path, n: int, chunk_bytes: int = 4 * MB) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--sites", str(n), "--address", f"127.0.0.1:{port}", "--certs", str(root)]
    return subprocess.Popen([*command, "--chunk-bytes", str(chunk_bytes)], stdin=subprocess.PIPE, env=env)


# -- server side ----------------------------------------------------------------------------------


def channel(root: Path, n: int, chunk_bytes: int = 4 * MB) -> GrpcChannel:
    return GrpcChannel(
        listen="127.0.0.1:0",
        tls=tls(root, "hub"),
        allowed_sites=[f"site-{k:02d}" for k in range(n)],
        study=StudyInfo("bench", "bench-run", "shift", "0" * 64),
        chunk_bytes=chunk_bytes,
    )


def exchange(ch: GrpcChannel, state: dict[str, np.ndarray], sites: list[SiteId], config: dict) -> list[Message]:
    payload = Payload(arrays={"model": state}, config=config)
    messages = [Message(MessageKind.FIT, RunId("bench-run"), 1, s, payload) for s in sites]
    ch.send(messages)
    out = []
    for reply in ch.receive(timeout_s=600):
        out.append(reply)
        if len(out) == len(messages):
            break
    return out


# -- one-way throughput: fedcare and bare grpcio, interleaved -----------------------------------


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


class Fedcare:
    """fedcare's server here, one site in another process: time one model one way.

    download: the server encodes, hashes (BLAKE3, audit trail) and streams the model; the
    site assembles it, checks its digest and validates it, and answers with a 4-byte
    reply. upload: a 4-byte instruction; the site encodes, hashes and streams its model,
    the server assembles, checks and validates it. Each time is the whole exchange, so it
    includes one small message's round trip.
    """

    def __init__(self, root: Path, chunk_bytes: int) -> None:
        self.ch = channel(root, 1, chunk_bytes)
        self.proc = spawn_sites(self.ch.port, root, 1, chunk_bytes)
        self.peer = psutil.Process(self.proc.pid)
        self.ch.wait_for_sites(1, timeout_s=120)
        self.model: dict[str, np.ndarray] = {}
        self.tiny = {"w": np.zeros(1, dtype=np.float32)}

    def prepare(self, size_mb: int) -> None:
        self.model = {}
        self.model = {"w": np.linspace(-1, 1, size_mb * MB // 4, dtype=np.float32)}

    def run(self, direction: str, size_mb: int) -> float:
        floats = size_mb * MB // 4
        site = [SiteId("site-00")]
        t0 = time.perf_counter()
        if direction == "download":
            (reply,) = exchange(self.ch, self.model, site, {"reply_floats": 1})
            assert reply.error is None, reply.error
        else:
            (reply,) = exchange(self.ch, self.tiny, site, {"reply_floats": floats})
            assert reply.error is None and reply.payload.arrays["model"]["w"].shape == (floats,), reply.error
        elapsed = time.perf_counter() - t0
        del reply
        return elapsed

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=30)
        self.ch.close()


class _Hasher:
    """BLAKE3 of a stream of pieces on a thread of its own, as fedcare's sender and receiver hash."""

    def __init__(self) -> None:
        self._pieces: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._hasher = blake3.blake3(max_threads=1)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (piece := self._pieces.get()) is not None:
            self._hasher.update(piece)

    def add(self, piece: memoryview) -> None:
        """Hash ``piece`` next (it must not change until :meth:`digest` returns)."""
        self._pieces.put(piece)

    def digest(self) -> str:
        """The hex digest, once every piece is hashed."""
        self._pieces.put(None)
        self._thread.join()
        return self._hasher.hexdigest()


#: fedcare's per-byte work, by piece: the sender's copy of each slice into its message and its
#: BLAKE3 pass, the receiver's copy of each message into one buffer, its BLAKE3 pass, the finite check.
WORK_PIECES = ("copy_out", "hash_out", "copy_in", "hash_in", "finite")


class Work:
    """fedcare's per-byte work on a one-way stream of messages, without its protocol (``--work``).

    Sender: each message is a copy of its slice of a float32 model behind a 2-byte prefix
    (``b"".join``, as fedcare's chunk frame), the model hashed with BLAKE3 on a thread as
    the slices leave. Receiver: each message copied into one buffer (as fedcare's
    assembler), hashed on a thread as it lands, the finite check of the whole model at the
    end. No header, no end frame, no digest comparison, no flow control: the per-byte work
    alone. ``pieces`` (a subset of :data:`WORK_PIECES`) leaves the others out: without
    ``copy_out`` the messages are one prebuilt bytes object as bare grpcio's, without
    ``copy_in`` the receiver hashes the messages themselves; ``finite`` needs ``copy_in``.
    """

    PREFIX = b"\x2a\x00"

    def __init__(self, pieces: Sequence[str] = WORK_PIECES) -> None:
        unknown = set(pieces) - set(WORK_PIECES)
        if unknown or ("finite" in pieces and "copy_in" not in pieces):
            raise ValueError(f"work pieces {sorted(pieces)}: each of {WORK_PIECES}, and finite only with copy_in")
        self.pieces = frozenset(pieces)
        self.model = np.zeros(0, dtype=np.float32)
        self.buffer = np.zeros(0, dtype=np.uint8)
        self.prebuilt = b""

    def prepare(self, nbytes: int, chunk_bytes: int) -> None:
        """Build the model and the receive buffer (touched) for messages totalling ``nbytes``."""
        if self.model.nbytes != nbytes:
            self.model = self.buffer = np.zeros(0, dtype=np.float32)
            self.model = np.linspace(-1, 1, nbytes // 4, dtype=np.float32)
            self.buffer = np.ones(nbytes, dtype=np.uint8)
        if len(self.prebuilt) != len(self.PREFIX) + chunk_bytes:
            self.prebuilt = self.PREFIX + os.urandom(chunk_bytes)

    def send(self, count: int, chunk_bytes: int) -> Iterator[bytes]:
        """The messages of one transfer, the model hashed as they leave."""
        self.prepare(count * chunk_bytes, chunk_bytes)
        data = memoryview(self.model).cast("B")
        hasher = _Hasher() if "hash_out" in self.pieces else None
        for i in range(count):
            piece = data[i * chunk_bytes : (i + 1) * chunk_bytes]
            if hasher is not None:
                hasher.add(piece)
            yield b"".join([self.PREFIX, piece]) if "copy_out" in self.pieces else self.prebuilt
        if hasher is not None:
            hasher.digest()

    def receive(self, messages: Iterator[bytes], nbytes: int, chunk_bytes: int) -> int:
        """Assemble the messages of one transfer; returns the byte count (raises if the model is not finite)."""
        self.prepare(nbytes, chunk_bytes)
        buffer = memoryview(self.buffer)
        hasher = _Hasher() if "hash_in" in self.pieces else None
        at = 0
        for message in messages:
            data = memoryview(message)[len(self.PREFIX) :]
            if "copy_in" in self.pieces:
                buffer[at : at + len(data)] = data
                data = buffer[at : at + len(data)]
            if hasher is not None:
                hasher.add(data)
            at += len(data)
        if hasher is not None:
            hasher.digest()
        if "finite" in self.pieces and not all_finite(self.buffer[:at].view(np.float32)):
            raise ValueError("received model is not finite")
        return at


def bare_client(address: str, root: Path | None, chunk_bytes: int, options: str, work: str = "") -> None:
    """Child process: for each line "up N" / "down N" on stdin, move N messages of chunk_bytes, print the time.

    With ``root`` the channel uses the study's TLS certificates; without, plaintext. With
    ``work`` ("+"-joined pieces) each end also does those pieces of fedcare's per-byte work
    (:class:`Work`).
    """
    opts = _bare_options(chunk_bytes, options)
    if root is None:
        channel_cm = grpc.insecure_channel(address, options=opts)
    else:
        creds = grpc.ssl_channel_credentials(
            (root / "ca.pem").read_bytes(), (root / "site-00.key").read_bytes(), (root / "site-00.pem").read_bytes()
        )
        channel_cm = grpc.secure_channel(address, creds, options=opts)
    with channel_cm as ch:
        upload = ch.stream_unary("/bench.Bare/Up", request_serializer=None, response_deserializer=None)
        download = ch.unary_stream("/bench.Bare/Down", request_serializer=None, response_deserializer=None)
        chunk = os.urandom(chunk_bytes)
        ends = Work(work.split("+")) if work else Work()
        for line in sys.stdin:
            direction, count = line.split()
            n = int(count)
            if work:
                ends.prepare(n * chunk_bytes, chunk_bytes)
            t0 = time.perf_counter()
            if direction == "up":
                requests = ends.send(n, chunk_bytes) if work else iter([chunk] * n)
                assert int(upload(requests)) == n * chunk_bytes
            elif work:
                assert ends.receive(download(str(n).encode()), n * chunk_bytes, chunk_bytes) == n * chunk_bytes
            else:
                assert sum(len(c) for c in download(str(n).encode())) == n * chunk_bytes
            print(time.perf_counter() - t0, flush=True)


def _bare_options(chunk_bytes: int, options: str) -> list[tuple[str, int]]:
    """gRPC options of the bare baseline: grpcio's defaults, or fedcare's (fixed stream window)."""
    if options == "fedcare":
        return [o for o in grpc_options(chunk_bytes) if not o[0].startswith(("grpc.keepalive", "grpc.http2.m"))]
    limit = chunk_bytes + MB
    return [("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)]


class Bare:
    """Bare grpcio one-way streams of chunk_bytes messages: no protocol, no validation.

    Server here, client in a child process, as fedcare's. ``secure``: the same mutual TLS
    as fedcare; without, plaintext, which shows what TLS itself costs on this machine.
    ``work``: both ends also do fedcare's per-byte work (:class:`Work`: a copy and a
    BLAKE3 pass at each end, the finite check at the receiver), the ceiling of any
    protocol that keeps that work, on this machine; or only the pieces named.
    """

    def __init__(self, root: Path, chunk_bytes: int, *, secure: bool, options: str, work: Sequence[str] = ()) -> None:
        self.chunk_bytes = chunk_bytes
        chunk = os.urandom(chunk_bytes)
        ends = self.ends = Work(work) if work else None

        def up(requests, context):
            if ends is not None:
                return str(ends.receive(requests, ends.buffer.nbytes, chunk_bytes)).encode()
            return str(sum(len(r) for r in requests)).encode()

        def down(request, context):
            if ends is not None:
                yield from ends.send(int(request), chunk_bytes)
                return
            for _ in range(int(request)):
                yield chunk

        handler = grpc.method_handlers_generic_handler(
            "bench.Bare",
            {"Up": grpc.stream_unary_rpc_method_handler(up), "Down": grpc.unary_stream_rpc_method_handler(down)},
        )
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4), options=_bare_options(chunk_bytes, options))
        self.server.add_generic_rpc_handlers((handler,))
        if secure:
            port = self.server.add_secure_port("127.0.0.1:0", server_credentials(tls(root, "hub")))
        else:
            port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        command = [sys.executable, __file__, "--bare", "--address", f"127.0.0.1:{port}"]
        command += ["--certs", str(root) if secure else "", "--chunk-bytes", str(chunk_bytes), "--options", options]
        self.proc = subprocess.Popen(
            [*command, *(["--work", "+".join(work)] if work else [])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        self.peer = psutil.Process(self.proc.pid)

    def prepare(self, size_mb: int) -> None:
        """Build the model and receive buffer of ``--work`` (the plain messages exist already)."""
        if self.ends is not None:
            self.ends.prepare(max(1, size_mb * MB // self.chunk_bytes) * self.chunk_bytes, self.chunk_bytes)

    def run(self, direction: str, size_mb: int) -> float:
        n = max(1, size_mb * MB // self.chunk_bytes)
        self.proc.stdin.write(f"{'down' if direction == 'download' else 'up'} {n}\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return float(self.proc.stdout.readline())  # type: ignore[union-attr]

    def close(self) -> None:
        self.proc.stdin.close()  # type: ignore[union-attr]
        self.proc.wait(timeout=30)
        self.server.stop(0)


def throughput(
    root: Path, sizes_mb: list[int], repeats: int, chunk_bytes: int, options: str, pieces: Sequence[str] = ()
) -> dict[str, Any]:
    """One-way transfers of fedcare, bare grpcio + TLS (with and without fedcare's work) and plaintext, interleaved.

    Each repeat runs every contender once per direction, in a rotating order, so a load
    that changes during the run (a shared machine) hits them alike. Per contender,
    direction and size: the median rate, its range, and the CPU seconds both processes
    spent per transfer; and the median and range, within the same repeat, of fedcare's
    rate over bare grpcio + TLS's, of fedcare's over bare grpcio + TLS doing fedcare's
    per-byte work (:class:`Work`), and of that over bare grpcio + TLS. ``pieces`` adds one
    contender per "+"-joined set of work pieces (``work[...]``), with its rate over bare
    grpcio + TLS's.
    """
    me = psutil.Process()
    contenders = {
        "plaintext": Bare(root, chunk_bytes, secure=False, options=options),
        "bare_tls": Bare(root, chunk_bytes, secure=True, options=options),
        "bare_tls_work": Bare(root, chunk_bytes, secure=True, options=options, work=WORK_PIECES),
        "fedcare": Fedcare(root, chunk_bytes),
    }
    for spec in pieces:
        contenders[f"work[{spec}]"] = Bare(root, chunk_bytes, secure=True, options=options, work=spec.split("+"))
    results: dict[str, Any] = {}
    try:
        for size in sizes_mb:
            for c in contenders.values():
                c.prepare(size)
            times: dict[tuple[str, str], list[float]] = {}
            cpu: dict[tuple[str, str], list[float]] = {}
            names = list(contenders)
            for attempt in range(repeats + 1):  # the first is a warm-up
                order = names[attempt % len(names) :] + names[: attempt % len(names)]
                for name in order:
                    c = contenders[name]
                    for direction in ("download", "upload"):
                        c0 = _cpu_s(me) + _cpu_s(c.peer)
                        elapsed = c.run(direction, size)
                        spent = _cpu_s(me) + _cpu_s(c.peer) - c0
                        if attempt:
                            times.setdefault((name, direction), []).append(elapsed)
                            cpu.setdefault((name, direction), []).append(spent)
            row: dict[str, Any] = {}
            for (name, direction), ts in times.items():
                rates = [size / t for t in ts]
                row.setdefault(name, {})[direction] = {
                    "MB_per_s_median": float(np.median(rates)),
                    "MB_per_s_min": float(min(rates)),
                    "MB_per_s_max": float(max(rates)),
                    "cpu_s_per_transfer_median": float(np.median(cpu[(name, direction)])),
                }
            pairs = {
                "fedcare_over_bare_tls": ("fedcare", "bare_tls", "fedcare / bare grpcio + TLS"),
                "fedcare_over_bare_tls_work": ("fedcare", "bare_tls_work", "fedcare / bare grpcio + TLS + work"),
                "bare_tls_work_over_bare_tls": ("bare_tls_work", "bare_tls", "bare + TLS + work / bare + TLS"),
                **{
                    f"{spec}_over_bare_tls": (f"work[{spec}]", "bare_tls", f"work[{spec}] / bare + TLS")
                    for spec in pieces
                },
            }
            for key, (num, den, _) in pairs.items():
                for direction in ("download", "upload"):
                    ratios = [b / f for f, b in zip(times[(num, direction)], times[(den, direction)], strict=True)]
                    row.setdefault(key, {})[direction] = {
                        "median": float(np.median(ratios)),
                        "min": float(min(ratios)),
                        "max": float(max(ratios)),
                    }
            results[f"{size}MB"] = row
            for name in names:
                parts = []
                for direction in ("download", "upload"):
                    r = row[name][direction]
                    parts.append(
                        f"{direction} {r['MB_per_s_median']:5.0f} "
                        f"({r['MB_per_s_min']:.0f}-{r['MB_per_s_max']:.0f}) MB/s, "
                        f"CPU {r['cpu_s_per_transfer_median'] * 1000:4.0f} ms"
                    )
                print(f"  {size:5d} MB  {name:13s}  " + "   ".join(parts))
            for key, (_, _, label) in pairs.items():
                ratio = row[key]
                print(
                    f"  {size:5d} MB  {label}, same repeat: "
                    + "   ".join(
                        f"{d} {ratio[d]['median']:.0%} ({ratio[d]['min']:.0%}-{ratio[d]['max']:.0%})"
                        for d in ("download", "upload")
                    )
                )
    finally:
        for c in contenders.values():
            c.close()
    return results


def rss_while_receiving(root: Path, size_mb: int, n: int, rounds: int = 6) -> dict[str, float]:
    """Server RSS while n sites each upload a model of size_mb, folded into a float32 sum.

    Runs in a fresh server process (``--rss``) so earlier phases leave nothing behind.
    ``base`` is the server's RSS once the sites have joined, before anything model-sized
    exists; the peak is sampled every 5 ms over ``rounds`` rounds (the first also has
    the sites build their replies). The increase counts everything the round needs:
    the accumulator, receive buffers, gRPC's stream windows.
    """
    ch = channel(root, n)
    proc = spawn_sites(ch.port, root, n)
    me = psutil.Process()
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, me.memory_info().rss)
            time.sleep(0.005)

    try:
        sites = ch.wait_for_sites(n, timeout_s=180)
        floats = size_mb * MB // 4
        # a tiny instruction; each site answers with a full-size model (the receive side alone)
        payload = Payload(arrays={"model": {"w": np.zeros(4, dtype=np.float32)}}, config={"reply_floats": floats})
        base = peak = me.memory_info().rss
        threading.Thread(target=sample, daemon=True).start()
        acc = np.zeros(floats, dtype=np.float32)
        acc.fill(0.0)  # the aggregator's running sum, touched: it is part of the round
        times: list[float] = []
        peaks: list[float] = []  # peak so far, after each round
        for round_no in range(1, rounds + 1):
            t0 = time.perf_counter()
            ch.send([Message(MessageKind.FIT, RunId("bench-run"), round_no, s, payload) for s in sites])
            got = 0
            for reply in ch.receive(timeout_s=600):
                assert reply.error is None, reply.error
                acc += reply.payload.arrays["model"]["w"]
                del reply
                got += 1
                if got == n:
                    break
            times.append(time.perf_counter() - t0)
            peaks.append((peak - base) / (size_mb * MB))
        stop.set()
        model = size_mb * MB
        return {
            "model_MB": size_mb,
            "sites": n,
            "rss_before_MB": base / MB,
            "peak_rss_MB": peak / MB,
            "peak_increase_x_model": (peak - base) / model,
            "peak_increase_x_model_after_each_round": peaks,
            "receive_s_last_round": times[-1],
        }
    finally:
        stop.set()
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=30)
        ch.close()


def rss_in_fresh_process(root: Path, size_mb: int, n: int) -> dict[str, float]:
    """Run :func:`rss_while_receiving` as its own server process and print its line."""
    command = [sys.executable, __file__, "--rss-probe", str(size_mb), "--certs", str(root)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=900)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"  receive {n} x {size_mb} MB, folded into a float32 sum: server RSS {r['rss_before_MB']:.0f} MB after "
        f"start-up -> peak {r['peak_rss_MB']:.0f} MB (+{r['peak_increase_x_model']:.2f} x model); "
        f"last round {r['receive_s_last_round']:.2f} s"
    )
    return r


class ShiftHandlers:
    """In-process twins of the sites' process (same arithmetic)."""

    @staticmethod
    def handlers(n: int):
        def make(k: int):
            def handle(message: Message) -> Message:
                w = message.payload.arrays["model"]["w"]
                result = FitResult(state={"w": w + np.float32(1e-3 * (k + 1))}, num_examples=k + 1)
                return message.reply(
                    Payload(arrays={"model": result.state}, metrics={"num_examples": float(result.num_examples)})
                )

            return handle

        return {SiteId(f"site-{k:02d}"): make(k) for k in range(n)}


def per_round(root: Path, n: int, p: int, rounds: int) -> dict[str, float]:
    x0 = np.linspace(-1, 1, p, dtype=np.float32)
    expected = x0 + rounds * 1e-3 * (2 * n + 1) / 3
    spec = RunSpec(RunId("bench-run"), "bench", "", "fedavg", "shift", "0" * 64, 0, rounds)

    def timed(ch: object) -> float:
        c = Coordinator(
            channel=ch,
            strategy=FedAvg(),
            task_name="shift",
            task_hash="0" * 64,
            rounds=rounds,
            evaluate=False,
            round_timeout_s=600,
        )
        t0 = time.perf_counter()
        result = c.run({"w": x0}, spec=spec)
        elapsed = (time.perf_counter() - t0) / rounds
        np.testing.assert_allclose(result.state.model["w"], expected, rtol=1e-5, atol=1e-6)
        return elapsed

    inproc = InProcessChannel(ShiftHandlers.handlers(n))
    t_in = timed(inproc)
    inproc.close()
    ch = channel(root, n)
    proc = spawn_sites(ch.port, root, n)
    try:
        ch.wait_for_sites(n, timeout_s=180)
        t_grpc = timed(ch)
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=30)
        ch.close()
    print(
        f"  N={n} P={p}: in-process {t_in * 1000:.1f} ms/round, gRPC+TLS {t_grpc * 1000:.1f} ms/round "
        f"(overhead {(t_grpc - t_in) * 1000:.1f} ms/round, x{t_grpc / t_in:.1f})"
    )
    return {
        "sites": n,
        "params": p,
        "rounds": rounds,
        "inprocess_s_per_round": t_in,
        "grpc_s_per_round": t_grpc,
        "overhead_s_per_round": t_grpc - t_in,
        "ratio": t_grpc / t_in,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 and 100 MB only, 2 repeats, 10 MB RSS probe")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="10,100,1024", help="model sizes in MB of the throughput runs")
    parser.add_argument("--chunk-bytes", type=int, default=4 * MB, help="chunk size of fedcare and bare grpcio alike")
    parser.add_argument(
        "--options",
        choices=("grpcio", "fedcare"),
        default="grpcio",
        help="gRPC options of the bare baseline: grpcio's defaults (BDP-probed windows) or fedcare's (fixed window)",
    )
    parser.add_argument("--rss-mb", default="100,1024", help="model sizes of the memory probe (comma-separated)")
    parser.add_argument("--skip-rss", action="store_true", help="no memory probe")
    parser.add_argument("--skip-rounds", action="store_true", help="no per-round overhead run")
    parser.add_argument("--sites", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--work-pieces",
        default="",
        help=(
            "also run bare grpcio + TLS with only these pieces of fedcare's per-byte work, one contender per "
            f"comma-separated set of '+'-joined pieces of {', '.join(WORK_PIECES)} (e.g. copy_out,copy_out+copy_in)"
        ),
    )
    parser.add_argument("--rss-probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sites:
        run_sites(args.address, Path(args.certs), args.sites, args.chunk_bytes)
        return
    if args.rss_probe:
        print(json.dumps(rss_while_receiving(Path(args.certs), args.rss_probe, 10)))
        return
    if args.bare:
        certs_dir = Path(args.certs) if args.certs else None
        bare_client(args.address, certs_dir, args.chunk_bytes, args.options, work=args.work)
        return
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs(root, 10)
        sizes = [10, 100] if args.quick else [int(x) for x in args.sizes.split(",")]
        repeats = 2 if args.quick else args.repeats
        print(
            f"one-way throughput (loopback, {args.chunk_bytes / MB:g} MiB chunks, bare grpcio with {args.options} "
            f"options, median (range) of {repeats} interleaved repeats, MB = 2^20 B):"
        )
        pieces = [p for p in args.work_pieces.split(",") if p]
        tp = throughput(root, sizes, repeats, args.chunk_bytes, args.options, pieces)
        rss: dict[str, Any] = {}
        if not args.skip_rss:
            print("server memory while receiving:")
            rss_sizes = [10] if args.quick else [int(x) for x in args.rss_mb.split(",")]
            rss = {f"{size}MB": rss_in_fresh_process(root, size, 10) for size in rss_sizes}
        pr: dict[str, float] = {}
        if not args.skip_rounds:
            print("per-round overhead (workload 1):")
            pr = per_round(root, 10, 1_000_000, 10)
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    print(
        json.dumps(
            {
                "benchmark": "transport",
                "chunk_bytes": args.chunk_bytes,
                "bare_options": args.options,
                "repeats": repeats,
                "load_average_before": load_before,
                "load_average_after": load_after,
                "throughput": tp,
                "server_rss": rss,
                "per_round": pr,
            }
        )
    )


if __name__ == "__main__":
    main()
