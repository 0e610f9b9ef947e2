"""A site node's side of SecAgg+: dispatch stage messages to per-round :class:`SecAggSite` sessions.

The node calls :meth:`SecAggSiteHandler.handle` for every ``secagg`` instruction (after its
policy admitted the task). The masked-input stage runs the site's own fit pipeline (the
``fit`` callable: :meth:`fedcare.runtime.node.SiteNode.fit_update`, the same one a plain
fit runs, with personalisation, DP and the ledger) and only encodes and masks the
typed update it returns; the unmasked update never leaves this object.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from fedcare.secure.errors import SecAggError
from fedcare.secure.site import SecAggSite
from fedcare.secure.stages import AdvertiseKeysIns, MaskedInputIns, ShareKeysIns, UnmaskIns, parse_instruction
from fedcare.types import Message, ModelState, SiteId, SiteUpdate

__all__ = ["SecAggSiteHandler", "flat_delta", "flatten_state"]

_MAX_SESSIONS = 16
_MAX_SEEN_IDS = 4096
_local = threading.local()


def _scratch(size: int, dtype: type[np.floating[Any]]) -> npt.NDArray[np.floating[Any]]:
    """A per-thread work vector reused across rounds (no fresh pages to fault in every round)."""
    key = (size, np.dtype(dtype).str)
    buf = getattr(_local, "scratch", None)
    if buf is None or buf[0] != key:
        buf = (key, np.empty(size, dtype=dtype))
        _local.scratch = buf
    return buf[1]


def flatten_state(state: ModelState, names: list[str]) -> npt.NDArray[np.float64]:
    """Concatenate ``state``'s entries (in ``names`` order) into one float64 vector."""
    if not names:
        return np.zeros(0)
    return np.concatenate([np.asarray(state[n], dtype=np.float64).ravel() for n in names])


def flat_delta(
    new: ModelState, old: ModelState, names: list[str], *, reuse: bool = False
) -> npt.NDArray[np.floating[Any]]:
    """``new - old`` flattened in ``names`` order, in one pass (float32 if every entry is float32).

    With ``reuse=True`` the result lives in a per-thread buffer that the next call overwrites.
    """
    dtype = np.float32 if all(new[n].dtype == np.float32 and old[n].dtype == np.float32 for n in names) else np.float64
    size = sum(int(old[n].size) for n in names)
    out: npt.NDArray[np.floating[Any]] = _scratch(size, dtype) if reuse else np.empty(size, dtype=dtype)
    offset = 0
    for n in names:
        k = int(old[n].size)
        if new[n].shape != old[n].shape:
            raise SecAggError(f"trained entry {n!r} has shape {new[n].shape}, expected {old[n].shape}")
        np.subtract(new[n].reshape(-1), old[n].reshape(-1), out=out[offset : offset + k], dtype=dtype)
        offset += k
    return out


#: The site's fit pipeline: the instruction and a check of the admitted DP plan -> its update.
SiteFit = Callable[..., SiteUpdate]


class SecAggSiteHandler:
    """Per-site SecAgg+ sessions keyed by (run, round); refuses replays and unknown sessions.

    Parameters
    ----------
    site_id : SiteId
        This site.
    fit : SiteFit
        The site's fit pipeline, called as ``fit(message, check=...)`` in the
        masked-input stage (``SiteNode.fit_update``); ``check`` receives the admitted
        :class:`~fedcare.privacy.guard.Admission` before training and raises to refuse.
    min_peers : int (default: 1)
        Policy: the fewest sites this site's update may be summed with (itself included).
    rng : numpy.random.Generator or None (default: None)
        Keys and noise; ``None`` = OS CSPRNG (a seeded generator is for tests only).
    """

    def __init__(
        self,
        *,
        site_id: SiteId,
        fit: SiteFit,
        min_peers: int = 1,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.site_id = site_id
        self.fit = fit
        self.min_peers = min_peers
        self._rng = rng
        self._sessions: OrderedDict[tuple[str, int], SecAggSite] = OrderedDict()
        self._seen_ids: OrderedDict[str, None] = OrderedDict()  # recent instruction ids (replay guard)

    def handle(self, message: Message) -> Message:
        """Run one stage; a refusal or protocol error becomes an error reply."""
        where = f"secagg instruction at {self.site_id}"
        try:
            if message.message_id in self._seen_ids:
                raise SecAggError(f"{self.site_id}: replayed instruction {message.message_id}")
            self._seen_ids[message.message_id] = None
            while len(self._seen_ids) > _MAX_SEEN_IDS:
                self._seen_ids.popitem(last=False)
            ins = parse_instruction(message.payload, where)
            key = (str(message.run_id), int(message.round_no))
            if isinstance(ins, AdvertiseKeysIns):
                if key in self._sessions:
                    raise SecAggError(f"{self.site_id}: round {message.round_no} already has a session (replay)")
                session = SecAggSite(
                    self.site_id, run_id=key[0], round_no=key[1], min_peers=self.min_peers, rng=self._rng
                )
                self._sessions[key] = session
                while len(self._sessions) > _MAX_SESSIONS:
                    self._sessions.popitem(last=False)
                return message.reply(session.advertise_keys(ins).to_payload())
            if key not in self._sessions:
                raise SecAggError(f"{self.site_id}: no secure-aggregation session for round {message.round_no}")
            session = self._sessions[key]
            if isinstance(ins, ShareKeysIns):
                return message.reply(session.share_keys(ins).to_payload())
            if isinstance(ins, MaskedInputIns):
                return message.reply(self._masked_input(session, ins, message).to_payload())
            assert isinstance(ins, UnmaskIns)
            return message.reply(session.unmask(ins).to_payload())
        except SecAggError as exc:
            return message.reply(error=f"SecAggError: {exc}")

    def _names(self, update: SiteUpdate, message: Message) -> list[str]:
        """The order in which model entries are flattened into the masked vector."""
        return list(update.reference)

    def _masked_input(self, session: SecAggSite, ins: MaskedInputIns, message: Message) -> Any:
        session.check_masked_input(ins)

        def one_client_mechanism(admission: Any) -> None:
            if admission.plan.client is not None and session.params.dp_noise_multiplier > 0:
                raise SecAggError(f"{self.site_id}: two client-level DP mechanisms in one round (plan and SecAgg dp)")

        try:
            update = self.fit(message, check=one_client_mechanism)
            if update.extras:
                raise SecAggError(
                    f"{self.site_id}: secure aggregation carries only the model, not {sorted(update.extras)}"
                )
            if set(update.state) != set(update.reference):
                raise SecAggError(f"{self.site_id}: trained model entries differ from the global model's")
            names = self._names(update, message)
            delta = flat_delta(update.state, update.reference, names, reuse=True)
        except Exception:
            session.fail()
            raise
        reply = session.masked_input(delta, round(update.weight), noise_rng=self._rng, overwrite=True)
        metrics = {**{k: float(v) for k, v in update.metrics.items()}, **reply.metrics}
        return type(reply)(session=reply.session, masked=reply.masked, metrics=metrics)
