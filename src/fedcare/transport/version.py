"""The wire protocol's version and the compatibility rule (see ``proto/fedcare.proto``)."""

from __future__ import annotations

__all__ = ["PROTOCOL_VERSION", "compatibility_problem", "parse_version"]

#: Current protocol version, "MAJOR.MINOR". Minor versions only add optional fields.
PROTOCOL_VERSION = "1.2"


def parse_version(text: str) -> tuple[int, int] | None:
    """``"1.1"`` -> ``(1, 1)``; ``None`` when malformed."""
    parts = text.strip().split(".")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 6 for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def compatibility_problem(site_version: str, server_version: str = PROTOCOL_VERSION) -> str | None:
    """Why a site speaking ``site_version`` cannot join a server at ``server_version``; None if it can.

    Same major version, and the site at most one minor version behind (a newer minor
    version is fine: it only adds optional fields the server ignores).
    """
    site, server = parse_version(site_version), parse_version(server_version)
    if server is None:
        raise ValueError(f"malformed server protocol version {server_version!r}")
    if site is None:
        return f"the site sent a malformed protocol version {site_version[:20]!r}; upgrade fedcare on the site"
    if site[0] != server[0]:
        return (
            f"protocol {site_version} is incompatible with the coordinator's {server_version} "
            f"(major versions differ); install a fedcare release speaking protocol {server[0]}.x on the "
            + ("site" if site[0] < server[0] else "coordinator")
        )
    if site[1] < server[1] - 1:
        return (
            f"protocol {site_version} is more than one minor version behind the coordinator's "
            f"{server_version}; upgrade fedcare on the site"
        )
    return None
