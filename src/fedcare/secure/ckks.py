"""Threshold CKKS aggregation: the coordinator adds ciphertexts it cannot decrypt.

Each round runs three ``secagg`` exchanges (stages ``ckks.keys``, ``ckks.encrypt``,
``ckks.decrypt``) through the Coordinator's public ``exchange``:

1. **keys** — the coordinator makes a fresh key share and sends its public key (which
   fixes the common random polynomial); every sampled site makes its own secret key share
   on it (OpenFHE ``MultipartyKeyGen``, star topology) and returns only the public key.
2. **encrypt** — every site receives the list of public keys, checks that its own is in
   it and that the list is long enough for its policy (``min_peers``), sums them itself
   into the joint public key (``MultiAddPubKeys``), trains (the same pipeline as a plain
   fit: DP noise is added before encryption) and returns ``w * (trained - global)`` and
   ``w`` encrypted, ``slots`` values per ciphertext. The coordinator adds the ciphertexts.
3. **decrypt** — every key holder returns its decryption share of the *sum* once
   (``MultipartyDecryptMain``; the coordinator's own share is ``MultipartyDecryptLead``);
   ``MultipartyDecryptFusion`` of all shares yields the weighted sum, handed to the
   strategy's fold with ``add_sum`` (FedAvg, FedProx, FedOpt family).

The secret key is additively shared among the coordinator and the round's sites: no one
party, and no set missing any one share, can decrypt (n-out-of-n; the round is keyed
afresh, so a site that drops before the keys stage is simply not in it). Threat model,
parameters and limits: ``docs/he.md``. OpenFHE itself runs behind :class:`CkksBackend`
(:class:`fedcare.he.engine.OpenFheEngine`).
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fedcare.compression import payload_bytes
from fedcare.errors import ConfigError, FedcareError, NotEnoughSitesError, PolicyError
from fedcare.protocols import FitPhase, RoundDriver
from fedcare.secure.handler import flat_delta
from fedcare.types import Message, MessageKind, Metrics, ModelState, Payload, SiteId, SiteUpdate

__all__ = [
    "CKKS_STAGES",
    "CkksBackend",
    "CkksEngineError",
    "CkksParams",
    "CkksSiteHandler",
    "CkksWorkflow",
    "pack_blobs",
    "unpack_blobs",
]

log = logging.getLogger(__name__)

#: The ``secagg.stage`` values of a CKKS round, in order.
CKKS_STAGES = ("ckks.keys", "ckks.encrypt", "ckks.decrypt")
_MAX_BLOBS = 1 << 16
_MAX_BLOB_BYTES = 1 << 24  # one ciphertext or key: 16 MiB is far above any 128-bit parameter set used here
_MAX_SESSIONS = 16


class CkksEngineError(FedcareError):
    """A CKKS operation failed (engine error, malformed ciphertext, missing decryption share)."""


@dataclass(frozen=True)
class CkksParams:
    """CKKS parameters every party derives the same context from.

    Attributes
    ----------
    security_bits : int (default: 128)
        HE standard classical security level (128, 192 or 256); OpenFHE picks the smallest
        ring dimension that meets it (4096 for the defaults: one 60-bit modulus, BV key
        switching, so no auxiliary modulus counts against the bound).
    scale_bits : int (default: 45)
        log2 of the CKKS scale: the absolute error of a decrypted sum is below
        ``1e-4 * 2^(45 - scale_bits)`` for up to 50 parties (OpenFHE smudges each decryption
        share with 20-bit noise; measured in docs/he.md).
    first_mod_bits : int (default: 60)
        The one ciphertext modulus (depth 0: the aggregate needs additions only). Values
        must stay below ``2^(first_mod_bits - scale_bits - 1)`` in magnitude.
    packing : {"complex", "real"} (default: "complex")
        ``"complex"`` puts two values in each CKKS slot (real and imaginary part): a
        ciphertext carries as many values as the ring dimension (4096), twice ``"real"``'s.
    ring_dim : int (default: 0)
        0: the smallest ring OpenFHE accepts for ``security_bits``; a larger power of two
        may be forced (OpenFHE refuses a smaller one).
    """

    security_bits: int = 128
    scale_bits: int = 45
    first_mod_bits: int = 60
    packing: str = "complex"
    ring_dim: int = 0

    def __post_init__(self) -> None:
        """Validate the bounds (OpenFHE would otherwise fail late, at a site)."""
        if self.security_bits not in (128, 192, 256):
            raise ConfigError(f"CKKS security_bits must be 128, 192 or 256, got {self.security_bits}")
        if not 20 <= self.scale_bits <= 55:
            raise ConfigError(f"CKKS scale_bits must be in [20, 55], got {self.scale_bits}")
        if not self.scale_bits + 4 <= self.first_mod_bits <= 60:
            raise ConfigError(
                f"CKKS first_mod_bits must be in [scale_bits + 4, 60], got {self.first_mod_bits} "
                f"(scale_bits {self.scale_bits})"
            )
        if self.packing not in ("complex", "real"):
            raise ConfigError(f"CKKS packing must be 'complex' or 'real', got {self.packing!r}")
        if self.ring_dim and (self.ring_dim < 1024 or self.ring_dim & (self.ring_dim - 1)):
            raise ConfigError(f"CKKS ring_dim must be 0 or a power of two >= 1024, got {self.ring_dim}")

    @property
    def bound(self) -> float:
        """The largest magnitude a decrypted sum may have (values beyond it wrap)."""
        return float(2 ** (self.first_mod_bits - self.scale_bits - 1))

    def to_engine(self) -> dict[str, int | str]:
        """The parameters as the engine takes them (and the coordinator announces them)."""
        return {
            "security_bits": self.security_bits,
            "scale_bits": self.scale_bits,
            "first_mod_bits": self.first_mod_bits,
            "packing": self.packing,
            "ring_dim": self.ring_dim,
        }


class CkksBackend(Protocol):
    """Threshold CKKS primitives on bytes (OpenFHE's serialisation); secret shares stay inside."""

    @property
    def slots(self) -> int:
        """Values per ciphertext."""
        ...

    def keygen(self, lead_public_key: bytes | None = None) -> tuple[str, bytes]:
        """A new secret key share (handle) and its public key; on the lead's ``a`` if given."""
        ...

    def join(self, public_keys: Sequence[bytes]) -> bytes:
        """The joint public key of all shares."""
        ...

    def encrypt(self, public_key: bytes, values: npt.NDArray[np.float64]) -> list[bytes]:
        """``values`` packed and encrypted, ``slots`` per ciphertext."""
        ...

    def add(self, ciphertexts: Sequence[Sequence[bytes]]) -> list[bytes]:
        """Slot-wise sum of the parties' ciphertext lists."""
        ...

    def check(self, ciphertexts: Sequence[bytes]) -> None:
        """Raise :class:`CkksEngineError` unless each blob is a fresh ciphertext of this context."""
        ...

    def fold(self, acc: str | None, ciphertexts: Sequence[bytes]) -> str:
        """Check one party's ciphertexts and add them slot-wise into the running sum ``acc`` (new if None).

        On an error the sum is unchanged. Returns the sum's handle (the sum stays in the engine).
        """
        ...

    def take(self, acc: str) -> list[bytes]:
        """The running sum's ciphertexts; the handle is dropped."""
        ...

    def partial_decrypt(self, handle: str, ciphertexts: Sequence[bytes], *, lead: bool) -> list[bytes]:
        """One party's decryption shares."""
        ...

    def fuse(self, partials: Sequence[Sequence[bytes]], length: int) -> npt.NDArray[np.float64]:
        """All parties' decryption shares combined into plaintext values."""
        ...

    def forget(self, handle: str) -> None:
        """Drop a secret key share."""
        ...


# -- ciphertexts on the wire: a uint8 blob and an int64 size vector --------------------------


def pack_blobs(blobs: Sequence[bytes]) -> ModelState:
    """Several byte strings as one ``{"blob": uint8, "sizes": int64}`` record."""
    sizes = np.array([len(b) for b in blobs], dtype=np.int64)
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8) if blobs else np.zeros(0, dtype=np.uint8)
    return {"blob": data, "sizes": sizes}


