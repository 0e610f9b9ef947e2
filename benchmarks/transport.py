"""Transport benchmark: gRPC + mutual TLS on loopback vs in process.

1. Throughput: one site (a separate process) echoes a model of 10 MB, 100 MB, 1 GB back
   to the server: MB/s = 2 x size / round-trip (download + upload, including safetensors
   encode/decode, sha256 for the audit trail on both sides, validation).
2. Server memory while 10 sites (threads of one separate process) each upload a full
   model of ``--rss-mb`` MB: peak RSS increase of the server process above its RSS
   before the uploads, as a multiple of the model size; the server folds each reply
   into a float32 running sum as it arrives (what a streaming strategy does).
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


def shift_reply(k: int):
    """Site k returns x + 1e-3 (k+1) with num_examples = k+1 (workload 1)."""

    def handle(message: Message) -> Message:
        w = message.payload.arrays["model"]["w"]
        size = message.payload.config.get("reply_floats")
        if isinstance(size, int):
            out = np.full(size, np.float32(k + 1))  # an upload of a given size, whatever was received
        elif message.payload.config.get("echo"):
            out = w
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
    ch = channel(root, 1)
    proc = spawn_sites(ch.port, root, 1)
    results: dict[str, dict[str, float]] = {}
    try:
        ch.wait_for_sites(1, timeout_s=120)
        for size in sizes_mb:
            state = {"w": np.linspace(-1, 1, size * MB // 4, dtype=np.float32)}
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                (reply,) = exchange(ch, state, [SiteId("site-00")], {"echo": True})
                times.append(time.perf_counter() - t0)
                assert reply.error is None, reply.error
                assert reply.payload.arrays["model"]["w"].shape == state["w"].shape
                del reply
            med = float(np.median(times))
            results[f"{size}MB"] = {
                "roundtrip_s_median": med,
                "MB_per_s": 2 * size / med,
                "MB_per_s_best": 2 * size / min(times),
            }
            print(
                f"  {size:5d} MB  round trip {med:6.3f} s  -> {2 * size / med:7.0f} MB/s "
                f"(best {2 * size / min(times):.0f})"
            )
            del state
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=30)
        ch.close()
    return results


def bare_client(address: str, root: Path, size_mb: int, repeats: int) -> None:
    """Child process: stream size_mb of 4 MiB chunks to a bare echo service and read them back."""
    creds = grpc.ssl_channel_credentials(
        (root / "ca.pem").read_bytes(), (root / "site-00.key").read_bytes(), (root / "site-00.pem").read_bytes()
    )
    opts = [("grpc.max_send_message_length", 5 * MB), ("grpc.max_receive_message_length", 5 * MB)]
    with grpc.secure_channel(address, creds, options=opts) as ch:
        echo = ch.stream_stream("/bench.Bare/Echo", request_serializer=None, response_deserializer=None)
        chunk = bytes(4 * MB)
        n = size_mb // 4
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            got = sum(len(c) for c in echo(iter([chunk] * n)))
            times.append(time.perf_counter() - t0)
            assert got == n * len(chunk)
    print(json.dumps(times), flush=True)


def bare_grpc(root: Path, size_mb: int, repeats: int) -> float:
    """Baseline: bare grpcio echo stream with the same TLS and chunk size, no protocol, no validation."""

    def echo(requests, context):
        yield from requests

    handler = grpc.method_handlers_generic_handler("bench.Bare", {"Echo": grpc.stream_stream_rpc_method_handler(echo)})
    server = grpc.server(
        ThreadPoolExecutor(max_workers=4),
        options=[("grpc.max_send_message_length", 5 * MB), ("grpc.max_receive_message_length", 5 * MB)],
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls(root, "hub")))
    server.start()
    try:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--bare",
                str(size_mb),
                "--address",
                f"127.0.0.1:{port}",
                "--certs",
                str(root),
                "--repeats",
                str(repeats),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        times = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.stop(0)
    med = float(np.median(times))
    print(f"  {size_mb:5d} MB  bare grpcio echo (same TLS, 4 MiB chunks) {med:6.3f} s -> {2 * size_mb / med:7.0f} MB/s")
    return 2 * size_mb / med


def rss_while_receiving(root: Path, size_mb: int, n: int) -> dict[str, float]:
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
        acc = np.zeros(floats, dtype=np.float32)
        # a tiny instruction; each site answers with a full-size model (the receive side alone)
        payload = Payload(arrays={"model": {"w": np.zeros(4, dtype=np.float32)}}, config={"reply_floats": floats})
        base = me.memory_info().rss
        ch.send([Message(MessageKind.FIT, RunId("bench-run"), 1, s, payload) for s in sites])
        peak = base
        threading.Thread(target=sample, daemon=True).start()
        got = 0
        t0 = time.perf_counter()
        for reply in ch.receive(timeout_s=600):
            acc += reply.payload.arrays["model"]["w"]
            del reply
            got += 1
            if got == n:
                break
        elapsed = time.perf_counter() - t0
        stop.set()
        model = size_mb * MB
        out = {
            "model_MB": size_mb,
            "sites": n,
            "rss_before_MB": base / MB,
            "peak_rss_MB": peak / MB,
            "peak_increase_x_model": (peak - base) / model,
            "peak_total_x_model": peak / model,
            "receive_s": elapsed,
        }
        print(
            f"  receive {n} x {size_mb} MB: RSS {base / MB:.0f} MB before -> peak {peak / MB:.0f} MB "
            f"(+{(peak - base) / model:.2f} x model; total {peak / model:.2f} x model) in {elapsed:.2f} s"
        )
        return out
    finally:
        stop.set()
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(timeout=30)
        ch.close()


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
    parser.add_argument("--quick", action="store_true", help="10 and 100 MB only, 1 repeat, 10 MB RSS probe")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-mb", type=int, default=100)
    parser.add_argument("--sites", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sites:
        run_sites(args.address, Path(args.certs), args.sites)
        return
    if args.bare:
        bare_client(args.address, Path(args.certs), args.bare, args.repeats)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        certs(root, 10)
        sizes = [10, 100] if args.quick else [10, 100, 1024]
        repeats = 1 if args.quick else args.repeats
        print("throughput (loopback, gRPC + mutual TLS, 4 MiB chunks, echo = download + upload):")
        bare = {f"{size}MB": bare_grpc(root, size, repeats) for size in sizes if size <= 100}
        tp = throughput(root, sizes, repeats)
        print("server memory while receiving:")
        rss = rss_while_receiving(root, 10 if args.quick else args.rss_mb, 10)
        print("per-round overhead (workload 1):")
        pr = per_round(root, 10, 1_000_000, 10)
    print(
        json.dumps(
            {"benchmark": "transport", "bare_grpc_MB_per_s": bare, "throughput": tp, "server_rss": rss, "per_round": pr}
        )
    )


if __name__ == "__main__":
    main()
