"""``fedcare doctor``: check a site's path to the coordinator, one step at a time.

Steps, in order; the first failure stops the walk and says what to do:

1. files: CA, certificate and key readable; the certificate's CN is the site name, it
   was issued by the study CA and is within its validity period; the key is private.
2. name resolution of the coordinator's host (or of the proxy's).
3. TCP connection (through the HTTPS proxy with CONNECT when one is configured).
4. TLS handshake with mutual authentication, and the server certificate's validity.
5. protocol: hello/welcome over gRPC (version compatibility, allow-list, study opt-in)
   and the clock skew against the coordinator.

The doctor never joins a study: it declines after the welcome. Nothing is sent
anywhere else (no telemetry).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import grpc

from fedcare.deploy.config import SiteConfig
from fedcare.transport.grpc_node import describe_rpc_error
from fedcare.transport.grpc_server import grpc_options
from fedcare.transport.proto import fedcare_pb2 as pb
from fedcare.transport.proto import fedcare_pb2_grpc as pb_grpc
from fedcare.transport.tls import cert_info, client_credentials
from fedcare.transport.version import PROTOCOL_VERSION

__all__ = ["Check", "run_doctor"]

_SKEW_LIMIT_S = 60.0
_EXPIRY_WARN_DAYS = 30


@dataclass(frozen=True)
class Check:
    """One step's outcome: ``ok`` is False for a failure; ``advice`` says what to do."""

    step: str
    ok: bool
    detail: str
    advice: str = ""
    warning: bool = False


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _proxy_for(cfg: SiteConfig) -> str | None:
    if cfg.proxy:
        return cfg.proxy
    host, _ = _split(cfg.address)
    no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    if any(
        h.strip() and (host == h.strip() or host.endswith("." + h.strip().lstrip("."))) for h in no_proxy.split(",")
    ):
        return None
    for var in ("grpc_proxy", "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        if os.environ.get(var):
            return os.environ[var]
    return None


def _connect(cfg: SiteConfig, timeout_s: float) -> socket.socket:
    host, port = _split(cfg.address)
    proxy = _proxy_for(cfg)
    if proxy is None:
        return socket.create_connection((host, port), timeout=timeout_s)
    url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    sock = socket.create_connection((url.hostname or "", url.port or 3128), timeout=timeout_s)
    request = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if url.username:
        token = base64.b64encode(f"{url.username}:{url.password or ''}".encode()).decode()
        request += f"Proxy-Authorization: Basic {token}\r\n"
    sock.sendall((request + "\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response and len(response) < 8192:
        data = sock.recv(1024)
        if not data:
            break
        response += data
    status = response.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200" not in status:
        sock.close()
        raise ConnectionError(f"the proxy {url.hostname}:{url.port} answered CONNECT with {status!r}")
    return sock


def run_doctor(
    cfg: SiteConfig, *, timeout_s: float = 5.0, report: Callable[[Check], None] | None = None
) -> list[Check]:
    """Run the checks in order; return them (the last one failed if any did)."""
    checks: list[Check] = []

    def add(check: Check) -> bool:
        checks.append(check)
        if report is not None:
            report(check)
        return check.ok

    # 1. files
    try:
        ca_pem, cert_pem, _key = cfg.tls.read()
        mine, ca = cert_info(cert_pem), cert_info(ca_pem)
    except Exception as exc:
        add(Check("files", False, str(exc), "point [server] ca/cert/key at the files `fedcare certs` made"))
        return checks
    now = dt.datetime.now(dt.UTC)
    if mine.subject_cn != cfg.site:
        add(
            Check(
                "files",
                False,
                f"certificate CN is {mine.subject_cn!r}, the config says site {cfg.site!r}",
                "use the certificate issued for this site, or fix [site] name",
            )
        )
        return checks
    if mine.issuer_cn != ca.subject_cn:
        add(
            Check(
                "files",
                False,
                f"certificate issued by {mine.issuer_cn!r}, not by the study CA {ca.subject_cn!r}",
                "ask the coordinator for a certificate signed by the study CA",
            )
        )
        return checks
    if not mine.not_before <= now <= mine.not_after:
        add(
            Check(
                "files",
                False,
                f"certificate valid {mine.not_before:%Y-%m-%d} to {mine.not_after:%Y-%m-%d}",
                "expired or not yet valid: ask the coordinator for a new certificate (and check the clock)",
            )
        )
        return checks
    mode = os.stat(cfg.tls.key).st_mode & 0o777
    days = mine.days_left(now)
    warn = days < _EXPIRY_WARN_DAYS or mode & 0o077
    detail = f"site {cfg.site}, certificate valid for {days:.0f} more days, key mode {mode:o}"
    advice = ""
    if mode & 0o077:
        advice = f"chmod 600 {cfg.tls.key}"
    elif days < _EXPIRY_WARN_DAYS:
        advice = "renew the certificate soon"
    add(Check("files", True, detail, advice, warning=bool(warn)))

    # 2. name resolution
    host, port = _split(cfg.address)
    proxy = _proxy_for(cfg)
    target = urlparse(proxy if "://" in proxy else f"http://{proxy}").hostname if proxy else host
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo(target, None)}
    except (socket.gaierror, UnicodeError) as exc:
        add(
            Check(
                "name resolution",
                False,
                f"{target}: {exc}",
                "check the address in [server] (or the proxy), and the site's DNS",
            )
        )
        return checks
    add(Check("name resolution", True, f"{target} -> {', '.join(sorted(addrs))}" + (" (proxy)" if proxy else "")))

    # 3. TCP
    started = time.perf_counter()
    try:
        sock = _connect(cfg, timeout_s)
    except (OSError, ConnectionError) as exc:
        add(
            Check(
                "tcp",
                False,
                f"{cfg.address}{' via ' + proxy if proxy else ''}: {exc}",
                "the coordinator is down, or a firewall/proxy blocks outbound connections to this port",
            )
        )
        return checks
    add(
        Check(
            "tcp",
            True,
            f"connected to {cfg.address} in {1000 * (time.perf_counter() - started):.0f} ms"
            + (f" via proxy {proxy}" if proxy else ""),
        )
    )

    # 4. TLS
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode())
        with tempfile.TemporaryDirectory() as tmp:  # ssl wants files; the key stays 0600 in a private dir
            cpath, kpath = Path(tmp) / "c.pem", Path(tmp) / "k.pem"
            cpath.write_bytes(cert_pem)
            fd = os.open(kpath, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(_key)
            ctx.load_cert_chain(cpath, kpath)
        ctx.set_alpn_protocols(["h2"])
        with ctx.wrap_socket(sock, server_hostname=cfg.server_name or host) as tls:
            der = tls.getpeercert(binary_form=True)
            version = tls.version()
    except (ssl.SSLError, OSError) as exc:
        add(
            Check(
                "tls",
                False,
                f"handshake failed: {exc}",
                "the server certificate is not from this study's CA, or the name does not match "
                "(set [server] server_name), or a proxy intercepts TLS",
            )
        )
        return checks
    from cryptography import x509

    peer = x509.load_der_x509_certificate(der or b"")
    left = (peer.not_valid_after_utc - now).total_seconds() / 86400
    add(
        Check(
            "tls",
            True,
            f"{version}, server certificate valid for {left:.0f} more days",
            "the server certificate expires soon: tell the coordinator" if left < _EXPIRY_WARN_DAYS else "",
            warning=left < _EXPIRY_WARN_DAYS,
        )
    )

    # 5. protocol (gRPC hello/welcome) and clock skew
    options: list[tuple[str, int | str]] = list(grpc_options(4 * 1024 * 1024))
    if cfg.proxy:
        options.append(("grpc.http_proxy", cfg.proxy))
    if cfg.server_name:
        options.append(("grpc.ssl_target_name_override", cfg.server_name))
    channel = grpc.secure_channel(cfg.address, client_credentials(cfg.tls), options=options)
    try:
        frames = iter([pb.SiteFrame(hello=pb.Hello(protocol_version=PROTOCOL_VERSION, site=cfg.site))])
        sent = time.time()
        first = next(pb_grpc.FederationStub(channel).Connect(_then_decline(frames), timeout=timeout_s), None)
        received = time.time()
    except grpc.RpcError as exc:
        add(
            Check(
                "protocol",
                False,
                describe_rpc_error(exc),
                "ask the coordinator to allow-list this site's certificate name"
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED
                else "check the coordinator's log",
            )
        )
        return checks
    finally:
        channel.close()
    if first is None or first.WhichOneof("frame") != "welcome":
        reason = first.refusal.reason if first is not None and first.HasField("refusal") else "no welcome"
        add(Check("protocol", False, f"the coordinator refused: {reason}", "install a compatible fedcare version"))
        return checks
    w = first.welcome
    skew = (sent + received) / 2 - w.server_time_unix_ms / 1000.0
    opted = w.study in cfg.studies
    add(
        Check(
            "protocol",
            opted,
            f"protocol {PROTOCOL_VERSION} (coordinator {w.protocol_version}), study "
            f"{w.study!r}, run {w.run_id!r}, task {w.task} {w.task_hash[:12]}…",
            "" if opted else f"this site does not opt in to study {w.study!r}: add it to [policy] studies to join",
        )
    )
    if not opted:
        return checks
    rule = cfg.site_policy().approval_rule(w.task_hash)
    approved = rule is not None
    if not add(
        Check(
            "task",
            approved,
            f"task hash {w.task_hash} " + (f"is approved ({rule})" if approved else "is NOT approved"),
            ""
            if approved
            else "review the task and add its hash to [policy] approved_task_hashes "
            "(or trust a reviewer who signed it: docs/tasks.md)",
        )
    ):
        return checks
    add(
        Check(
            "clock",
            abs(skew) <= _SKEW_LIMIT_S,
            f"clock skew {skew:+.2f} s against the coordinator",
            ""
            if abs(skew) <= _SKEW_LIMIT_S
            else "synchronise this machine's clock (NTP); certificates and the audit trail depend on it",
        )
    )
    return checks


def _then_decline(frames: object) -> object:
    yield from frames  # type: ignore[misc]
    time.sleep(0.2)
    yield pb.SiteFrame(refusal=pb.Refusal(reason="fedcare doctor check: not joining"))