def unpack_blobs(record: ModelState | None, where: str, *, count: int | None = None) -> list[bytes]:
    """Validate and split a :func:`pack_blobs` record (sizes, total, count)."""
    if record is None or set(record) != {"blob", "sizes"}:
        raise CkksEngineError(f"{where}: expected a record with 'blob' and 'sizes'")
    blob, sizes = record["blob"], record["sizes"]
    if blob.dtype != np.uint8 or blob.ndim != 1 or sizes.dtype != np.int64 or sizes.ndim != 1:
        raise CkksEngineError(f"{where}: 'blob' must be uint8[n] and 'sizes' int64[k]")
    if not 0 < sizes.size <= _MAX_BLOBS or (count is not None and sizes.size != count):
        raise CkksEngineError(f"{where}: {sizes.size} ciphertext(s), expected {count if count is not None else '>= 1'}")
    lengths = np.asarray(sizes, dtype=np.int64)
    if np.any(lengths <= 0) or np.any(lengths > _MAX_BLOB_BYTES) or int(lengths.sum()) != blob.size:
        raise CkksEngineError(f"{where}: blob sizes do not add up to the {blob.size} bytes sent")
    raw = blob.tobytes()
    out, offset = [], 0
    for n in lengths.tolist():
        out.append(raw[offset : offset + n])
        offset += n
    return out


