"""Transport benchmark: gRPC + mutual TLS on loopback vs in process.

1. Throughput, each direction, for models of 10 MB, 100 MB, 1 GB and one site in another
   process: download = server encodes, hashes (BLAKE3, audit trail) and streams the model,
   the site assembles and validates it; upload = the same from the site to the server.
   Beside it, in the same run: bare grpcio streaming 4 MiB messages one way with the
   same TLS credentials (no protocol, no validation), and the same without TLS, which
   shows the ceiling TLS itself sets on this machine.
2. Server memory while 10 sites (threads of one separate process) each upload a full
   model of ``--rss-mb`` MB, three rounds, folded into a float32 running sum as replies
   arrive (what a streaming strategy does): peak RSS of a fresh server process above
   its RSS once the sites joined, as a multiple of the model size. The accumulator
   itself (1x) is included.
3. Per-round overhead (BENCHMARKS.md workload 1): FedAvg over N = 10 shift sites,
   P = 1M float32, R = 10 rounds, no evaluation: seconds per round over gRPC (sites in
   one separate process) vs InProcessChannel; checks the closed form.

Prints a table, then one JSON line. Usage: ``python benchmarks/transport.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import psutil

from fedcare.runtime.coordinator import Coordinator
from fedcare.runtime.recorder import RunSpec
from fedcare.strategies.fedavg import FedAvg
from fedcare.transport.grpc_node import Backoff, GrpcNodeAgent
from fedcare.transport.grpc_server import GrpcChannel, StudyInfo
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


def run_sites(address: str, root: Path, n: int) -> None:
    agents = []
    for k in range(n):
        agent = GrpcNodeAgent(
            site=f"site-{k:02d}",
            handler=shift_reply(k),
            address=address,
            tls=tls(root, f"site-{k:02d}"),
            studies=["bench"],
            backoff=Backoff(initial_s=0.05, max_s=0.5),
        )
        threading.Thread(target=agent.run_forever, daemon=True).start()
        agents.append(agent)
    sys.stdin.read()  # the parent closes stdin to stop us
    for agent in agents:
        agent.stop()


def spawn_sites(port: int, root: Path, n: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, __file__, "--sites", str(n), "--address", f"127.0.0.1:{port}", "--certs", str(root)],
        stdin=subprocess.PIPE,
        env=env,
    )


# -- server side ----------------------------------------------------------------------------------


def channel(root: Path, n: int) -> GrpcChannel:
    return GrpcChannel(
        listen="127.0.0.1:0",
        tls=tls(root, "hub"),
        allowed_sites=[f"site-{k:02d}" for k in range(n)],
        study=StudyInfo("bench", "bench-run", "shift", "0" * 64),
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


def throughput(root: Path, sizes_mb: list[int], repeats: int) -> dict[str, dict[str, float]]:
    """One-way transfer times of a model, each direction, one site in another process.

    download: the server encodes, hashes and streams the model; the site assembles and
    validates it and answers with a 4-byte reply. upload: a 4-byte instruction; the site
    encodes, hashes and streams its model, the server assembles and validates it. Each
    time is the whole exchange, so it includes one small message's round trip.
    """
    ch = channel(root, 1)
    proc = spawn_sites(ch.port, root, 1)
    results: dict[str, dict[str, float]] = {}
    tiny = {"w": np.zeros(1, dtype=np.float32)}
    try:
        ch.wait_for_sites(1, timeout_s=120)
        site = [SiteId("site-00")]
        for size in sizes_mb:
            floats = size * MB // 4
            model = {"w": np.linspace(-1, 1, floats, dtype=np.float32)}
            down, up = [], []
            for attempt in range(repeats + 1):  # the first of each is a warm-up
                t0 = time.perf_counter()
                (reply,) = exchange(ch, model, site, {"reply_floats": 1})
                t1 = time.perf_counter()
                assert reply.error is None, reply.error
                (reply,) = exchange(ch, tiny, site, {"reply_floats": floats})
                t2 = time.perf_counter()
                assert reply.error is None and reply.payload.arrays["model"]["w"].shape == (floats,)
                del reply
                if attempt:
                    down.append(t1 - t0)
                    up.append(t2 - t1)
            results[f"{size}MB"] = {
                "download_s_median": float(np.median(down)),
                "upload_s_median": float(np.median(up)),
                "download_MB_per_s": size / float(np.median(down)),
                "upload_MB_per_s": size / float(np.median(up)),
            }
            r = results[f"{size}MB"]
            print(
                f"  {size:5d} MB  fedcare   download {r['download_MB_per_s']:6.0f} MB/s   "
                f"upload {r['upload_MB_per_s']:6.0f} MB/s"
            )
            del model
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=30)
        ch.close()
    return results


def bare_client(address: str, root: Path | None, size_mb: int, repeats: int) -> None:
    """Child process: upload size_mb in 4 MiB messages to a bare service, then download as much.

    With ``root`` the channel uses the study's TLS certificates; without, plaintext.
    """
    opts = [("grpc.max_send_message_length", 5 * MB), ("grpc.max_receive_message_length", 5 * MB)]
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
        chunk = os.urandom(4 * MB)
        n = size_mb // 4
        up, down = [], []
        for attempt in range(repeats + 1):  # the first is a warm-up
            t0 = time.perf_counter()
            assert int(upload(iter([chunk] * n))) == n * len(chunk)
            t1 = time.perf_counter()
            assert sum(len(c) for c in download(str(n).encode())) == n * len(chunk)
            t2 = time.perf_counter()
            if attempt:
                up.append(t1 - t0)
                down.append(t2 - t1)
    print(json.dumps({"upload": up, "download": down}), flush=True)


def bare_grpc(root: Path, sizes_mb: list[int], repeats: int, *, secure: bool = True) -> dict[str, dict[str, float]]:
    """Baseline: bare grpcio one-way streams of 4 MiB messages: no protocol, no validation.

    ``secure``: the same mutual TLS as fedcare; without, plaintext, which shows what TLS
    itself costs on this machine.
    """
    chunk = os.urandom(4 * MB)

    def up(requests, context):
        return str(sum(len(r) for r in requests)).encode()

    def down(request, context):
        for _ in range(int(request)):
            yield chunk

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare",
        {"Up": grpc.stream_unary_rpc_method_handler(up), "Down": grpc.unary_stream_rpc_method_handler(down)},
    )
    server = grpc.server(
        ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_send_message_length", 5 * MB), ("grpc.max_receive_message_length", 5 * MB)],
    )
    server.add_generic_rpc_handlers((handler,))
    if secure:
        port = server.add_secure_port("127.0.0.1:0", server_credentials(tls(root, "hub")))
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    label = "bare gRPC" if secure else "plaintext"
    results = {}
    try:
        for size in sizes_mb:
            command = [sys.executable, __file__, "--bare", str(size), "--address", f"127.0.0.1:{port}"]
            command += ["--certs", str(root) if secure else "", "--repeats", str(repeats)]
            out = subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=True,
                timeout=900,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            times = json.loads(out.stdout.strip().splitlines()[-1])
            r = {f"{k}_MB_per_s": size / float(np.median(v)) for k, v in times.items()}
            results[f"{size}MB"] = r
            print(
                f"  {size:5d} MB  {label:9s} download {r['download_MB_per_s']:6.0f} MB/s   "
                f"upload {r['upload_MB_per_s']:6.0f} MB/s"
            )
    finally:
        server.stop(0)
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
    parser.add_argument("--rss-mb", default="100,1024", help="model sizes of the memory probe (comma-separated)")
    parser.add_argument("--sites", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rss-probe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sites:
        run_sites(args.address, Path(args.certs), args.sites)
        return
    if args.rss_probe:
        print(json.dumps(rss_while_receiving(Path(args.certs), args.rss_probe, 10)))
        return
    if args.bare:
        bare_client(args.address, Path(args.certs) if args.certs else None, args.bare, args.repeats)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs(root, 10)
        sizes = [10, 100] if args.quick else [10, 100, 1024]
        repeats = 2 if args.quick else args.repeats
        print(f"one-way throughput (loopback, gRPC + mutual TLS, 4 MiB chunks, median of {repeats}, MB = 2^20 B):")
        plaintext = bare_grpc(root, sizes, repeats, secure=False)
        bare = bare_grpc(root, sizes, repeats)
        tp = throughput(root, sizes, repeats)
        print("server memory while receiving:")
        rss_sizes = [10] if args.quick else [int(x) for x in args.rss_mb.split(",")]
        rss = {f"{size}MB": rss_in_fresh_process(root, size, 10) for size in rss_sizes}
        print("per-round overhead (workload 1):")
        pr = per_round(root, 10, 1_000_000, 10)
    print(
        json.dumps(
            {
                "benchmark": "transport",
                "bare_grpc_plaintext_MB_per_s": plaintext,
                "bare_grpc_MB_per_s": bare,
                "throughput": tp,
                "server_rss": rss,
                "per_round": pr,
            }
        )
    )


if __name__ == "__main__":
    main()
