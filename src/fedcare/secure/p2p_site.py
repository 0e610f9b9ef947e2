"""A site's side of a peer-to-peer round: SecAgg+ masking, then the server's half run at the site.

:class:`PeerToPeerSiteHandler` is a :class:`~fedcare.secure.handler.SecAggSiteHandler`
whose masked-input stage trains from the site's **own copy** of the run's model (kept in
its per-run memory, record :data:`~fedcare.secure.p2p_wire.MODEL_RECORD`; the initial
model arrives once, in the first round, and must match the digest the round names), and
which then runs two more stages:

* ``p2p.unmask``: the site's shares that unmask the sum (self-mask shares of survivors,
  mask-key shares of dropped sites, never both for one site) are encrypted once per
  other survivor with the AES-GCM key they agreed in stage 2; the coordinator relays
  boxes it cannot open.
* ``p2p.aggregate``: the site checks that its own masked vector is among the relayed
  ones (unless the relay sent their sum, ``relay = "sum"``), opens the boxes addressed
  to it, reconstructs every secret from ``t`` shares (checking self-mask seeds against
  their commitments and mask keys against their public keys), removes the masks, decodes
  ``sum_k w_k delta_k`` and ``sum_k w_k``, and replaces its copy with ``global + sum / W``
  (FedAvg's arithmetic, in the same order as the coordinator's fold). It returns the
  sha256 of the new model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from fedcare.secure.encoding import FixedPointCodec
from fedcare.secure.errors import SecAggError
from fedcare.secure.handler import SecAggSiteHandler, SiteFit
from fedcare.secure.keys import decrypt_share, encrypt_share
from fedcare.secure.p2p_wire import (
    AGGREGATE,
    DIGEST_KEY,
    EXPECTED_KEY,
    FLAG,
    MODEL_RECORD,
    UNMASK,
    WEIGHT_KEY,
    AggregateIns,
    bundles_payload,
    decode_bundle,
    encode_bundle,
    model_digest,
)
from fedcare.secure.site import SecAggSite, holders_of
from fedcare.secure.stages import STAGE_KEY, Stage, UnmaskIns, UnmaskRes
from fedcare.secure.unmask import remove_masks
from fedcare.types import ConfigValue, Message, ModelState, Payload, RunId, SiteId, SiteUpdate

__all__ = ["PeerToPeerSiteHandler"]

#: The site's per-run memory (``SiteNode`` keeps it, on disk when deployed).
RunMemory = Callable[[RunId], dict[str, ModelState]]


class PeerToPeerSiteHandler(SecAggSiteHandler):
    """SecAgg+ site sessions plus the peer-to-peer unmask and aggregate stages.

    Parameters
    ----------
    site_id : SiteId
        This site.
    fit : SiteFit
        The site's fit pipeline (``SiteNode.fit_update``).
    memory : callable
        ``memory(run_id)``: the site's per-run memory, where its copy of the model lives.
    min_peers : int (default: 1)
        Policy: the fewest sites this site's update may be summed with.
    rng : numpy.random.Generator or None (default: None)
        Keys and nonces; ``None`` = OS CSPRNG.
    """

    def __init__(
        self,
        *,
        site_id: SiteId,
        fit: SiteFit,
        memory: RunMemory,
        min_peers: int = 1,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(site_id=site_id, fit=fit, min_peers=min_peers, rng=rng)
        self.memory = memory
        # per (run, round): the model this site trained from, its masked vector, its own unmask shares
        self._round: dict[tuple[str, int], dict[str, Any]] = {}

    def handle(self, message: Message) -> Message:
        """Run one stage of a peer-to-peer round; a refusal or protocol error becomes an error reply."""
        key = (str(message.run_id), int(message.round_no))
        stage = message.payload.config.get(STAGE_KEY)
        try:
            if stage == UNMASK:
                self._remember(message)
                return message.reply(self._unmask(key, message))
            if stage == AGGREGATE:
                self._remember(message)
                return message.reply(self._aggregate(key, message))
            if stage == Stage.ADVERTISE_KEYS.value:
                while len(self._round) >= 4:
                    del self._round[next(iter(self._round))]
                self._round[key] = {}
            if stage == Stage.MASKED_INPUT.value:
                message = self._own_model(key, message)
        except SecAggError as exc:
            session = self._sessions.get(key)
            if session is not None:
                session.fail()
            self._round.pop(key, None)
            return message.reply(error=f"SecAggError: {exc}")
        reply = super().handle(message)
        if stage == Stage.MASKED_INPUT.value and not reply.has_error and key in self._round:
            masked = reply.payload.arrays.get("secagg", {}).get("masked")
            self._round[key]["masked"] = None if masked is None else np.array(masked, copy=True)
        return reply

    def _remember(self, message: Message) -> None:
        if message.message_id in self._seen_ids:
            raise SecAggError(f"{self.site_id}: replayed instruction {message.message_id}")
        self._seen_ids[message.message_id] = None

    def _state(self, key: tuple[str, int], what: str) -> tuple[SecAggSite, dict[str, Any]]:
        session, state = self._sessions.get(key), self._round.get(key)
        if session is None or state is None:
            raise SecAggError(f"{self.site_id}: {what} for round {key[1]} without a peer-to-peer session")
        return session, state

    def _names(self, update: SiteUpdate, message: Message) -> list[str]:
        state = self._round.get((str(message.run_id), int(message.round_no)), {})
        model = state.get("global")
        return list(model) if model is not None else list(update.reference)

    # -- stage 3: train from the site's own copy ---------------------------------------------

    def _own_model(self, key: tuple[str, int], message: Message) -> Message:
        """The instruction with this site's copy of the model (adopting the first round's, if it has none)."""
        _, state = self._state(key, "masked_input")
        config = message.payload.config
        expected = config.get(EXPECTED_KEY)
        if not isinstance(expected, str) or len(expected) != 64:
            raise SecAggError(f"{self.site_id}: the instruction names no model digest ({EXPECTED_KEY})")
        memory = self.memory(message.run_id)
        copy = memory.get(MODEL_RECORD)
        if copy is None:
            sent = message.payload.arrays.get("model")
            if sent is None:
                raise SecAggError(
                    f"{self.site_id}: out of sync: no copy of the run's model (it missed a round or lost its memory)"
                )
            copy = {k: np.array(v, copy=True) for k, v in sent.items()}
        mine = model_digest(copy)
        if mine != expected:
            raise SecAggError(
                f"{self.site_id}: out of sync: its model {mine[:16]} differs from the round's {expected[:16]}"
            )
        memory[MODEL_RECORD] = copy
        state["global"] = copy
        arrays = {**message.payload.arrays, "model": copy}
        return replace(message, payload=replace(message.payload, arrays=arrays))

    # -- stage 4: encrypted unmask boxes, one per other survivor ---------------------------

    def _unmask(self, key: tuple[str, int], message: Message) -> Payload:
        session, state = self._state(key, "unmask")
        where = f"p2p unmask instruction at {self.site_id}"
        config: dict[str, ConfigValue] = {**message.payload.config, STAGE_KEY: Stage.UNMASK.value}
        ins = UnmaskIns.from_payload(Payload(config=config), where)
        res: UnmaskRes = session.unmask(ins)
        state["shares"] = res
        plain = encode_bundle(res.b_shares, res.sk_shares)
        boxes = {
            peer: encrypt_share(
                session.peer_box(peer),
                plain,
                run_id=key[0],
                round_no=key[1],
                session=session.session,
                sender=self.site_id,
                receiver=peer,
                rng=self._rng,
                stage=UNMASK,
            )
            for peer in ins.survivors
            if peer != self.site_id
        }
        return bundles_payload(session.session, boxes)

    # -- stage 5: unmask the sum and compute the new model -----------------------------------

    def _aggregate(self, key: tuple[str, int], message: Message) -> Payload:
        session, state = self._state(key, "aggregate")
        self._round.pop(key, None)
        p = session.params
        codec = FixedPointCodec(clip_range=p.clip_range, bits=p.bits, modulus_bits=p.modulus_bits)
        where = f"p2p aggregate instruction at {self.site_id}"
        ins = AggregateIns.from_payload(message.payload, where, size=p.vector_size + 1, dtype=codec.dtype)
        own: UnmaskRes | None = state.get("shares")
        model: ModelState | None = state.get("global")
        if own is None or model is None or ins.session != session.session:
            raise SecAggError(f"{self.site_id}: aggregate before this site's unmask stage (or another session)")
        mine = state.get("masked")
        if mine is None or not ins.summed and not np.array_equal(ins.masked.get(self.site_id, ()), mine):
            raise SecAggError(f"{self.site_id}: its own masked update is missing from the relayed ones or altered")
        holders = holders_of(self.site_id, p.neighbours)  # complete graph: every site holds every secret
        index = {h: i + 1 for i, h in enumerate(holders)}
        b_shares: dict[SiteId, list[tuple[int, bytes]]] = {}
        sk_shares: dict[SiteId, list[tuple[int, bytes]]] = {}

        def collect(holder: SiteId, b: dict[SiteId, bytes], sk: dict[SiteId, bytes]) -> None:
            if set(b) != set(ins.survivors) or not set(sk) <= set(ins.dropped):
                raise SecAggError(f"{self.site_id}: the box from {holder} does not answer this round's survivors")
            for owner, share in b.items():
                b_shares.setdefault(owner, []).append((index[holder], share))
            for owner, share in sk.items():
                sk_shares.setdefault(owner, []).append((index[holder], share))

        collect(self.site_id, dict(own.b_shares), dict(own.sk_shares))
        for sender, blob in sorted(ins.boxes.items()):
            if sender not in index or sender == self.site_id:
                raise SecAggError(f"{self.site_id}: an unmask box from {sender}, which holds no share")
            plain = decrypt_share(
                session.peer_box(sender),
                blob,
                run_id=key[0],
                round_no=key[1],
                session=session.session,
                sender=sender,
                receiver=self.site_id,
                stage=UNMASK,
            )
            collect(sender, *decode_bundle(plain, f"{where}, box from {sender}"))
        total = np.zeros(p.vector_size + 1, dtype=codec.dtype)
        for vector in ins.masked.values():  # every survivor's, or the one sum the relay made of them
            np.add(total, vector, out=total)
        try:
            remove_masks(
                total,
                survivors=ins.survivors,
                dropped=ins.dropped,
                peers_of=lambda d: ins.survivors,  # complete graph: every survivor masked with every dropped site
                b_shares=b_shares,
                sk_shares=sk_shares,
                commitments=ins.commitments,
                pk_mask=session.peer_mask_key,
                session=session.session,
                threshold=p.threshold,
            )
        except SecAggError as exc:
            raise SecAggError(f"{self.site_id}: {exc}: the sum cannot be unmasked") from None
        weighted_sum, weight = codec.decode_sum(total)
        new: ModelState = {}
        offset = 0
        inv = 1.0 / float(weight)
        for name, ref in model.items():  # FedAvg's arithmetic: (W * global + sum) * (1 / W)
            n = int(ref.size)
            block = weighted_sum[offset : offset + n].reshape(ref.shape)
            block += float(weight) * np.asarray(ref, dtype=np.float64)
            block *= inv
            new[name] = block.astype(ref.dtype, copy=False)
            offset += n
        if offset != p.vector_size:
            raise SecAggError(f"{self.site_id}: its model has {offset} values, the round {p.vector_size}")
        self.memory(message.run_id)[MODEL_RECORD] = new
        digest = model_digest(new)
        arrays: dict[str, ModelState] = {"model": new} if ins.release else {}
        config: dict[str, ConfigValue] = {STAGE_KEY: AGGREGATE, FLAG: True, DIGEST_KEY: digest, WEIGHT_KEY: weight}
        return Payload(arrays=arrays, config=config)
