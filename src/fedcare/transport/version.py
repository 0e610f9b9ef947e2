"""The wire protocol's version and the compatibility rule (see ``proto/fedcare.proto``)."""

from __future__ import annotations

__all__ = ["OLDEST_SUPPORTED", "PROTOCOL_VERSION", "compatibility_problem", "parse_version", "speaks"]

#: Current protocol version, "MAJOR.MINOR". Minor versions only add optional fields.
PROTOCOL_VERSION = "1.3"
_OLDEST = (1, 1)
#: Oldest version a coordinator still accepts (1.1 sites send no digests and need no Proceed).
OLDEST_SUPPORTED = f"{_OLDEST[0]}.{_OLDEST[1]}"


def parse_version(text: str) -> tuple[int, int] | None:
    """``"1.1"`` -> ``(1, 1)``; ``None`` when malformed."""
    parts = text.strip().split(".")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 6 for p in parts):
        return None
    return int(parts[0]), int(parts[1])


def speaks(version: str, at_least: str) -> bool:
    """Whether a peer announcing ``version`` understands what ``at_least`` added (same major)."""
    peer, wanted = parse_version(version), parse_version(at_least)
    return peer is not None and wanted is not None and peer[0] == wanted[0] and peer >= wanted


def compatibility_problem(site_version: str, server_version: str = PROTOCOL_VERSION) -> str | None:
    """Why a site speaking ``site_version`` cannot join a server at ``server_version``; None if it can.

    Same major version, and the site at :data:`OLDEST_SUPPORTED` or later (a newer minor
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
    if site < _OLDEST:
        return (
            f"protocol {site_version} is older than {OLDEST_SUPPORTED}, the oldest the coordinator's "
            f"{server_version} accepts; upgrade fedcare on the site"
        )
    return None