def _stage_payload(stage: str, session: str, records: Mapping[str, ModelState], **config: Any) -> Payload:
    return Payload(arrays=dict(records), config={"secagg.stage": stage, "ckks.session": session, **config})


# -- the coordinator's side ----------------------------------------------------------------


@dataclass
class CkksWorkflow:
    """Threshold CKKS aggregation of the fit phase (the coordinator adds ciphertexts it cannot read).

    Attributes
    ----------
    backend : CkksBackend
        The coordinator's engine (it holds one key share per round, the "lead" share).
    params : CkksParams (default: CkksParams())
        Announced to the sites with every round (they refuse other parameters).
    encrypted : tuple[str, ...] or None (default: None)
        Selective encryption: only these model entries are encrypted, the others travel
        as plain weighted updates (the card lists them; a site with
        ``require_encryption`` refuses such rounds). ``None`` encrypts everything.
    verify_sum : bool (default: False)
        Every key holder gets all contributors' ciphertexts (N times the download), checks
        that its own is among them, adds them itself and gives a decryption share of *its*
        sum only: a coordinator that deviates cannot have one site's update decrypted alone.
    """

    backend: CkksBackend
    params: CkksParams = field(default_factory=CkksParams)
    encrypted: tuple[str, ...] | None = None
    verify_sum: bool = False

    #: Recorded with each round: what protected the updates on the wire.
    protection = "ckks-threshold"

    def run_fit(self, coordinator: RoundDriver, ctx: FitPhase) -> Metrics:
        """Run the keys, encrypt and decrypt stages for ``ctx``'s sites and fold the decrypted sum."""
        compressed = sorted({str(p.config.get("compression")) for p in ctx.payloads.values()} - {"none", "None"})
        if compressed:
            raise ConfigError(
                f"compression {', '.join(compressed)} cannot run under CKKS: ciphertexts do not compress; "
                "use compression without encryption"
            )
        add_sum = getattr(ctx.fold, "add_sum", None)
        if add_sum is None:
            raise ConfigError(
                f"strategy {coordinator.strategy.name!r} needs individual updates (as median, trimmed mean and Krum "
                "do); CKKS aggregation reveals only the sum, so it runs only with strategies whose fold accepts a "
                "weighted sum (FedAvg, FedProx, FedAdam/FedYogi/FedAdagrad)"
            )
        names = list(ctx.state.model)
        shapes = {k: v.shape for k, v in ctx.state.model.items()}
        unknown = sorted(set(self.encrypted or ()) - set(names))
        if unknown or any("," in n for n in names):
            raise ConfigError(f"secure_aggregation.encrypt names {unknown} not in the model's entries {names}")
        secret = names if self.encrypted is None else [n for n in names if n in set(self.encrypted)]
        clear = [n for n in names if n not in secret]
        size = int(sum(int(np.prod(shapes[n])) for n in secret)) + 1  # + the weight
        slots = self.backend.slots
        per_site = math.ceil(size / slots)
        session = secrets.token_hex(8)
        needed = max(coordinator.min_sites, 1)
        params = self.params.to_engine()
        run_id, round_no = ctx.run_id, ctx.round_no

        traffic = {"bytes_down": 0.0, "bytes_up": 0.0}

        def replies(name: str, payloads: Mapping[SiteId, Payload]) -> Iterator[Message]:
            """The stage's valid replies as they arrive; failures recorded once the stage is over."""
            failures: dict[SiteId, str] = {}
            traffic["bytes_down"] += float(sum(payload_bytes(p.arrays) for p in payloads.values()))
            for r in coordinator.exchange(MessageKind.SECAGG, run_id, round_no, payloads, failures):
                traffic["bytes_up"] += float(payload_bytes(r.payload.arrays))
                yield r
            for site, error in failures.items():
                ctx.failures.setdefault(site, f"{name}: {error}")
                log.warning("round %d: %s failed %s: %s", round_no, site, name, error)

        def stage(name: str, payloads: Mapping[SiteId, Payload]) -> dict[SiteId, Message]:
            return {r.site: r for r in replies(name, payloads)}

        def fail(site: SiteId, name: str, why: str) -> None:
            ctx.failures.setdefault(site, f"{name}: {why}")
            log.warning("round %d: %s failed %s: %s", round_no, site, name, why)

        lead_handle, lead_pk = self.backend.keygen()
        acc: str | None = None  # the engine's running sum of the ciphertexts folded so far
        lead_share: Future[list[bytes]] | None = None
        try:
            # 1. keys
            keys_payload = _stage_payload(
                "ckks.keys",
                session,
                {"keys": pack_blobs([lead_pk])},
                **{f"ckks.{k}": v for k, v in params.items()},
                **{"ckks.sampled": len(ctx.payloads)},
            )
            shares: dict[SiteId, bytes] = {}
            for site, reply in stage("ckks.keys", dict.fromkeys(sorted(ctx.payloads), keys_payload)).items():
                try:
                    shares[site] = unpack_blobs(
                        reply.payload.arrays.get("key"), f"ckks.keys reply from {site}", count=1
                    )[0]
                except CkksEngineError as exc:
                    fail(site, "ckks.keys", str(exc))
            keyed = sorted(shares)
            if len(keyed) < needed:
                raise NotEnoughSitesError(
                    f"round {round_no}: {len(keyed)} site(s) made a CKKS key share, {needed} needed"
                )
            public_keys = [lead_pk] + [shares[s] for s in keyed]
            keys_record = pack_blobs(public_keys)
            # 2. encrypt (the fit instruction travels with the public keys)
            encrypt_payloads = {
                s: Payload(
                    arrays={**ctx.payloads[s].arrays, "secagg_ckks_keys": keys_record},
                    config={
                        **ctx.payloads[s].config,
                        "secagg.stage": "ckks.encrypt",
                        "ckks.session": session,
                        "ckks.index": i + 1,
                        "ckks.size": size,
                        "ckks.encrypted": "*" if not clear else ",".join(secret),
                    },
                )
                for i, s in enumerate(keyed)
            }
            # each site's ciphertexts are checked and folded into the engine's running sum as they
            # arrive (one deserialisation each; O(model) memory unless verify_sum needs them all)
            cts: dict[SiteId, list[bytes]] = {}
            plain: dict[SiteId, ModelState] = {}
            site_metrics: dict[SiteId, dict[str, float]] = {}
            folded: list[SiteId] = []
            for reply in replies("ckks.encrypt", encrypt_payloads):
                site = reply.site
                where = f"ckks.encrypt reply from {site}"
                try:
                    blobs = unpack_blobs(reply.payload.arrays.get("ct"), where, count=per_site)
                    part = _clear_part(reply.payload.arrays.get("clear"), clear, shapes, where) if clear else None
                    try:  # a malformed ciphertext is its sender's failure, not the round's (the sum is unchanged)
                        acc = self.backend.fold(acc, blobs)
                    except CkksEngineError as exc:
                        raise CkksEngineError(f"{where}: {exc}") from None
                except CkksEngineError as exc:
                    fail(site, "ckks.encrypt", str(exc))
                    continue
                folded.append(site)
                if part is not None:
                    plain[site] = part
                if self.verify_sum:
                    cts[site] = blobs
                site_metrics[site] = {k: float(v) for k, v in reply.payload.metrics.items() if math.isfinite(v)}
            contributors = sorted(folded)
            if len(contributors) < needed or acc is None:
                raise NotEnoughSitesError(
                    f"round {round_no}: {len(contributors)} encrypted update(s), at least {needed} required"
                )
            total = self.backend.take(acc)
            acc = None
            # 3. decrypt: every key holder's share is needed (n-out-of-n)
            if self.verify_sum:  # the sites add the ciphertexts themselves
                record = {"secagg_ckks_all": pack_blobs([b for s in contributors for b in cts[s]])}
            else:
                record = {"ct": pack_blobs(total)}
            decrypt_payload = _stage_payload(
                "ckks.decrypt", session, record, **{"ckks.contributors": len(contributors), "ckks.per_site": per_site}
            )
            partials: dict[SiteId, list[bytes]] = {}
            # the coordinator's own (lead) share is computed while the sites compute theirs
            lead_share = _in_thread(lambda: self.backend.partial_decrypt(lead_handle, total, lead=True))
            for site, reply in stage("ckks.decrypt", dict.fromkeys(keyed, decrypt_payload)).items():
                try:
                    partials[site] = unpack_blobs(
                        reply.payload.arrays.get("partial"), f"ckks.decrypt reply from {site}", count=per_site
                    )
                except CkksEngineError as exc:
                    fail(site, "ckks.decrypt", str(exc))
            missing = sorted(set(keyed) - set(partials))
            if missing:
                raise NotEnoughSitesError(
                    f"round {round_no}: threshold CKKS needs every key holder's decryption share and "
                    f"{', '.join(missing)} sent none; the sum stays encrypted"
                )
            lead_partial = lead_share.result()
            try:
                flat = self.backend.fuse([lead_partial] + [partials[s] for s in keyed], size)
            except CkksEngineError as exc:
                raise CkksEngineError(f"round {round_no}: fusing the decryption shares failed: {exc}") from None
        finally:
            if lead_share is not None:
                lead_share.exception()  # wait: the handle is forgotten only after its share is made
            if acc is not None:
                self.backend.forget(acc)
            self.backend.forget(lead_handle)
        weight = float(flat[-1])
        if abs(weight - round(weight)) < 1e-3:  # weights are example counts: snap the CKKS error away
            weight = float(round(weight))
        if not np.all(np.isfinite(flat)) or weight <= 0:
            raise CkksEngineError(f"round {round_no}: the decrypted sum is not usable (total weight {weight:g})")
        sums: dict[str, npt.NDArray[np.float64]] = {}
        offset = 0
        for name in secret:
            n = int(np.prod(shapes[name]))
            sums[name] = flat[offset : offset + n].reshape(shapes[name]).copy()
            offset += n
        for name in clear:  # summed in site order: arrival order changes nothing
            total_clear = np.zeros(shapes[name], dtype=np.float64)
            for site in contributors:
                total_clear += np.asarray(plain[site][name], dtype=np.float64)
            sums[name] = total_clear
        for name in names:
            sums[name] = sums[name] + weight * np.asarray(ctx.state.model[name], dtype=np.float64)
        sums = {name: sums[name] for name in names}
        keys = sorted({k for s in contributors for k in site_metrics.get(s, {})})
        means = {
            k: float(np.mean([site_metrics[s][k] for s in contributors if k in site_metrics.get(s, {})])) for k in keys
        }
        add_sum(sums, weight, count=len(contributors), metrics=means)
        for s in contributors:
            ctx.site_fit[s] = site_metrics.get(s, {})
        return {
            "ckks_sites": float(len(contributors)),
            "ckks_key_holders": float(len(keyed) + 1),
            "ckks_ciphertexts_per_site": float(per_site),
            "ckks_dropped": float(len(ctx.payloads) - len(contributors)),
            "ckks_clear_values": float(sum(int(np.prod(shapes[n])) for n in clear)),
            **traffic,
        }


