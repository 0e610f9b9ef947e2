"""Key agreement and authenticated share encryption (X25519, HKDF-SHA256, AES-GCM).

Each site holds two X25519 key pairs per round, as in Bonawitz et al. (CCS 2017):
``c`` to agree AES-GCM keys that carry Shamir shares to neighbours, and ``s`` to agree the
pairwise mask seeds ``s_uv``. The masking key is derived from a 16-byte seed so that the
seed can be Shamir-shared in one piece and reconstructed for a site that drops out.
Every derived key is bound by HKDF ``info`` to the round's session id, and every share
ciphertext is bound by AES-GCM associated data to run, round, stage, sender and receiver:
a ciphertext moved to another receiver, round or stage fails authentication.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fedcare.secure.errors import SecAggError

__all__ = [
    "decrypt_share",
    "encrypt_share",
    "mask_key_from_seed",
    "pairwise_seed",
    "public_bytes",
    "random_bytes",
    "share_key",
]

_NONCE = 12


def random_bytes(n: int, rng: np.random.Generator | None) -> bytes:
    """``n`` bytes from the OS CSPRNG, or from ``rng`` when a seeded run asks for it (tests, demos)."""
    return os.urandom(n) if rng is None else rng.bytes(n)


def _hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def public_bytes(key: X25519PrivateKey) -> bytes:
    """Raw 32-byte public key."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def load_public(raw: bytes, where: str) -> X25519PublicKey:
    """Parse a raw X25519 public key, raising :class:`SecAggError` naming ``where``."""
    if len(raw) != 32:
        raise SecAggError(f"{where}: public key must be 32 bytes, got {len(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def mask_key_from_seed(seed: bytes) -> X25519PrivateKey:
    """The masking private key ``s_u^SK`` derived from its 16-byte shared seed."""
    return X25519PrivateKey.from_private_bytes(_hkdf(seed, b"fedcare-secagg/mask-key", 32))


def pairwise_seed(own: X25519PrivateKey, peer_public: bytes, session: bytes) -> bytes:
    """The 16-byte mask seed ``s_uv`` both ends derive from their masking keys."""
    shared = own.exchange(load_public(peer_public, "pairwise mask key"))
    return _hkdf(shared, b"fedcare-secagg/pairwise|" + session, 16)


def share_key(own: X25519PrivateKey, peer_public: bytes, session: bytes) -> AESGCM:
    """The AES-256-GCM key protecting shares between two sites in this session."""
    shared = own.exchange(load_public(peer_public, "share encryption key"))
    return AESGCM(_hkdf(shared, b"fedcare-secagg/share|" + session, 32))


def _aad(run_id: str, round_no: int, session: bytes, sender: str, receiver: str, stage: str) -> bytes:
    return f"fedcare-secagg|{run_id}|{round_no}|{session.hex()}|{stage}|{sender}->{receiver}".encode()


def encrypt_share(
    key: AESGCM,
    plaintext: bytes,
    *,
    run_id: str,
    round_no: int,
    session: bytes,
    sender: str,
    receiver: str,
    rng: np.random.Generator | None,
    stage: str = "share_keys",
) -> bytes:
    """Encrypt ``plaintext`` bound to (run, round, session, stage, sender, receiver): ``nonce || ct``."""
    nonce = random_bytes(_NONCE, rng)
    return nonce + key.encrypt(nonce, plaintext, _aad(run_id, round_no, session, sender, receiver, stage))


def decrypt_share(
    key: AESGCM,
    blob: bytes,
    *,
    run_id: str,
    round_no: int,
    session: bytes,
    sender: str,
    receiver: str,
    stage: str = "share_keys",
) -> bytes:
    """Decrypt and authenticate; any change to the bytes or their binding raises :class:`SecAggError`."""
    if len(blob) <= _NONCE:
        raise SecAggError(f"share from {sender}: ciphertext too short")
    try:
        return key.decrypt(blob[:_NONCE], blob[_NONCE:], _aad(run_id, round_no, session, sender, receiver, stage))
    except InvalidTag:
        raise SecAggError(f"share from {sender} to {receiver} failed authentication (tampered or misrouted)") from None
