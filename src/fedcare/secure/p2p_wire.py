"""Wire form of the two peer-to-peer stages and the model digest every site reports.

A peer-to-peer round (:mod:`fedcare.secure.p2p`) runs SecAgg+'s first three stages
unchanged (with ``p2p = true`` in their config) and then two stages of its own:

* ``p2p.unmask`` — coordinator -> site: the survivors and the dropped sites (an
  :class:`~fedcare.secure.stages.UnmaskIns`); site -> coordinator: the shares that unmask,
  one AES-GCM box per other survivor (:data:`BUNDLE`), bytes the coordinator cannot read.
* ``p2p.aggregate`` — coordinator -> site: every survivor's masked vector, the boxes
  addressed to this site, and the survivors' commitments to their self-mask seeds;
  site -> coordinator: the digest of the new model it computed (and the model itself
  only when asked to release it at the end of the run).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.secure.errors import SecAggError
from fedcare.secure.stages import SESSION_KEY, STAGE_KEY
from fedcare.serde import encode_parts
from fedcare.types import ConfigValue, ModelState, Payload, SiteId

__all__ = [
    "AGGREGATE",
    "BUNDLE",
    "DIGEST_KEY",
    "EXPECTED_KEY",
    "FLAG",
    "MODEL_RECORD",
    "RELAY_KEY",
    "RELEASE_KEY",
    "SUM",
    "UNMASK",
    "WEIGHT_KEY",
    "AggregateIns",
    "decode_bundle",
    "encode_bundle",
    "model_digest",
]

#: Config flag on every instruction of a peer-to-peer round (the node routes on it).
FLAG = "p2p"
UNMASK = "p2p.unmask"
AGGREGATE = "p2p.aggregate"
#: The digest of the model a site must train from (stage ``masked_input``).
EXPECTED_KEY = "p2p.digest"
#: A site's reply to ``p2p.aggregate``: the digest of its new model.
DIGEST_KEY = "p2p.digest"
#: A site's reply to ``p2p.aggregate``: the total weight ``W`` of the sum (as SecAgg+'s server learns it).
WEIGHT_KEY = "p2p.total_weight"
#: ``p2p.aggregate``: the site is asked to return its new model (end of the run).
RELEASE_KEY = "p2p.release"
#: ``p2p.aggregate``: ``"all"`` masked vectors relayed, or their ``"sum"`` (one vector, key :data:`SUM`).
RELAY_KEY = "p2p.relay"
SUM = "sum"
#: Per-recipient encrypted share boxes (arrays record).
BUNDLE = "p2p.bundle"
#: Where a site keeps its copy of the run's model (its per-run memory).
MODEL_RECORD = "p2p_model"
#: Evaluate instructions of a peer-to-peer run: evaluate the site's own copy.
EVALUATE_KEY = "p2p.model"


def model_digest(state: ModelState) -> str:
    """sha256 (hex) of the model's safetensors bytes, entries in name order (dtype, shape and values count)."""
    h = hashlib.sha256()
    for part in encode_parts({k: np.asarray(state[k]) for k in sorted(state)}):
        h.update(part)
    return h.hexdigest()


def _u8(data: bytes) -> npt.NDArray[np.uint8]:
    return np.frombuffer(data, dtype=np.uint8).copy()


def _blob(arr: Any, where: str) -> bytes:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 1:
        raise SecAggError(f"{where}: expected a uint8 vector")
    return arr.tobytes()


def encode_bundle(b_shares: Mapping[SiteId, bytes], sk_shares: Mapping[SiteId, bytes]) -> bytes:
    """The plaintext of one unmask box: the holder's shares, as JSON of hex strings."""
    return json.dumps(
        {
            "b": {k: v.hex() for k, v in sorted(b_shares.items())},
            "sk": {k: v.hex() for k, v in sorted(sk_shares.items())},
        }
    ).encode()


def decode_bundle(plain: bytes, where: str) -> tuple[dict[SiteId, bytes], dict[SiteId, bytes]]:
    """Parse and validate an unmask box's plaintext (16-byte shares keyed by site)."""
    try:
        data = json.loads(plain)
        out: list[dict[SiteId, bytes]] = []
        for part in ("b", "sk"):
            shares = {SiteId(str(k)): bytes.fromhex(v) for k, v in dict(data[part]).items()}
            if any(len(v) != 16 for v in shares.values()):
                raise ValueError("a share is not 16 bytes")
            out.append(shares)
    except (ValueError, KeyError, TypeError) as exc:
        raise SecAggError(f"{where}: malformed unmask box ({exc})") from None
    return out[0], out[1]


