"""A study's certificates (``cryptography`` x509) and gRPC mutual-TLS credentials.

One study CA signs the server's certificate and every site's certificate. A site's
identity is the subject common name (CN) of its certificate; the server allow-lists
CNs. Private keys are written with mode 0600 and never logged.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedcare.errors import ConfigError
from fedcare.transport.tls_files import TlsFiles

if TYPE_CHECKING:  # grpc (half a second to import) only where credentials are made
    import grpc

__all__ = [
    "issuer_problem",
    "CertInfo",
    "TlsFiles",
    "cert_info",
    "client_credentials",
    "create_ca",
    "issue_certificate",
    "server_credentials",
]

CertKind = Literal["server", "site"]


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def create_ca(out_dir: Path, *, study: str, days: int = 3650) -> tuple[Path, Path]:
    """Create a study CA (ECDSA P-256): ``ca.pem`` and ``ca.key`` (0600) in ``out_dir``.

    Refuses to overwrite an existing CA key (that would orphan every issued certificate).
    """
    out_dir = Path(out_dir)
    cert_path, key_path = out_dir / "ca.pem", out_dir / "ca.key"
    if key_path.exists():
        raise ConfigError(f"{key_path} already exists; refusing to replace the study CA")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fedcare study CA {study}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def issue_certificate(
    ca_dir: Path,
    out_dir: Path,
    *,
    name: str,
    kind: CertKind,
    hosts: tuple[str, ...] = (),
    days: int = 825,
    force: bool = False,
) -> tuple[Path, Path]:
    """Issue ``<name>.pem`` and ``<name>.key`` (0600) signed by the CA in ``ca_dir``.

    Parameters
    ----------
    ca_dir : Path
        Folder holding ``ca.pem`` and ``ca.key``.
    out_dir : Path
        Where the certificate and key are written.
    name : str
        Subject CN: the site's identity (what the server allow-lists) or the server's name.
    kind : {"server", "site"}
        Server certificates get serverAuth and SANs; site certificates get clientAuth.
    hosts : tuple[str, ...] (default: ())
        DNS names / IP addresses the server is reached at (SANs); ``name`` is added.
    days : int (default: 825)
        Validity period.
    force : bool (default: False)
        Replace an existing ``<name>.key`` / ``<name>.pem``; without it they are refused,
        since replacing a site's key silently locks the deployed site out.
    """
    existing = [p for p in (Path(out_dir) / f"{name}.key", Path(out_dir) / f"{name}.pem") if p.exists()]
    if existing and not force:
        raise ConfigError(
            f"{existing[0]} already exists; replacing it would lock out whoever uses it "
            "(pass --force to issue a new certificate and key anyway)"
        )
    if not name or any(c in name for c in "/\\\0") or len(name) > 64:
        raise ConfigError(f"certificate name {name!r} must be 1-64 characters without slashes")
    if kind not in ("server", "site"):
        raise ConfigError(f"certificate kind must be 'server' or 'site', got {kind!r}")
    try:
        ca_cert = x509.load_pem_x509_certificate((Path(ca_dir) / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((Path(ca_dir) / "ca.key").read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the study CA in {ca_dir}: {exc}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{ca_dir}/ca.key is not an EC key made by `fedcare certs init`")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    sans: list[x509.GeneralName] = []
    for host in (name, *hosts) if kind == "server" else (name,):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / f"{name}.pem", out_dir / f"{name}.key"
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


@dataclass(frozen=True)
class CertInfo:
    """What `fedcare doctor` shows about a certificate."""

    subject_cn: str
    issuer_cn: str
    not_before: dt.datetime
    not_after: dt.datetime

    def days_left(self, now: dt.datetime | None = None) -> float:
        """Days until expiry (negative once expired)."""
        now = now or dt.datetime.now(dt.UTC)
        return (self.not_after - now).total_seconds() / 86400


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def cert_info(pem: bytes) -> CertInfo:
    """Parse a PEM certificate's subject, issuer and validity."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ConfigError(f"not a PEM certificate: {exc}") from None
    return CertInfo(
        subject_cn=_cn(cert.subject),
        issuer_cn=_cn(cert.issuer),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server side of mutual TLS: present our certificate, REQUIRE a client cert from the CA."""
    import grpc

    ca, cert, key = files.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def client_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Site side of mutual TLS: trust only the study CA, present the site certificate."""
    import grpc

    ca, cert, key = files.read()
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def issuer_problem(files: TlsFiles) -> str | None:
    """Why the study CA in ``files`` did not sign the certificate in ``files``, or None if it did.

    What a coordinator's TLS checks first: a site whose certificate another CA signed is
    refused during the handshake, which the site only sees as a closed socket.
    """
    try:
        cert = x509.load_pem_x509_certificate(Path(files.cert).read_bytes())
        ca = x509.load_pem_x509_certificate(Path(files.ca).read_bytes())
    except (OSError, ValueError):
        return None  # unreadable files are reported where they are loaded
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return (
            f"this site's certificate {files.cert} was issued by {_cn(cert.issuer)!r}, "
            f"not by the study CA {_cn(ca.subject)!r} in {files.ca}"
        )
    return None
