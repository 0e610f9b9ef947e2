"""t-of-k Shamir secret sharing of 16-byte secrets (pycryptodome).

Shamir, "How to share a secret", CACM 1979. pycryptodome works in GF(2^128) on exactly
16-byte secrets; every secret of the protocol is 16 bytes (AES-128 mask seeds and the
seed of the X25519 masking key), so each secret is one sharing.
"""

from __future__ import annotations

from collections.abc import Sequence

from Crypto.Protocol.SecretSharing import Shamir

from fedcare.secure.errors import SecAggError

__all__ = ["combine_secret", "split_secret"]

SECRET_BYTES = 16


def split_secret(secret: bytes, threshold: int, num_shares: int) -> list[bytes]:
    """Split ``secret`` into ``num_shares`` shares; share ``i`` has index ``i + 1``."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= num_shares:
        raise ValueError(f"threshold {threshold} must be in [1, {num_shares}]")
    if threshold == 1:  # degree-0 polynomial: every share is the secret (pycryptodome needs k >= 2)
        return [secret] * num_shares
    return [share for _, share in Shamir.split(threshold, num_shares, secret)]


def combine_secret(shares: Sequence[tuple[int, bytes]], threshold: int) -> bytes:
    """Recover a secret from at least ``threshold`` ``(index, share)`` pairs (uses exactly ``threshold``)."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} share(s) available, {threshold} needed")
    picked = sorted(shares)[:threshold]
    if threshold == 1:
        return picked[0][1]
    try:
        return Shamir.combine(list(picked))
    except ValueError as exc:
        raise SecAggError(f"cannot combine shares: {exc}") from None
