"""Remove the masks from a SecAgg+ ring sum: the one routine the server and peer-to-peer sites share.

Given the sum of the survivors' masked vectors, ``t`` Shamir shares of every survivor's
self-mask seed ``b`` and of every dropped site's mask-key seed, :func:`remove_masks`
reconstructs each secret, checks it (``sha256(b)`` against the commitment the site made in
stage 2; the mask key against the public key it advertised in stage 1) and subtracts
``PRG(b)`` and the dropped sites' pairwise masks. Bonawitz et al., CCS 2017, Fig. 4, round 4.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy.typing as npt

from fedcare.secure.errors import SecAggError
from fedcare.secure.keys import mask_key_from_seed, pairwise_seed, public_bytes
from fedcare.secure.prg import MaskExpander
from fedcare.secure.shamir import combine_secret
from fedcare.secure.site import mask_sign
from fedcare.types import SiteId

__all__ = ["combine", "remove_masks"]


def combine(shares: Sequence[tuple[int, bytes]], threshold: int, what: str) -> bytes:
    """The secret behind ``shares``; :class:`SecAggError` with fewer than ``threshold`` or bad shares."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} share(s) of {what}, threshold {threshold}")
    try:
        return combine_secret(shares, threshold)
    except SecAggError as exc:
        raise SecAggError(f"{what}: {exc}") from None


def remove_masks(
    total: npt.NDArray[Any],
    *,
    survivors: Sequence[SiteId],
    dropped: Iterable[SiteId],
    peers_of: Callable[[SiteId], Iterable[SiteId]],
    b_shares: Mapping[SiteId, Sequence[tuple[int, bytes]]],
    sk_shares: Mapping[SiteId, Sequence[tuple[int, bytes]]],
    commitments: Mapping[SiteId, bytes],
    pk_mask: Callable[[SiteId], bytes],
    session: bytes,
    threshold: int,
) -> None:
    """Subtract every survivor's self mask and the pairwise masks of ``dropped`` sites from ``total``, in place.

    ``peers_of(d)``: the sites ``d`` masked with; ``pk_mask(s)``: ``s``'s public masking key.
    Raises :class:`SecAggError` naming the secret that cannot be reconstructed or checked.
    """
    alive = set(survivors)
    prg = MaskExpander(total.size, total.dtype.type)
    for u in survivors:
        b = combine(b_shares.get(u, []), threshold, f"{u}'s self-mask seed")
        if hashlib.sha256(b).digest() != commitments[u]:
            raise SecAggError(f"reconstructed self-mask seed of {u} does not match its commitment (bad shares)")
        prg.apply(total, b, -1)
    for d in dropped:
        peers = [u for u in peers_of(d) if u in alive]
        if not peers:
            continue
        key = mask_key_from_seed(combine(sk_shares.get(d, []), threshold, f"dropped {d}'s mask key"))
        if public_bytes(key) != pk_mask(d):
            raise SecAggError(f"reconstructed mask key of {d} does not match its public key (bad shares)")
        for u in peers:
            prg.apply(total, pairwise_seed(key, pk_mask(u), session), -mask_sign(u, d))
