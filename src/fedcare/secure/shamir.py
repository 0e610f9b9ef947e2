"""t-of-k Shamir secret sharing of 16-byte secrets (pycryptodome).

Shamir, "How to share a secret", CACM 1979. pycryptodome works in GF(2^128) on exactly
16-byte secrets; every secret of the protocol is 16 bytes (AES-128 mask seeds and the
seed of the X25519 masking key), so each secret is one sharing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from Crypto.Protocol.SecretSharing import Shamir

try:  # pycryptodome's GF(2^128) element, used to cache Lagrange coefficients (see combine_secret)
    from Crypto.Protocol.SecretSharing import _Element
except ImportError:  # pragma: no cover - a pycryptodome without it: fall back to Shamir.combine
    _Element = None  # type: ignore[misc,assignment]

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
    indices = tuple(i for i, _ in picked)
    if len(set(indices)) != len(indices) or any(len(s) != SECRET_BYTES for _, s in picked):
        raise SecAggError("cannot combine shares: duplicate index or wrong share length")
    if _Element is None:  # pragma: no cover
        return Shamir.combine(list(picked))
    # Same interpolation as Shamir.combine (ssss=False), but the Lagrange coefficients at 0
    # depend only on the share indices, which repeat across the round: cache them, so a
    # reconstruction costs t field multiplications instead of t inversions.
    result = _Element(0)
    for coeff, (_, share) in zip(_lagrange_at_zero(indices), picked, strict=True):
        result += _Element(share) * coeff
    return result.encode()


@lru_cache(maxsize=4096)
def _lagrange_at_zero(indices: tuple[int, ...]) -> tuple[Any, ...]:
    """``l_j(0) = prod_{m != j} x_m / (x_j - x_m)`` in GF(2^128) (subtraction is xor)."""
    coeffs = []
    for j, xj in enumerate(indices):
        num, den = _Element(1), _Element(1)
        for m, xm in enumerate(indices):
            if m != j:
                num *= _Element(xm)
                den *= _Element(xj) + _Element(xm)
        coeffs.append(num * den.inverse())
    return tuple(coeffs)