def _in_thread(fn: Callable[[], list[bytes]]) -> Future[list[bytes]]:
    """Run ``fn`` in a daemon thread; its result or exception in the returned future."""
    future: Future[list[bytes]] = Future()

    def run() -> None:
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to whoever reads the future
                future.set_exception(exc)

    threading.Thread(target=run, name="ckks-lead-share", daemon=True).start()
    return future


def _clear_part(
    record: ModelState | None, clear: list[str], shapes: Mapping[str, tuple[int, ...]], where: str
) -> ModelState:
    """The plain weighted entries of a selectively encrypted reply, checked (names, shapes, finite)."""
    if record is None or sorted(record) != sorted(clear):
        raise CkksEngineError(f"{where}: expected plain entries {sorted(clear)}")
    out: ModelState = {}
    for name in clear:
        arr = np.asarray(record[name])
        if arr.shape != shapes[name] or arr.dtype != np.float64 or not np.all(np.isfinite(arr)):
            raise CkksEngineError(f"{where}: plain entry {name!r} must be finite float64 of shape {shapes[name]}")
        out[name] = arr
    return out


# -- the site's side -----------------------------------------------------------------------


@dataclass
class _Session:
    session: str
    handle: str
    public_key: bytes
    params: dict[str, int | str]
    encrypted: bool = False
    decrypted: bool = False
    own: tuple[bytes, ...] = ()


