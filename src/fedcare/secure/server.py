"""The server side of SecAgg+ as a sans-I/O state machine.

:class:`SecAggServer` never sends or waits: :meth:`start` and :meth:`advance` return the
next stage's typed instructions per site, :meth:`receive` takes one typed reply, and
:meth:`result` returns the unmasked sum. The Coordinator's workflow does the I/O, the
deadlines and the recording. Masked inputs are folded into one running ring sum as they
arrive (O(model) memory).

A site that does not answer a stage is a dropout. Before each stage the server prunes
sites whose secrets could no longer be reconstructed (fewer than ``t`` live holders) and
aborts, with :class:`SecAggAbort` and nothing revealed, when fewer than
``min_survivors`` sites remain or a needed secret has fewer than ``t`` shares.

Protocol: Bonawitz et al., CCS 2017 (Fig. 4); communication graph of Bell et al., CCS 2020.
Threat model: a semi-honest (honest-but-curious) server and sites; stage messages are
authenticated and bound to run, round, session, stage, sender and receiver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.secure.encoding import FixedPointCodec
from fedcare.secure.errors import SecAggAbort, SecAggError
from fedcare.secure.graph import harary_graph
from fedcare.secure.keys import random_bytes
from fedcare.secure.site import holders_of
from fedcare.secure.stages import (
    AdvertiseKeysIns,
    AdvertiseKeysRes,
    MaskedInputIns,
    MaskedInputRes,
    Reply,
    RoundParams,
    ShareKeysIns,
    ShareKeysRes,
    Stage,
    UnmaskIns,
    UnmaskRes,
)
from fedcare.secure.unmask import remove_masks
from fedcare.types import SiteId

__all__ = ["SecAggResult", "SecAggServer"]


@dataclass(frozen=True)
class SecAggResult:
    """The unmasked aggregate of one round.

    Attributes
    ----------
    weighted_sum : ndarray of float64
        ``sum_k w_k * delta_k`` over the surviving sites (decoded).
    total_weight : int
        ``sum_k w_k`` over the surviving sites.
    survivors : tuple[SiteId, ...]
        Sites whose masked input is in the sum.
    dropped : dict[SiteId, str]
        Sites that left the round, with the stage at which they did.
    """

    weighted_sum: npt.NDArray[np.float64]
    total_weight: int
    survivors: tuple[SiteId, ...]
    dropped: dict[SiteId, str] = field(default_factory=dict)


class SecAggServer:
    """Server state machine for one SecAgg+ round.

    Parameters
    ----------
    sites : Sequence[SiteId]
        Sites invited to the round.
    run_id : str
        Run id (sites bind their share ciphertexts to it).
    round_no : int
        Round number.
    vector_size : int
        Model coordinates per update.
    codec : FixedPointCodec
        Encoding of updates.
    degree : int
        Degree ``k`` of the communication graph (``>= n - 1``: complete graph).
    threshold : int
        Shares ``t`` needed to reconstruct a secret; ``1 <= t <= k + 1``.
    max_site_weight : int
        Largest weight one site may encode (checked against overflow).
    min_survivors : int (default: 1)
        Abort when fewer sites remain at any stage.
    dp_clip_norm, dp_noise_multiplier : float (default: 0.0)
        Distributed DP parameters forwarded to the sites (0 disables).
    rng : numpy.random.Generator or None (default: None)
        Graph and session id; ``None`` draws from the OS CSPRNG.
    """

    def __init__(
        self,
        *,
        sites: Sequence[SiteId],
        run_id: str,
        round_no: int,
        vector_size: int,
        codec: FixedPointCodec,
        degree: int,
        threshold: int,
        max_site_weight: int,
        min_survivors: int = 1,
        dp_clip_norm: float = 0.0,
        dp_noise_multiplier: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.sites = tuple(sorted(sites))
        if not self.sites:
            raise SecAggError("secure aggregation needs at least one site")
        codec.check_capacity(len(self.sites), max_site_weight)
        graph_rng = rng if rng is not None else np.random.default_rng(int.from_bytes(random_bytes(16, None), "big"))
        self.graph = harary_graph(self.sites, degree, graph_rng)
        min_holders = min(len(v) for v in self.graph.values()) + 1
        if not 1 <= threshold <= min_holders:
            raise SecAggError(
                f"threshold {threshold} must be in [1, {min_holders}] (degree {degree} + the site itself)"
            )
        self.run_id = run_id
        self.round_no = round_no
        self.vector_size = vector_size
        self.codec = codec
        self.threshold = threshold
        self.max_site_weight = max_site_weight
        self.min_survivors = max(1, min_survivors)
        self.dp = (dp_clip_norm, dp_noise_multiplier)
        self.session = random_bytes(16, rng)
        self.dropped: dict[SiteId, str] = {}
        #: Sites whose input is in the sum but that did not answer the unmask stage.
        self.unmask_missing: dict[SiteId, str] = {}
        self._stage: Stage | None = None
        self._asked: set[SiteId] = set()
        self._answered: set[SiteId] = set()
        self._alive: set[SiteId] = set(self.sites)
        self._pk_enc: dict[SiteId, bytes] = {}
        self._pk_mask: dict[SiteId, bytes] = {}
        self._cts: dict[SiteId, Mapping[SiteId, bytes]] = {}
        self._commit: dict[SiteId, bytes] = {}
        self._acc = np.zeros(vector_size + 1, dtype=codec.dtype)
        self._submitted: set[SiteId] = set()
        self._dropped_inputs: set[SiteId] = set()
        self._b_shares: dict[SiteId, list[tuple[int, bytes]]] = {}
        self._sk_shares: dict[SiteId, list[tuple[int, bytes]]] = {}
        self._mask_group: set[SiteId] = set()  # U2: sites asked for a masked input
        self._unmask_ins: dict[SiteId, UnmaskIns] = {}
        self._unmasked = False  # the unmask stage has been closed
        self._aborted = False
        self._done = False

    # -- helpers ---------------------------------------------------------------------------

    @property
    def stage(self) -> Stage | None:
        """The stage whose replies are awaited (``None`` before start and after the end)."""
        return self._stage

    def _live_neighbours(self, site: SiteId, alive: set[SiteId]) -> list[SiteId]:
        return [v for v in self.graph[site] if v in alive]

    def _share_index(self, owner: SiteId, holder: SiteId) -> int:
        return holders_of(owner, self.graph[owner]).index(holder) + 1

    def _drop(self, sites: set[SiteId], why: str) -> None:
        for s in sorted(sites):
            self.dropped.setdefault(s, why)
        self._alive -= sites

    def _prune(self, why: str) -> None:
        """Drop sites with fewer than ``t`` live holders, until stable; abort if too few remain."""
        while True:
            weak = {s for s in self._alive if len(self._live_neighbours(s, self._alive)) + 1 < self.threshold}
            if not weak:
                break
            self._drop(weak, why)
        self._check_enough()

    def _check_enough(self) -> None:
        if len(self._alive) < self.min_survivors:
            self._abort(f"{len(self._alive)} site(s) left, at least {self.min_survivors} required")

    def _abort(self, why: str) -> None:
        self._aborted = True
        self._stage = None
        self._acc = np.zeros(0, dtype=self.codec.dtype)  # nothing partial survives an abort
        raise SecAggAbort(f"round {self.round_no}: secure aggregation aborted: {why}")

    def _open(self, stage: Stage, sites: set[SiteId]) -> None:
        self._stage = stage
        self._asked = set(sites)
        self._answered = set()

    def _close(self) -> set[SiteId]:
        if self._aborted:
            raise SecAggError("the round was aborted")
        missing = self._asked - self._answered
        if self._stage is Stage.UNMASK:  # their inputs stay in the sum; only their shares are missing
            for s in sorted(missing):
                self.unmask_missing.setdefault(s, "no valid unmask reply")
        elif self._stage is not None and missing:
            self._drop(missing, f"no valid {self._stage.value} reply")
        return self._answered

    # -- driving ---------------------------------------------------------------------------

    def start(self) -> dict[SiteId, AdvertiseKeysIns]:
        """Open stage 1: the round parameters for each site."""
        if self._stage is not None or self._done or self._aborted:
            raise SecAggError("the round has already started")
        self._check_enough()
        self._open(Stage.ADVERTISE_KEYS, set(self._alive))
        clip, z = self.dp
        return {
            s: AdvertiseKeysIns(
                session=self.session,
                params=RoundParams(
                    neighbours=self.graph[s],
                    threshold=self.threshold,
                    num_sites=len(self.sites),
                    vector_size=self.vector_size,
                    clip_range=self.codec.clip_range,
                    bits=self.codec.bits,
                    modulus_bits=self.codec.modulus_bits,
                    max_site_weight=self.max_site_weight,
                    dp_clip_norm=clip,
                    dp_noise_multiplier=z,
                ),
            )
            for s in sorted(self._alive)
        }

    def receive(self, site: SiteId, reply: Reply) -> None:
        """Take one site's reply to the open stage; raise :class:`SecAggError` if it is refused."""
        if self._aborted or self._stage is None:
            raise SecAggError(f"reply from {site}: no stage is open")
        if reply.stage is not self._stage:
            raise SecAggError(f"reply from {site}: stage {reply.stage.value} out of order (open: {self._stage.value})")
        if reply.session != self.session:
            raise SecAggError(f"reply from {site}: wrong session (replayed from another round?)")
        if site not in self._asked:
            raise SecAggError(f"reply from {site}: site was not asked in stage {self._stage.value}")
        if site in self._answered:
            raise SecAggError(f"reply from {site}: duplicate {self._stage.value} reply (replay)")
        if isinstance(reply, AdvertiseKeysRes):
            if reply.pk_mask in self._pk_mask.values() or reply.pk_enc in self._pk_enc.values():
                raise SecAggError(f"reply from {site}: public key already used by another site")
            self._pk_enc[site], self._pk_mask[site] = reply.pk_enc, reply.pk_mask
        elif isinstance(reply, ShareKeysRes):
            want = set(self._live_neighbours(site, self._asked))
            if set(reply.ciphertexts) != want:
                raise SecAggError(f"reply from {site}: shares for {sorted(reply.ciphertexts)}, expected {sorted(want)}")
            self._cts[site], self._commit[site] = reply.ciphertexts, reply.b_commitment
        elif isinstance(reply, MaskedInputRes):
            np.add(self._acc, reply.masked, out=self._acc)
            self._submitted.add(site)
        elif isinstance(reply, UnmaskRes):
            ins = self._unmask_ins[site]
            if set(reply.b_shares) != set(ins.survivors) or set(reply.sk_shares) != set(ins.dropped):
                raise SecAggError(f"reply from {site}: unmask shares do not answer the instruction")
            for owner, share in reply.b_shares.items():
                self._b_shares.setdefault(owner, []).append((self._share_index(owner, site), share))
            for owner, share in reply.sk_shares.items():
                self._sk_shares.setdefault(owner, []).append((self._share_index(owner, site), share))
        self._answered.add(site)

    def advance(self) -> dict[SiteId, Any]:
        """Close the open stage (non-responders drop out) and return the next stage's instructions.

        Raises
        ------
        SecAggAbort
            When too few sites remain; nothing is revealed and the server refuses further calls.
        """
        stage = self._stage
        self._close()
        if stage is Stage.ADVERTISE_KEYS:
            self._prune("dropped before share_keys")
            self._open(Stage.SHARE_KEYS, set(self._alive))
            return {
                s: ShareKeysIns(
                    session=self.session,
                    pk_enc={v: self._pk_enc[v] for v in self._live_neighbours(s, self._alive)},
                    pk_mask={v: self._pk_mask[v] for v in self._live_neighbours(s, self._alive)},
                )
                for s in sorted(self._alive)
            }
        if stage is Stage.SHARE_KEYS:
            self._prune("dropped before masked_input")
            self._open(Stage.MASKED_INPUT, set(self._alive))
            n = len(self._alive)
            return {
                s: MaskedInputIns(
                    session=self.session,
                    ciphertexts={u: self._cts[u][s] for u in self._live_neighbours(s, self._alive)},
                    num_peers=n,
                )
                for s in sorted(self._alive)
            }
        if stage is Stage.MASKED_INPUT:
            self._mask_group = set(self._asked)  # U2: everyone who was asked for a masked input
            self._check_enough()
            self._check_reconstructible(self._alive)
            self._open(Stage.UNMASK, set(self._alive))
            n = len(self._alive)
            self._unmask_ins = {
                s: UnmaskIns(
                    session=self.session,
                    survivors=tuple(sorted({s, *self._live_neighbours(s, self._alive)})),
                    dropped=tuple(v for v in self.graph[s] if v in self._mask_group and v not in self._alive),
                    num_survivors=n,
                )
                for s in sorted(self._alive)
            }
            return dict(self._unmask_ins)
        if stage is Stage.UNMASK:
            self._stage = None
            self._unmasked = True
            return {}
        raise SecAggError("advance() called before start()")

    def _check_reconstructible(self, answering: set[SiteId]) -> None:
        """Abort unless every needed secret has at least ``t`` holders among ``answering``."""
        for u in sorted(self._alive):
            have = len({u, *self._live_neighbours(u, answering)} & answering)
            if have < self.threshold:
                self._abort(f"only {have} holder(s) of {u}'s self-mask seed answer, threshold {self.threshold}")
        for d in sorted(self._mask_group - self._alive):
            if any(v in self._alive for v in self.graph[d]):
                have = len(self._live_neighbours(d, answering))
                if have < self.threshold:
                    self._abort(f"only {have} holder(s) of dropped {d}'s mask key answer, threshold {self.threshold}")

    def result(self) -> SecAggResult:
        """Reconstruct the secrets, remove every mask, and decode the sum (after the unmask stage)."""
        if self._aborted:
            raise SecAggError("the round was aborted: no aggregate")
        if self._stage is Stage.UNMASK:
            self.advance()
        if self._done or not self._unmasked:
            raise SecAggError("result() needs the unmask stage to be complete")
        answering = set(self._answered)
        survivors = sorted(self._alive)
        self._check_reconstructible(answering)
        total = self._acc
        try:
            remove_masks(
                total,
                survivors=survivors,
                dropped=sorted(self._mask_group - self._alive),
                peers_of=lambda d: self.graph[d],
                b_shares=self._b_shares,
                sk_shares=self._sk_shares,
                commitments=self._commit,
                pk_mask=self._pk_mask.__getitem__,
                session=self.session,
                threshold=self.threshold,
            )
        except SecAggError as exc:
            self._abort(str(exc))
        weighted_sum, weight = self.codec.decode_sum(total)
        self._done = True
        self._acc = np.zeros(0, dtype=self.codec.dtype)
        return SecAggResult(
            weighted_sum=weighted_sum, total_weight=weight, survivors=tuple(survivors), dropped=dict(self.dropped)
        )
