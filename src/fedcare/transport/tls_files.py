"""Where a party's TLS files are: a plain value the site and server files parse.

Kept apart from :mod:`fedcare.transport.tls` so that reading a configuration does not
import ``cryptography`` (a tenth of a second before the first configuration error).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedcare.errors import ConfigError

__all__ = ["TlsFiles"]


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the CA certificate, this party's certificate and its private key."""

    ca: Path
    cert: Path
    key: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """Return (ca, cert, key) PEM bytes; a missing file is a ConfigError naming it."""
        out = []
        for label, path in (("ca", self.ca), ("cert", self.cert), ("key", self.key)):
            try:
                out.append(Path(path).read_bytes())
            except OSError as exc:
                raise ConfigError(f"TLS {label} file {path}: {exc.strerror or exc}") from None
        return out[0], out[1], out[2]