#: The site's fit pipeline (``SiteNode.fit_update``).
SiteFit = Callable[..., SiteUpdate]


class CkksSiteHandler:
    """A site's CKKS sessions keyed by (run, round): one key share, one encryption, one decryption share each.

    Parameters
    ----------
    site_id : SiteId
        This site.
    fit : SiteFit
        The site's fit pipeline (``SiteNode.fit_update``): personalisation, DP and the ledger.
    backend : CkksBackend or None
        The site's OpenFHE engine; ``None`` refuses CKKS rounds with a clear message.
    params : CkksParams (default: CkksParams())
        The parameters this site accepts (a round announcing others is refused).
    min_peers : int (default: 1)
        Policy: the fewest sites (this one included) its update may be summed with.
    require_all : bool (default: False)
        Policy (``require_encryption``): refuse selective encryption (entries in clear).
    """

    def __init__(
        self,
        *,
        site_id: SiteId,
        fit: SiteFit,
        backend: CkksBackend | None,
        params: CkksParams | None = None,
        min_peers: int = 1,
        require_all: bool = False,
    ) -> None:
        self.site_id = site_id
        self.fit = fit
        self.backend = backend
        self.params = params or CkksParams()
        self.min_peers = min_peers
        self.require_all = require_all
        self._sessions: OrderedDict[tuple[str, int], _Session] = OrderedDict()
        self._lock = threading.Lock()

    def handle(self, message: Message) -> Message:
        """Run one CKKS stage; refusals and protocol errors become error replies."""
        try:
            if self.backend is None:
                raise PolicyError(f"refused: {self.site_id} has no CKKS engine (OpenFHE) configured")
            stage = message.payload.config.get("secagg.stage")
            if stage == "ckks.keys":
                return message.reply(self._keys(message))
            if stage == "ckks.encrypt":
                return message.reply(self._encrypt(message))
            if stage == "ckks.decrypt":
                return message.reply(self._decrypt(message))
            raise CkksEngineError(f"unknown CKKS stage {stage!r}")
        except PolicyError as exc:
            return message.reply(error=str(exc))
        except FedcareError as exc:
            return message.reply(error=f"{type(exc).__name__}: {exc}")

    def _session(self, message: Message) -> _Session:
        key = (str(message.run_id), int(message.round_no))
        with self._lock:
            session = self._sessions.get(key)
        if session is None or session.session != message.payload.config.get("ckks.session"):
            raise CkksEngineError(f"{self.site_id}: no CKKS session for round {message.round_no}")
        return session

    def _keys(self, message: Message) -> Payload:
        assert self.backend is not None
        config = message.payload.config
        mine = self.params.to_engine()
        announced = {k: config.get(f"ckks.{k}") for k in mine}
        if announced != mine:
            raise PolicyError(f"refused: CKKS parameters {announced} differ from this site's {mine}")
        sampled = config.get("ckks.sampled")
        if not isinstance(sampled, int) or sampled < self.min_peers:
            # refuse before holding a key share, so the others' sum can still be decrypted
            raise PolicyError(f"refused: {sampled} site(s) asked, this site requires at least {self.min_peers}")
        session_id = config.get("ckks.session")
        if not isinstance(session_id, str) or not session_id:
            raise CkksEngineError("ckks.keys instruction names no session")
        key = (str(message.run_id), int(message.round_no))
        with self._lock:
            if key in self._sessions:
                raise CkksEngineError(f"{self.site_id}: round {message.round_no} already has a CKKS key (replay)")
        (lead,) = unpack_blobs(message.payload.arrays.get("keys"), "ckks.keys instruction", count=1)
        handle, public_key = self.backend.keygen(lead)
        with self._lock:
            self._sessions[key] = _Session(session_id, handle, public_key, mine)
            while len(self._sessions) > _MAX_SESSIONS:
                _, old = self._sessions.popitem(last=False)
                self.backend.forget(old.handle)
        return Payload(arrays={"key": pack_blobs([public_key])})

    def _encrypt(self, message: Message) -> Payload:
        assert self.backend is not None
        session = self._session(message)
        if session.encrypted:
            raise CkksEngineError(f"{self.site_id}: round {message.round_no} already encrypted an update (replay)")
        config = message.payload.config
        public_keys = unpack_blobs(message.payload.arrays.get("secagg_ckks_keys"), "ckks.encrypt instruction")
        index = config.get("ckks.index")
        if not isinstance(index, int) or not 0 < index < len(public_keys) or public_keys[index] != session.public_key:
            raise PolicyError("refused: this site's CKKS public key is not in the joint key it was asked to use")
        if len(set(public_keys)) != len(public_keys):
            raise PolicyError("refused: the joint CKKS key lists a public key twice")
        parties = len(public_keys) - 1  # the coordinator's lead share is not a site
        if parties < self.min_peers:
            raise PolicyError(
                f"refused: {parties} site(s) in the aggregate, this site requires at least {self.min_peers}"
            )
        selected = config.get("ckks.encrypted", "*")
        if not isinstance(selected, str) or not selected:
            raise CkksEngineError("ckks.encrypt instruction names no encrypted entries")
        if selected != "*" and self.require_all:
            raise PolicyError("refused: this site sends no model entry in clear (selective encryption was asked)")
        session.encrypted = True
        update = self.fit(message)
        if update.extras:
            raise CkksEngineError(
                f"{self.site_id}: CKKS aggregation carries only the model, not {sorted(update.extras)}"
            )
        if set(update.state) != set(update.reference):
            raise CkksEngineError(f"{self.site_id}: trained model entries differ from the global model's")
        names = list(update.reference)
        secret = names if selected == "*" else [n for n in selected.split(",") if n in update.reference]
        clear = [n for n in names if n not in secret]
        weight = float(update.weight)
        values = np.empty(int(sum(update.reference[n].size for n in secret)) + 1, dtype=np.float64)
        values[:-1] = flat_delta(update.state, update.reference, secret)
        values[:-1] *= weight
        values[-1] = weight
        plain: ModelState = {
            n: weight * (np.asarray(update.state[n], np.float64) - np.asarray(update.reference[n], np.float64))
            for n in clear
        }
        size = config.get("ckks.size")
        if size != values.size:
            raise CkksEngineError(f"{self.site_id}: update has {values.size} values, the round expects {size}")
        peak = float(np.max(np.abs(values))) * parties
        if not math.isfinite(peak) or peak >= self.params.bound:
            raise CkksEngineError(
                f"{self.site_id}: weighted update too large for the CKKS parameters ({parties} x max |w*delta| = "
                f"{peak:.3g} >= {self.params.bound:g}); raise first_mod_bits - scale_bits or clip the update"
            )
        joint = self.backend.join(public_keys)
        cts = self.backend.encrypt(joint, values)
        session.own = tuple(cts)
        # the example count stays inside the ciphertext (the weight slot), as under SecAgg+
        metrics = {k: float(v) for k, v in update.metrics.items() if k != "num_examples"}
        return Payload(arrays={"ct": pack_blobs(cts), **({"clear": plain} if plain else {})}, metrics=metrics)

    def _decrypt(self, message: Message) -> Payload:
        assert self.backend is not None
        session = self._session(message)
        if session.decrypted:
            raise PolicyError(f"refused: {self.site_id} already gave its decryption share for round {message.round_no}")
        contributors = message.payload.config.get("ckks.contributors")
        if not isinstance(contributors, int) or contributors < self.min_peers:
            raise PolicyError(
                f"refused: the sum holds {contributors} update(s), this site requires at least {self.min_peers}"
            )
        arrays = message.payload.arrays
        if "secagg_ckks_all" in arrays:  # verified sum: this site adds the ciphertexts itself
            per_site = message.payload.config.get("ckks.per_site")
            every = unpack_blobs(arrays.get("secagg_ckks_all"), "ckks.decrypt instruction")
            if not isinstance(per_site, int) or per_site < 1 or len(every) != per_site * contributors:
                raise CkksEngineError(f"ckks.decrypt instruction: {len(every)} ciphertexts are not {contributors} sets")
            parties = [tuple(every[i : i + per_site]) for i in range(0, len(every), per_site)]
            if session.own and session.own not in parties:
                raise PolicyError("refused: this site's own ciphertexts are not in the sum it was asked to decrypt")
            if len(set(parties)) != len(parties):
                raise PolicyError("refused: the sum lists one site's ciphertexts twice")
            total = self.backend.add(parties)
        else:
            total = unpack_blobs(arrays.get("ct"), "ckks.decrypt instruction")
        session.decrypted = True
        try:
            partial = self.backend.partial_decrypt(session.handle, total, lead=False)
        finally:
            self.backend.forget(session.handle)
        return Payload(arrays={"partial": pack_blobs(partial)})
