"""Typed payloads of the four SecAgg+ stages and their mapping to a :class:`Payload`.

Stages (Bonawitz et al., CCS 2017, Fig. 4; Bell et al., CCS 2020, Alg. 2):

1. ``advertise_keys``  server -> site: round parameters and neighbours; site -> server: two public keys.
2. ``share_keys``      server -> site: neighbours' public keys; site -> server: encrypted Shamir shares per neighbour.
3. ``masked_input``    server -> site: shares addressed to it (+ the model to train); site -> server: masked vector.
4. ``unmask``          server -> site: which neighbours survived / dropped; site -> server: the shares that unmask.

Each payload is a frozen dataclass; on the wire it is a generic :class:`Payload` (bytes
as ``uint8`` arrays, site lists as JSON strings), so it travels over any Channel and
through the safetensors serde. ``from_payload`` validates every field and raises
:class:`SecAggError` with a one-line message naming the field.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from fedcare.secure.errors import SecAggError
from fedcare.types import ConfigValue, ModelState, Payload, SiteId

__all__ = [
    "STAGE_KEY",
    "AdvertiseKeysIns",
    "AdvertiseKeysRes",
    "MaskedInputIns",
    "MaskedInputRes",
    "RoundParams",
    "ShareKeysIns",
    "ShareKeysRes",
    "Stage",
    "UnmaskIns",
    "UnmaskRes",
    "parse_instruction",
    "parse_reply",
]

STAGE_KEY = "secagg.stage"
SESSION_KEY = "secagg.session"
_REC = "secagg"


class Stage(enum.Enum):
    """The four SecAgg+ stages, in protocol order."""

    ADVERTISE_KEYS = "advertise_keys"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"

    @property
    def index(self) -> int:
        """Position in the protocol (0..3)."""
        return list(Stage).index(self)


# -- helpers -------------------------------------------------------------------------------


def _u8(data: bytes) -> npt.NDArray[np.uint8]:
    return np.frombuffer(data, dtype=np.uint8).copy()


def _bytes(arr: Any, where: str, size: int | None = None) -> bytes:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 1:
        raise SecAggError(f"{where}: expected a uint8 vector")
    if size is not None and arr.size != size:
        raise SecAggError(f"{where}: expected {size} bytes, got {arr.size}")
    return arr.tobytes()


def _record(payload: Payload, name: str, where: str) -> Mapping[str, Any]:
    rec = payload.arrays.get(name)
    if rec is None:
        raise SecAggError(f"{where}: missing record {name!r}")
    return rec


def _bytes_map(payload: Payload, name: str, where: str, size: int | None = None) -> dict[SiteId, bytes]:
    rec = payload.arrays.get(name, {})
    return {SiteId(k): _bytes(v, f"{where}, {name}[{k!r}]", size) for k, v in rec.items()}


def _int(config: Mapping[str, ConfigValue], key: str, where: str, lo: int = 0) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise SecAggError(f"{where}: {key} must be an integer >= {lo}, got {value!r}")
    return value


def _float(config: Mapping[str, ConfigValue], key: str, where: str) -> float:
    value = config.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not np.isfinite(value) or value < 0:
        raise SecAggError(f"{where}: {key} must be a finite number >= 0, got {value!r}")
    return float(value)


def _sites(config: Mapping[str, ConfigValue], key: str, where: str) -> tuple[SiteId, ...]:
    raw = config.get(key)
    try:
        items = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        items = None
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items) or len(set(items)) != len(items):
        raise SecAggError(f"{where}: {key} must be a JSON list of distinct site ids")
    return tuple(SiteId(s) for s in items)


def _session(config: Mapping[str, ConfigValue], where: str) -> bytes:
    raw = config.get(SESSION_KEY)
    try:
        session = bytes.fromhex(raw) if isinstance(raw, str) else b""
    except ValueError:
        session = b""
    if len(session) != 16:
        raise SecAggError(f"{where}: {SESSION_KEY} must be 16 bytes in hex")
    return session


def stage_of(config: Mapping[str, ConfigValue], where: str) -> Stage:
    """Read the stage an instruction or reply belongs to."""
    try:
        return Stage(config.get(STAGE_KEY))
    except ValueError:
        raise SecAggError(f"{where}: unknown {STAGE_KEY} {config.get(STAGE_KEY)!r}") from None


def _base_config(stage: Stage, session: bytes) -> dict[str, ConfigValue]:
    return {STAGE_KEY: stage.value, SESSION_KEY: session.hex()}


# -- stage 1 -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundParams:
    """What every site must know before the round: graph, threshold, encoding, DP.

    Attributes
    ----------
    neighbours : tuple[SiteId, ...]
        This site's neighbours in the SecAgg+ graph (sorted).
    threshold : int
        Shares needed to reconstruct a secret (``t``).
    num_sites : int
        Sites invited to the round.
    vector_size : int
        Number of model coordinates (the masked vector has one more: the weight).
    clip_range, bits, modulus_bits : fixed-point encoding (:class:`FixedPointCodec`).
    max_site_weight : int
        Overflow bound on one site's weight.
    dp_clip_norm, dp_noise_multiplier : float
        Distributed DP: L2 clip of the update and the noise multiplier of the *sum*
        (0 disables DP).
    """

    neighbours: tuple[SiteId, ...]
    threshold: int
    num_sites: int
    vector_size: int
    clip_range: float
    bits: int
    modulus_bits: int
    max_site_weight: int
    dp_clip_norm: float = 0.0
    dp_noise_multiplier: float = 0.0


@dataclass(frozen=True)
class AdvertiseKeysIns:
    """Stage 1 instruction: the round's parameters."""

    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    session: bytes
    params: RoundParams

    def to_payload(self) -> Payload:
        """Encode for the wire."""
        p = self.params
        config: dict[str, ConfigValue] = {
            **_base_config(self.stage, self.session),
            "secagg.neighbours": json.dumps(list(p.neighbours)),
            "secagg.threshold": p.threshold,
            "secagg.num_sites": p.num_sites,
            "secagg.vector_size": p.vector_size,
            "secagg.clip_range": p.clip_range,
            "secagg.bits": p.bits,
            "secagg.modulus_bits": p.modulus_bits,
            "secagg.max_site_weight": p.max_site_weight,
            "secagg.dp_clip_norm": p.dp_clip_norm,
            "secagg.dp_noise_multiplier": p.dp_noise_multiplier,
        }
        return Payload(config=config)

    @classmethod
    def from_payload(cls, payload: Payload, where: str) -> AdvertiseKeysIns:
        """Decode and validate."""
        c = payload.config
        params = RoundParams(
            neighbours=_sites(c, "secagg.neighbours", where),
            threshold=_int(c, "secagg.threshold", where, 1),
            num_sites=_int(c, "secagg.num_sites", where, 1),
            vector_size=_int(c, "secagg.vector_size", where, 1),
            clip_range=_float(c, "secagg.clip_range", where),
            bits=_int(c, "secagg.bits", where, 1),
            modulus_bits=_int(c, "secagg.modulus_bits", where, 32),
            max_site_weight=_int(c, "secagg.max_site_weight", where, 1),
            dp_clip_norm=_float(c, "secagg.dp_clip_norm", where),
            dp_noise_multiplier=_float(c, "secagg.dp_noise_multiplier", where),
        )
        if params.threshold > len(params.neighbours):
            raise SecAggError(f"{where}: threshold {params.threshold} exceeds the {len(params.neighbours)} neighbours")
        return cls(session=_session(c, where), params=params)