def bundles_payload(session: bytes, boxes: Mapping[SiteId, bytes]) -> Payload:
    """A site's ``p2p.unmask`` reply: one box per recipient."""
    config: dict[str, ConfigValue] = {STAGE_KEY: UNMASK, SESSION_KEY: session.hex(), FLAG: True}
    return Payload(arrays={BUNDLE: {k: _u8(v) for k, v in boxes.items()}}, config=config)


def parse_bundles(payload: Payload, where: str) -> dict[SiteId, bytes]:
    """Decode a ``p2p.unmask`` reply's boxes."""
    rec = payload.arrays.get(BUNDLE)
    if rec is None:
        raise SecAggError(f"{where}: missing record {BUNDLE!r}")
    return {SiteId(k): _blob(v, f"{where}, {BUNDLE}[{k!r}]") for k, v in rec.items()}


def _sites(config: Mapping[str, ConfigValue], key: str, where: str) -> tuple[SiteId, ...]:
    raw = config.get(key)
    try:
        items = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        items = None
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items) or len(set(items)) != len(items):
        raise SecAggError(f"{where}: {key} must be a JSON list of distinct site ids")
    return tuple(SiteId(s) for s in items)


@dataclass(frozen=True)
class AggregateIns:
    """``p2p.aggregate``: what a site needs to unmask the sum and compute the new model itself."""

    session: bytes
    survivors: tuple[SiteId, ...]
    dropped: tuple[SiteId, ...]
    masked: Mapping[str, npt.NDArray[Any]]  # by survivor, or one entry SUM
    boxes: Mapping[SiteId, bytes]
    commitments: Mapping[SiteId, bytes]
    release: bool = False
    summed: bool = False  # ``masked`` holds one entry, :data:`SUM`: the relay added the survivors' vectors

    def to_payload(self) -> Payload:
        """Encode for the wire."""
        arrays: dict[str, ModelState] = {
            "p2p.masked": {str(k): v for k, v in self.masked.items()},
            BUNDLE: {k: _u8(v) for k, v in self.boxes.items()},
            "p2p.commit": {k: _u8(v) for k, v in self.commitments.items()},
        }
        config: dict[str, ConfigValue] = {
            STAGE_KEY: AGGREGATE,
            SESSION_KEY: self.session.hex(),
            FLAG: True,
            "p2p.survivors": json.dumps(list(self.survivors)),
            "p2p.dropped": json.dumps(list(self.dropped)),
            RELEASE_KEY: self.release,
            RELAY_KEY: "sum" if self.summed else "all",
        }
        return Payload(arrays=arrays, config=config)

    @classmethod
    def from_payload(cls, payload: Payload, where: str, *, size: int, dtype: Any) -> AggregateIns:
        """Decode and validate (masked vectors of ``dtype[size]``, 32-byte commitments)."""
        c = payload.config
        try:
            session = bytes.fromhex(str(c.get(SESSION_KEY)))
        except ValueError:
            session = b""
        if len(session) != 16:
            raise SecAggError(f"{where}: {SESSION_KEY} must be 16 bytes in hex")
        survivors = _sites(c, "p2p.survivors", where)
        dropped = _sites(c, "p2p.dropped", where)
        masked = dict(payload.arrays.get("p2p.masked", {}))
        for k, v in masked.items():
            if not isinstance(v, np.ndarray) or v.dtype != np.dtype(dtype) or v.shape != (size,):
                raise SecAggError(f"{where}: masked input of {k} must be {np.dtype(dtype).name}[{size}]")
        relay = c.get(RELAY_KEY, "all")
        if relay not in ("all", "sum"):
            raise SecAggError(f"{where}: {RELAY_KEY} must be 'all' or 'sum', got {relay!r}")
        if set(masked) != ({SUM} if relay == "sum" else set(survivors)):
            raise SecAggError(f"{where}: masked inputs of {sorted(masked)} do not match the survivors {survivors}")
        commits = {
            SiteId(k): _blob(v, f"{where}, commitment of {k}") for k, v in payload.arrays.get("p2p.commit", {}).items()
        }
        if set(commits) != set(survivors) or any(len(v) != 32 for v in commits.values()):
            raise SecAggError(f"{where}: the survivors' 32-byte commitments are missing or malformed")
        boxes = {SiteId(k): _blob(v, f"{where}, box from {k}") for k, v in payload.arrays.get(BUNDLE, {}).items()}
        release = c.get(RELEASE_KEY, False)
        if not isinstance(release, bool):
            raise SecAggError(f"{where}: {RELEASE_KEY} must be true or false")
        return cls(
            session=session,
            survivors=survivors,
            dropped=dropped,
            masked={str(k): v for k, v in masked.items()},
            boxes=boxes,
            commitments=commits,
            release=release,
            summed=relay == "sum",
        )
