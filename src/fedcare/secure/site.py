"""The site side of SecAgg+ as a sans-I/O state machine.

One :class:`SecAggSite` lives for one round. Each stage method takes the typed
instruction and returns the typed reply; the node (or a test) does the I/O. The site
refuses, with :class:`SecAggError`, anything out of order, replayed, addressed to
another session, forged or tampered with, and after any refusal takes no further part
in the round (a refusal is then an error reply, i.e. a dropout the protocol absorbs).

Protocol: Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017 (Fig. 4, semi-honest variant), restricted to a k-regular graph as in
Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020.
Each site also keeps one share of its own secrets (its index in ``holders``), so a round
survives up to ``n - t`` dropouts on a complete graph.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedcare.secure.encoding import FixedPointCodec
from fedcare.secure.errors import SecAggError
from fedcare.secure.keys import (
    decrypt_share,
    encrypt_share,
    mask_key_from_seed,
    pairwise_seed,
    public_bytes,
    random_bytes,
    share_key,
)
from fedcare.secure.prg import MaskExpander
from fedcare.secure.shamir import split_secret
from fedcare.secure.stages import (
    AdvertiseKeysIns,
    AdvertiseKeysRes,
    MaskedInputIns,
    MaskedInputRes,
    RoundParams,
    ShareKeysIns,
    ShareKeysRes,
    Stage,
    UnmaskIns,
    UnmaskRes,
)
from fedcare.types import SiteId

__all__ = ["SecAggSite", "holders_of", "mask_sign"]


def holders_of(site: SiteId, neighbours: Sequence[SiteId]) -> tuple[SiteId, ...]:
    """Who holds shares of ``site``'s secrets: its neighbours and itself; share index = position + 1."""
    return tuple(sorted({*neighbours, site}))


def mask_sign(site: SiteId, peer: SiteId) -> int:
    """+1 if ``site`` adds the pairwise mask shared with ``peer``, -1 if it subtracts it."""
    return 1 if site < peer else -1