@dataclass(frozen=True)
class AdvertiseKeysRes:
    """Stage 1 reply: the site's two public keys (share encryption, masking)."""

    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS
    session: bytes
    pk_enc: bytes
    pk_mask: bytes

    def to_payload(self) -> Payload:
        """Encode for the wire."""
        rec: ModelState = {"pk_enc": _u8(self.pk_enc), "pk_mask": _u8(self.pk_mask)}
        return Payload(arrays={_REC: rec}, config=_base_config(self.stage, self.session))

    @classmethod
    def from_payload(cls, payload: Payload, where: str) -> AdvertiseKeysRes:
        """Decode and validate."""
        rec = _record(payload, _REC, where)
        return cls(
            session=_session(payload.config, where),
            pk_enc=_bytes(rec.get("pk_enc"), f"{where}, pk_enc", 32),
            pk_mask=_bytes(rec.get("pk_mask"), f"{where}, pk_mask", 32),
        )


# -- stage 2 -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareKeysIns:
    """Stage 2 instruction: public keys of the neighbours that advertised."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS
    session: bytes
    pk_enc: Mapping[SiteId, bytes]
    pk_mask: Mapping[SiteId, bytes]

    def to_payload(self) -> Payload:
        """Encode for the wire."""
        arrays: dict[str, ModelState] = {
            "secagg.pk_enc": {k: _u8(v) for k, v in self.pk_enc.items()},
            "secagg.pk_mask": {k: _u8(v) for k, v in self.pk_mask.items()},
        }
        return Payload(arrays=arrays, config=_base_config(self.stage, self.session))

    @classmethod
    def from_payload(cls, payload: Payload, where: str) -> ShareKeysIns:
        """Decode and validate."""
        enc = _bytes_map(payload, "secagg.pk_enc", where, 32)
        mask = _bytes_map(payload, "secagg.pk_mask", where, 32)
        if set(enc) != set(mask):
            raise SecAggError(f"{where}: pk_enc and pk_mask name different sites")
        return cls(session=_session(payload.config, where), pk_enc=enc, pk_mask=mask)


@dataclass(frozen=True)
class ShareKeysRes:
    """Stage 2 reply: one authenticated ciphertext of Shamir shares per neighbour, and a commitment to ``b``."""

    stage: ClassVar[Stage] = Stage.SHARE_KEYS
    session: bytes
    ciphertexts: Mapping[SiteId, bytes]
    b_commitment: bytes

    def to_payload(self) -> Payload:
        """Encode for the wire."""
        arrays: dict[str, ModelState] = {
            "secagg.ct": {k: _u8(v) for k, v in self.ciphertexts.items()},
            _REC: {"b_commitment": _u8(self.b_commitment)},
        }
        return Payload(arrays=arrays, config=_base_config(self.stage, self.session))

    @classmethod
    def from_payload(cls, payload: Payload, where: str) -> ShareKeysRes:
        """Decode and validate."""
        rec = _record(payload, _REC, where)
        return cls(
            session=_session(payload.config, where),
            ciphertexts=_bytes_map(payload, "secagg.ct", where),
            b_commitment=_bytes(rec.get("b_commitment"), f"{where}, b_commitment", 32),
        )


# -- stage 3 -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskedInputIns:
    """Stage 3 instruction: shares addressed to this site; the senders are the sites it masks with.

    ``num_peers`` is the number of sites that will submit masked inputs (for the site's
    ``min_peers`` policy and its share of the DP noise). The model to train and the fit
    config travel in the same :class:`Payload` (``arrays["model"]`` and the config).
    """

    stage: ClassVar[Stage] = Stage.MASKED_INPUT
    session: bytes
    ciphertexts: Mapping[SiteId, bytes]
    num_peers: int

    def to_payload(self, base: Payload | None = None) -> Payload:
        """Encode for the wire, merged into ``base`` (the strategy's fit payload)."""
        base = base or Payload()
        ciphertexts: ModelState = {k: _u8(v) for k, v in self.ciphertexts.items()}
        arrays = {**base.arrays, "secagg.ct": ciphertexts}
        config = {**base.config, **_base_config(self.stage, self.session), "secagg.num_peers": self.num_peers}
        return Payload(arrays=arrays, config=config, metrics=base.metrics)

    @classmethod
    def from_payload(cls, payload: Payload, where: str) -> MaskedInputIns:
        """Decode and validate."""
        return cls(
            session=_session(payload.config, where),
            ciphertexts=_bytes_map(payload, "secagg.ct", where),
            num_peers=_int(payload.config, "secagg.num_peers", where, 1),
        )


@dataclass(frozen=True)
class MaskedInputRes:
    """Stage 3 reply: the masked, encoded, weighted update (ring elements)."""

    stage: ClassVar[Stage] = Stage.MASKED_INPUT
    session: bytes
    masked: npt.NDArray[Any]
    metrics: Mapping[str, float] = field(default_factory=dict)

    def to_payload(self) -> Payload:
        """Encode for the wire."""
        return Payload(
            arrays={_REC: {"masked": self.masked}},
            config=_base_config(self.stage, self.session),
            metrics=dict(self.metrics),
        )

    @classmethod
    def from_payload(cls, payload: Payload, where: str, *, size: int, dtype: Any) -> MaskedInputRes:
        """Decode and validate shape and dtype."""
        rec = _record(payload, _REC, where)
        masked = rec.get("masked")
        if not isinstance(masked, np.ndarray) or masked.dtype != np.dtype(dtype) or masked.shape != (size,):
            raise SecAggError(f"{where}: masked input must be {np.dtype(dtype).name}[{size}]")
        metrics = {k: float(v) for k, v in payload.metrics.items() if np.isfinite(v)}
        return cls(session=_session(payload.config, where), masked=masked, metrics=metrics)


# -- stage 4 -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnmaskIns:
    """Stage 4 instruction: which neighbours' masked inputs arrived and which did not."""

    stage: ClassVar[Stage] = Stage.UNMASK
    session: bytes
    survivors: tuple[SiteId, ...]
    dropped: tuple[SiteId, ...]
    num_survivors: int

    def to_payload(self) -> Payload:
        """Encode for the wire."""
        config = {
            **_base_config(self.stage, self.session),
            "secagg.survivors": json.dumps(list(self.survivors)),
            "secagg.dropped": json.dumps(list(self.dropped)),
            "secagg.num_survivors": self.num_survivors,
        }
        return Payload(config=config)

    @classmethod
    def from_payload(cls, payload: Payload, where: str) -> UnmaskIns:
        """Decode and validate."""
        c = payload.config
        return cls(
            session=_session(c, where),
            survivors=_sites(c, "secagg.survivors", where),
            dropped=_sites(c, "secagg.dropped", where),
            num_survivors=_int(c, "secagg.num_survivors", where, 1),
        )


@dataclass(frozen=True)
class UnmaskRes:
    """Stage 4 reply: shares of ``b_v`` for surviving and of the mask-key seed for dropped neighbours."""

    stage: ClassVar[Stage] = Stage.UNMASK
    session: bytes
    b_shares: Mapping[SiteId, bytes]
    sk_shares: Mapping[SiteId, bytes]

    def to_payload(self) -> Payload:
        """Encode for the wire."""
        arrays: dict[str, ModelState] = {
            "secagg.b_shares": {k: _u8(v) for k, v in self.b_shares.items()},
            "secagg.sk_shares": {k: _u8(v) for k, v in self.sk_shares.items()},
        }
        return Payload(arrays=arrays, config=_base_config(self.stage, self.session))

    @classmethod
    def from_payload(cls, payload: Payload, where: str) -> UnmaskRes:
        """Decode and validate."""
        return cls(
            session=_session(payload.config, where),
            b_shares=_bytes_map(payload, "secagg.b_shares", where, 16),
            sk_shares=_bytes_map(payload, "secagg.sk_shares", where, 16),
        )


Instruction = AdvertiseKeysIns | ShareKeysIns | MaskedInputIns | UnmaskIns
Reply = AdvertiseKeysRes | ShareKeysRes | MaskedInputRes | UnmaskRes

_INS: dict[Stage, Any] = {
    Stage.ADVERTISE_KEYS: AdvertiseKeysIns,
    Stage.SHARE_KEYS: ShareKeysIns,
    Stage.MASKED_INPUT: MaskedInputIns,
    Stage.UNMASK: UnmaskIns,
}


def parse_instruction(payload: Payload, where: str) -> Instruction:
    """Decode a stage instruction of any stage (validated)."""
    stage = stage_of(payload.config, where)
    return _INS[stage].from_payload(payload, where)  # type: ignore[no-any-return]


def parse_reply(payload: Payload, where: str, *, size: int, dtype: Any) -> Reply:
    """Decode a stage reply of any stage (validated)."""
    stage = stage_of(payload.config, where)
    if stage is Stage.ADVERTISE_KEYS:
        return AdvertiseKeysRes.from_payload(payload, where)
    if stage is Stage.SHARE_KEYS:
        return ShareKeysRes.from_payload(payload, where)
    if stage is Stage.MASKED_INPUT:
        return MaskedInputRes.from_payload(payload, where, size=size, dtype=dtype)
    return UnmaskRes.from_payload(payload, where)
