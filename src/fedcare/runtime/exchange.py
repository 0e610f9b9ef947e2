"""Exchange: the one send / receive / deadline loop between the coordinator and its sites.

Every conversation with the sites goes through it: the fit and evaluate phases of a
round, each SecAgg+ stage, cohort statistics and the moments query of federated
standardisation. It sends one instruction per site, yields the valid replies as they
arrive, turns error replies, stray replies and missed deadlines into ``failures``
(never exceptions), and records the exchange (who was asked, who answered, who
failed) through the :class:`~fedcare.runtime.recorder.Recorder`. The transport audits
each message on both sides (the gRPC channel and node agent), so whatever goes
through here is recorded and audited the same way, in simulation and deployment.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping

from fedcare.compression import payload_bytes
from fedcare.errors import ConfigError
from fedcare.protocols import Channel, ExchangeReport, NullRecorder, PrefoldRequest, Recorder, can_prefold
from fedcare.types import ConfigValue, Message, MessageKind, Payload, RunId, SiteId

__all__ = ["Exchange", "Stamp", "exchange_name"]

log = logging.getLogger(__name__)

#: Extra config stamped on every instruction to a site in a round (task, task hash, seed).
Stamp = Callable[[SiteId, int], Mapping[str, ConfigValue]]

#: Config keys recorded with an exchange: they say what was asked, never data.
_DETAIL_KEYS = ("query", "spec_hash", "secagg.stage", "task", "task_hash")


def exchange_name(kind: MessageKind, config: Mapping[str, ConfigValue]) -> str:
    """The query or SecAgg stage an instruction names (``""`` for fit and evaluate)."""
    key = {MessageKind.QUERY: "query", MessageKind.SECAGG: "secagg.stage"}.get(kind)
    value = config.get(key) if key else None
    return str(value) if value is not None else ""


class Exchange:
    """Send instructions over a Channel and collect the replies until a deadline.

    Parameters
    ----------
    channel : Channel
        How sites are reached (in-process, Ray, gRPC).
    timeout_s : float
        Deadline of each exchange; sites that miss it are failures.
    recorder : Recorder or None (default: None)
        Where each exchange is recorded (the Store); ``None`` records nothing.
    stamp : Stamp or None (default: None)
        Config added to every instruction (the Coordinator's task, task hash and the
        site's round seed); it overrides the payload's own keys of the same name.
    on_traffic : callable or None (default: None)
        Called as ``on_traffic(site, sent=bytes)`` / ``on_traffic(site, received=bytes)``
        with the array bytes of each instruction and reply (per-site traffic).
    stray : callable or None (default: None)
        Offered each reply that answers no instruction of this exchange (e.g. work a
        buffered asynchronous workflow still has in flight); True means it was taken.
    """

    def __init__(
        self,
        *,
        channel: Channel,
        timeout_s: float,
        recorder: Recorder | None = None,
        stamp: Stamp | None = None,
        on_traffic: Callable[..., None] | None = None,
        stray: Callable[[Message], bool] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ConfigError(f"exchange timeout must be positive, got {timeout_s}")
        self.channel = channel
        self.timeout_s = timeout_s
        self.recorder: Recorder = recorder or NullRecorder()
        self.stamp = stamp
        self.on_traffic = on_traffic
        self.stray = stray

    def sites(self) -> list[SiteId]:
        """Sites the channel reaches now, sorted."""
        return sorted(self.channel.sites())

    def __call__(
        self,
        kind: MessageKind,
        run_id: RunId,
        round_no: int,
        payloads: Mapping[SiteId, Payload],
        failures: dict[SiteId, str],
        *,
        prefold: PrefoldRequest | None = None,
    ) -> Iterator[Message]:
        """Send one instruction per site; yield valid replies as they arrive.

        Error replies, replies that answer nothing outstanding and sites that miss the
        deadline are written to ``failures``; they never raise. The exchange is recorded
        when the iteration ends (also when the caller stops early). ``prefold`` (fit
        only, decided by the Coordinator) goes to a :class:`PrefoldChannel`; any other
        channel delivers every reply whole.
        """
        pending: dict[str, Message] = {}
        for site, payload in payloads.items():
            config = {**payload.config, **(self.stamp(site, round_no) if self.stamp else {})}
            message = Message(
                kind=kind,
                run_id=run_id,
                round_no=round_no,
                site=site,
                payload=Payload(arrays=payload.arrays, config=config, metrics=payload.metrics),
            )
            pending[message.message_id] = message
            if self.on_traffic is not None:
                self.on_traffic(site, sent=payload_bytes(payload.arrays))
        if not pending:
            return
        first = next(iter(pending.values())).payload.config
        sent = tuple(sorted(m.site for m in pending.values()))
        answered: list[SiteId] = []
        mine: dict[SiteId, str] = {}
        started = time.perf_counter()
        try:
            if prefold is not None and can_prefold(self.channel):
                self.channel.send_prefolded(list(pending.values()), prefold)
            else:
                self.channel.send(list(pending.values()))
            for reply in self.channel.receive(timeout_s=self.timeout_s):
                outstanding = pending.get(reply.reply_to or "")
                if outstanding is None or reply.site != outstanding.site or reply.kind is not outstanding.kind:
                    if outstanding is None and self.stray is not None and self.stray(reply):
                        continue
                    log.warning(
                        "ignored reply %s from %s: answers no outstanding instruction", reply.message_id, reply.site
                    )
                    continue
                del pending[outstanding.message_id]
                if self.on_traffic is not None:
                    self.on_traffic(reply.site, received=payload_bytes(reply.payload.arrays))
                if reply.has_error:
                    mine[reply.site] = failures[reply.site] = reply.error or "error"
                else:
                    answered.append(reply.site)
                    yield reply
                if not pending:
                    return
            for outstanding in pending.values():
                why = f"no {kind.value} reply within {self.timeout_s:g} s"
                mine[outstanding.site] = failures[outstanding.site] = why
            pending.clear()
        finally:
            for outstanding in pending.values():  # the caller stopped before the replies came
                mine.setdefault(outstanding.site, "not awaited")
            self.recorder.record_exchange(
                ExchangeReport(
                    run_id=run_id,
                    round_no=round_no,
                    kind=kind,
                    name=exchange_name(kind, first),
                    sent=sent,
                    answered=tuple(sorted(answered)),
                    failures=dict(sorted(mine.items())),
                    duration_s=time.perf_counter() - started,
                    details={k: first[k] for k in _DETAIL_KEYS if k in first},
                )
            )