class SecAggSite:
    """One site's SecAgg+ session for one round.

    Parameters
    ----------
    site_id : SiteId
        This site.
    run_id : str
        Run the session belongs to (bound into every share ciphertext).
    round_no : int
        Round the session belongs to.
    min_peers : int (default: 1)
        The site refuses to submit or unmask if fewer sites than this would be in the sum.
    rng : numpy.random.Generator or None (default: None)
        Source of keys, seeds and nonces; ``None`` uses the OS CSPRNG (a seed is for tests only).
    """

    def __init__(
        self,
        site_id: SiteId,
        *,
        run_id: str,
        round_no: int,
        min_peers: int = 1,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.site_id = site_id
        self.run_id = run_id
        self.round_no = round_no
        self.min_peers = min_peers
        self._rng = rng
        self._next: Stage | None = Stage.ADVERTISE_KEYS
        self._session = b""
        self._params: RoundParams | None = None
        self._enc_key: X25519PrivateKey | None = None
        self._mask_seed = b""
        self._mask_key: X25519PrivateKey | None = None
        self._pk_enc: dict[SiteId, bytes] = {}
        self._pk_mask: dict[SiteId, bytes] = {}
        self._own_b_share = b""
        self._b = b""
        self._shares: dict[SiteId, tuple[bytes, bytes]] = {}
        self._mask_peers: tuple[SiteId, ...] = ()
        self._num_peers = 0
        self._share_keys: dict[SiteId, Any] = {}  # AES-GCM keys agreed in stage 2, reused in stage 3

    @property
    def next_stage(self) -> Stage | None:
        """The stage this site accepts next (``None`` when finished or failed)."""
        return self._next

    @property
    def params(self) -> RoundParams:
        """The round parameters received in stage 1."""
        if self._params is None:
            raise SecAggError(f"{self.site_id}: no round parameters yet")
        return self._params

    @property
    def session(self) -> bytes:
        """The round's session id (empty before stage 1)."""
        return self._session

    def peer_mask_key(self, peer: SiteId) -> bytes:
        """``peer``'s public masking key as received in stage 2 (this site's own for itself)."""
        if peer == self.site_id and self._mask_key is not None:
            return public_bytes(self._mask_key)
        if peer not in self._pk_mask:
            raise SecAggError(f"{self.site_id}: no masking key of {peer} in this session")
        return self._pk_mask[peer]

    def peer_box(self, peer: SiteId) -> Any:
        """The AES-GCM key this site shares with ``peer`` in this session (agreed in stage 2)."""
        if peer not in self._pk_enc or self._enc_key is None:
            raise SecAggError(f"{self.site_id}: no share key with {peer} in this session")
        return self._share_keys.get(peer) or share_key(self._enc_key, self._pk_enc[peer], self._session)

    def _enter(self, stage: Stage, session: bytes) -> None:
        if self._next is not stage:
            expected = self._next.value if self._next else "nothing (session closed)"
            self._next = None
            raise SecAggError(f"{self.site_id}: stage {stage.value} out of order (expected {expected})")
        if stage is not Stage.ADVERTISE_KEYS and session != self._session:
            self._next = None
            raise SecAggError(f"{self.site_id}: stage {stage.value} belongs to another session")

    def fail(self) -> None:
        """Take no further part in this round (after a refusal or a local error)."""
        self._next = None

    # -- stage 1 ---------------------------------------------------------------------------

    def advertise_keys(self, ins: AdvertiseKeysIns) -> AdvertiseKeysRes:
        """Check the round parameters and generate the two key pairs."""
        self._enter(Stage.ADVERTISE_KEYS, ins.session)
        p = ins.params
        try:
            if self.site_id in p.neighbours:
                raise SecAggError(f"{self.site_id}: listed as its own neighbour")
            if p.threshold > len(p.neighbours) + 1:
                raise SecAggError(
                    f"{self.site_id}: threshold {p.threshold} exceeds its {len(p.neighbours) + 1} holders"
                )
            if 2 * p.threshold <= len(p.neighbours):
                # Each neighbour reveals, for this site, either its self-mask share (told it
                # survived) or its mask-key share (told it dropped), never both. With t <= k/2
                # a coordinator that tells half the neighbours each could collect t of both,
                # strip every mask and see this site's update alone.
                raise SecAggError(
                    f"{self.site_id}: refused: threshold {p.threshold} is at most half of its "
                    f"{len(p.neighbours)} neighbours, so a coordinator lying about survivors could unmask it"
                )
            codec = FixedPointCodec(clip_range=p.clip_range, bits=p.bits, modulus_bits=p.modulus_bits)
            codec.check_capacity(p.num_sites, p.max_site_weight)
        except Exception:
            self.fail()
            raise
        self._session = ins.session
        self._params = p
        self._enc_key = X25519PrivateKey.from_private_bytes(random_bytes(32, self._rng))
        self._mask_seed = random_bytes(16, self._rng)
        self._mask_key = mask_key_from_seed(self._mask_seed)
        self._next = Stage.SHARE_KEYS
        return AdvertiseKeysRes(
            session=self._session, pk_enc=public_bytes(self._enc_key), pk_mask=public_bytes(self._mask_key)
        )

    # -- stage 2 ---------------------------------------------------------------------------

    def share_keys(self, ins: ShareKeysIns) -> ShareKeysRes:
        """Shamir-share ``b`` and the mask-key seed; encrypt one share pair per live neighbour."""
        self._enter(Stage.SHARE_KEYS, ins.session)
        p = self.params
        live = set(ins.pk_enc)
        if not live <= set(p.neighbours):
            self.fail()
            raise SecAggError(f"{self.site_id}: share_keys names non-neighbours {sorted(live - set(p.neighbours))}")
        if len(live) + 1 < p.threshold:
            self.fail()
            raise SecAggError(
                f"{self.site_id}: {len(live)} live neighbour(s) + itself is below threshold {p.threshold}"
            )
        if len(set(ins.pk_mask.values())) != len(ins.pk_mask):
            self.fail()
            raise SecAggError(f"{self.site_id}: two neighbours advertised the same masking key")
        self._pk_enc = dict(ins.pk_enc)
        self._pk_mask = dict(ins.pk_mask)
        self._b = random_bytes(16, self._rng)
        holders = holders_of(self.site_id, p.neighbours)
        b_shares = split_secret(self._b, p.threshold, len(holders))
        sk_shares = split_secret(self._mask_seed, p.threshold, len(holders))
        assert self._enc_key is not None
        cts: dict[SiteId, bytes] = {}
        for i, holder in enumerate(holders):
            if holder == self.site_id:
                self._own_b_share = b_shares[i]
                continue
            if holder not in live:
                continue
            key = self._share_keys[holder] = share_key(self._enc_key, self._pk_enc[holder], self._session)
            cts[holder] = encrypt_share(
                key,
                b_shares[i] + sk_shares[i],
                run_id=self.run_id,
                round_no=self.round_no,
                session=self._session,
                sender=self.site_id,
                receiver=holder,
                rng=self._rng,
            )
        self._next = Stage.MASKED_INPUT
        return ShareKeysRes(session=self._session, ciphertexts=cts, b_commitment=hashlib.sha256(self._b).digest())

    # -- stage 3 ---------------------------------------------------------------------------

    def check_masked_input(self, ins: MaskedInputIns) -> None:
        """Validate a stage-3 instruction and store the neighbours' shares (before training)."""
        self._enter(Stage.MASKED_INPUT, ins.session)
        p = self.params
        try:
            senders = set(ins.ciphertexts)
            if not senders <= set(self._pk_enc):
                raise SecAggError(
                    f"{self.site_id}: shares from sites it has no key for: {sorted(senders - set(self._pk_enc))}"
                )
            if len(senders) + 1 < p.threshold:
                raise SecAggError(
                    f"{self.site_id}: only {len(senders)} neighbour(s) hold its shares, threshold {p.threshold}"
                )
            if ins.num_peers < max(self.min_peers, len(senders) + 1) or ins.num_peers > p.num_sites:
                raise SecAggError(
                    f"{self.site_id}: refused: {ins.num_peers} site(s) in the sum, policy needs {self.min_peers}"
                )
            assert self._enc_key is not None
            shares: dict[SiteId, tuple[bytes, bytes]] = {}
            for sender in sorted(senders):
                key = self._share_keys.get(sender) or share_key(self._enc_key, self._pk_enc[sender], self._session)
                plain = decrypt_share(
                    key,
                    ins.ciphertexts[sender],
                    run_id=self.run_id,
                    round_no=self.round_no,
                    session=self._session,
                    sender=sender,
                    receiver=self.site_id,
                )
                if len(plain) != 32:
                    raise SecAggError(f"{self.site_id}: share from {sender} has {len(plain)} bytes, expected 32")
                shares[sender] = (plain[:16], plain[16:])
        except Exception:
            self.fail()
            raise
        self._shares = shares
        self._mask_peers = tuple(sorted(senders))
        self._num_peers = ins.num_peers

    def masked_input(
        self,
        delta: npt.NDArray[np.floating[Any]],
        weight: int,
        *,
        noise_rng: np.random.Generator | None = None,
        overwrite: bool = False,
    ) -> MaskedInputRes:
        """Encode ``weight * delta`` (plus this site's DP noise share) and add all masks.

        Call after :meth:`check_masked_input`; ``delta`` is the flat update (trained minus global).
        With ``overwrite=True`` the site may use ``delta``'s memory as scratch.
        """
        if self._next is not Stage.MASKED_INPUT or not self._session or self._mask_key is None:
            self.fail()
            raise SecAggError(f"{self.site_id}: masked_input before a valid masked_input instruction")
        p = self.params
        try:
            if delta.shape != (p.vector_size,):
                raise SecAggError(f"{self.site_id}: update has {delta.size} values, round expects {p.vector_size}")
            metrics: dict[str, float] = {}
            if p.dp_noise_multiplier > 0:
                delta, metrics = _dp_share(delta, p, self._num_peers, noise_rng)
                weight = 1  # DP bounds each site's contribution: uniform weights (see docs)
            codec = FixedPointCodec(clip_range=p.clip_range, bits=p.bits, modulus_bits=p.modulus_bits)
            out = np.empty(p.vector_size + 1, dtype=codec.dtype)
            codec.encode_into(out, delta, weight, p.max_site_weight, overwrite=overwrite)
            prg = MaskExpander(out.size, codec.dtype)
            prg.apply(out, self._b, +1)
            for peer in self._mask_peers:
                seed = pairwise_seed(self._mask_key, self._pk_mask[peer], self._session)
                prg.apply(out, seed, mask_sign(self.site_id, peer))
        except Exception:
            self.fail()
            raise
        self._next = Stage.UNMASK
        return MaskedInputRes(session=self._session, masked=out, metrics=metrics)

    # -- stage 4 ---------------------------------------------------------------------------

    def unmask(self, ins: UnmaskIns) -> UnmaskRes:
        """Reveal ``b`` shares of survivors and mask-key shares of dropped neighbours, never both."""
        self._enter(Stage.UNMASK, ins.session)
        self._next = None  # whatever happens, the session ends here
        survivors, dropped = set(ins.survivors), set(ins.dropped)
        if survivors & dropped:
            raise SecAggError(f"{self.site_id}: {sorted(survivors & dropped)} listed as both survived and dropped")
        if self.site_id not in survivors:
            raise SecAggError(f"{self.site_id}: unmask instruction does not list this site as a survivor")
        if survivors | dropped != {*self._mask_peers, self.site_id}:
            raise SecAggError(f"{self.site_id}: unmask lists do not match the neighbours it masked with")
        if ins.num_survivors < max(self.min_peers, len(survivors)) or ins.num_survivors > self.params.num_sites:
            raise SecAggError(
                f"{self.site_id}: refused: {ins.num_survivors} site(s) in the sum, policy needs {self.min_peers}"
            )
        b_shares = {v: self._shares[v][0] for v in survivors if v != self.site_id}
        b_shares[self.site_id] = self._own_b_share
        sk_shares = {v: self._shares[v][1] for v in dropped}
        return UnmaskRes(session=self._session, b_shares=b_shares, sk_shares=sk_shares)


def _dp_share(
    delta: npt.NDArray[np.floating[Any]], p: RoundParams, num_peers: int, rng: np.random.Generator | None
) -> tuple[npt.NDArray[np.float64], dict[str, float]]:
    """Clip to L2 norm ``C`` and add ``N(0, (z C)^2 / m)``: ``m`` shares sum to the central noise.

    Distributed Gaussian mechanism (Truex et al., AISec 2019; Kairouz, Liu, Steinke,
    ICML 2021 for its discrete analysis): the sum of ``m`` independent shares of variance
    ``(z C)^2 / m`` has the variance central DP-FedAvg adds (McMahan et al., ICLR 2018).
    """
    rng = rng if rng is not None else np.random.default_rng()  # OS-entropy seeded by default
    x = np.asarray(delta, dtype=np.float64)
    norm = float(np.linalg.norm(x))
    factor = min(1.0, p.dp_clip_norm / norm) if norm > 0 else 1.0
    sigma = p.dp_noise_multiplier * p.dp_clip_norm / np.sqrt(num_peers)
    noisy = x * factor + rng.normal(0.0, sigma, size=x.shape)
    return noisy, {"dp_clipped": float(factor < 1.0), "dp_noise_std_share": float(sigma)}
