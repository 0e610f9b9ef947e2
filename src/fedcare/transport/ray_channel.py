"""RayChannel: simulated sites hosted by a pool of Ray actors, reached by the same Coordinator.

Thousands of sites fit on a few cores because sites share actors: a pool of actors
(by default one per CPU the sites may use at once) each hosts a contiguous group of
sites, and each site's node holds only its own data. A site declares what it needs
(``cpus_per_site`` while it trains, ``memory_per_site`` for its data); an actor runs
its sites one after another, so it reserves one site's CPUs and the memory of all the
sites it hosts.

Instructions and replies cross as fedcare's wire encoding (a protobuf header plus one
safetensors buffer per record, BLAKE3-checked and validated on arrival,
:func:`fedcare.transport.wire.message_from_parts`), exactly what a gRPC peer would send;
a model broadcast to N sites is encoded once and put once into Ray's object store, and
an actor checks a record shared by several of its sites once. (Ray itself moves each
actor's nodes to it once, at start, with its own serialisation: they are the driver's
own objects.)

An actor receives its instructions in batches (one Ray call per batch, at most
``max_batch_bytes`` of instructions each) and streams one reply per site back as soon
as that site has answered (a Ray streaming generator): the driver decodes and yields
replies one at a time as they arrive, so the Coordinator folds them as they come, and
at most ``batches_per_actor`` batches per actor are outstanding, so the driver's memory
is O(model), never O(N * model). An actor that dies, or a node that is lost, turns its
unanswered instructions into error replies: a recorded site failure of that round.

When the Coordinator asks for it (:class:`fedcare.protocols.PrefoldRequest`: FedAvg-like
strategies, whose aggregate is a weighted linear mean), an actor folds its sites'
valid updates itself, in site order, into one float64 partial sum per batch, and sends
that sum plus each folded site's metrics instead of one model per site; a pre-folded
batch counts a shared model once against ``max_batch_bytes``, so an actor's sites go
in one or a few batches. Errors and updates that fail validation come back whole.

Ray is an optional dependency (``pip install 'fedcare[ray]'``); this module imports it.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayError

from fedcare.compression import payload_bytes
from fedcare.errors import ConfigError, FedcareError, SerdeError
from fedcare.protocols import PartialSum, PrefoldRequest
from fedcare.runtime.replies import fit_result
from fedcare.serde import ArraySpec, check_state
from fedcare.strategies.fedavg import WeightedMeanFold
from fedcare.transport.wire import DEFAULT_MAX_MESSAGE_BYTES, Record, message_arrays, message_from_parts
from fedcare.types import Message, Payload, SiteId

__all__ = ["RayChannel"]

log = logging.getLogger(__name__)

#: Instructions sent to one actor in one call, at most (besides the byte budget).
MAX_BATCH_MESSAGES = 512
#: Record of a partial sum sent back by an actor that pre-folds its sites' updates.
SUM_RECORD = "sum"
#: One item a batch streams back: the batch indices it answers, one encoded reply per
#: index, and (pre-folded batches) the encoded partial sum those replies are folded in.
_Item = tuple[list[int], list[tuple[bytes, list[Any]]], tuple[bytes, list[Any]] | None]


class SiteHost:
    """The body of one Ray actor: a group of sites' nodes, each holding only its own data."""

    def __init__(self, nodes: Mapping[str, Any], max_message_bytes: int) -> None:
        self.nodes = dict(nodes)
        self.max_message_bytes = max_message_bytes

    def sites(self) -> list[str]:
        """The sites this actor hosts."""
        return sorted(self.nodes)

    def handle(self, header: bytes, *records: Any) -> tuple[bytes, list[Any]]:
        """Decode and validate one instruction, let its site answer, encode the reply."""
        return _encoded(self._answer(header, list(records), set()))

    def handle_batch(self, headers: Sequence[bytes], slots: Sequence[Sequence[int]], *records: Any) -> Iterator[_Item]:
        """Answer a batch of instructions in order, yielding each encoded reply as soon as it exists.

        ``slots[i]`` lists which of ``records`` instruction ``i`` carries, so a model
        shared by the batch arrives (and its digest is checked) once.
        """
        verified: set[tuple[int, bytes]] = set()
        for i, (header, slot) in enumerate(zip(headers, slots, strict=True)):
            yield [i], [_encoded(self._answer(header, [records[k] for k in slot], verified))], None

    def handle_folded(
        self,
        headers: Sequence[bytes],
        slots: Sequence[Sequence[int]],
        spec: Sequence[tuple[str, Sequence[int], str]],
        *records: Any,
    ) -> Iterator[_Item]:
        """Answer a batch of FIT instructions, folding the valid updates here (a pre-folded batch).

        Each reply that passes :func:`fedcare.runtime.replies.fit_result` against
        ``spec`` and carries only its model is added, in batch (site) order, to one
        :class:`WeightedMeanFold`; the last item holds its partial sum and, per folded
        site, its reply without arrays (its metrics). Any other reply (an error, an
        invalid or larger update) streams back whole as it comes.
        """
        state_spec = {name: ArraySpec(tuple(shape), dtype) for name, shape, dtype in spec}
        verified: set[tuple[int, bytes]] = set()
        fold: WeightedMeanFold | None = None
        folded: list[int] = []
        receipts: list[tuple[bytes, list[Any]]] = []
        first: Message | None = None
        update_bytes = 0
        for i, (header, slot) in enumerate(zip(headers, slots, strict=True)):
            reply = self._answer(header, [records[k] for k in slot], verified)
            fit = None
            if isinstance(reply, Message) and not reply.has_error and set(reply.payload.arrays) == {"model"}:
                try:
                    fit = fit_result(reply, state_spec)
                except (SerdeError, ValueError):
                    fit = None  # the Coordinator rejects it with the same message
            if fit is None or not isinstance(reply, Message):
                yield [i], [_encoded(reply)], None
                continue
            if fold is None:
                fold, first = WeightedMeanFold(fit.state), reply
            fold.add(reply.site, fit)
            update_bytes += payload_bytes(reply.payload.arrays)
            metrics = {"num_examples": float(fit.num_examples), **fit.metrics}
            receipt = Message(
                kind=reply.kind,
                run_id=reply.run_id,
                round_no=reply.round_no,
                site=reply.site,
                payload=Payload(config=reply.payload.config, metrics=metrics),
                message_id=reply.message_id,
                reply_to=reply.reply_to,
            )
            folded.append(i)
            receipts.append(message_arrays(receipt))
        if fold is None or first is None:
            return
        total, count = fold.total_weight, fold.count
        sums, metric_sums = fold.partial()
        summary = Message(
            kind=first.kind,
            run_id=first.run_id,
            round_no=first.round_no,
            site=first.site,
            payload=Payload(
                arrays={SUM_RECORD: sums},
                metrics={
                    "total_weight": total,
                    "count": float(count),
                    "update_bytes": float(update_bytes),
                    **{f"m.{k}": v for k, v in metric_sums.items()},
                },
            ),
        )
        yield folded, receipts, message_arrays(summary)

    def _answer(self, header: bytes, records: list[Any], verified: set[tuple[int, bytes]]) -> Message | str:
        """The site's reply to one instruction, or why the instruction could not be decoded."""
        try:
            message = message_from_parts(
                header,
                records,
                where="instruction at a ray site actor",
                max_message_bytes=self.max_message_bytes,
                verified=verified,
            )
        except FedcareError as exc:  # nothing to reply to: the driver names the site
            return f"{type(exc).__name__}: {exc}"
        node = self.nodes.get(message.site)
        if node is None:
            return message.reply(error=f"site {message.site!r} is not hosted by this actor")
        try:
            reply: Message = node.handle(message)
        except Exception as exc:  # a crashing site is data, as in the in-process channel
            reply = message.reply(error=f"{type(exc).__name__}: {exc}")
        return reply


def _encoded(answer: Message | str) -> tuple[bytes, list[Any]]:
    """A reply as a header and uint8 record arrays (read in place by the driver); an empty header is an error."""
    if isinstance(answer, str):
        return b"", [answer.encode()]
    return message_arrays(answer)


@dataclass
class _Batch:
    """One call to an actor: its instructions in order and which of them were answered."""

    actor: int
    messages: list[Message]
    request: PrefoldRequest | None = None
    answered: set[int] = field(default_factory=set)
    refs: list[Any] = field(default_factory=list)  # keeps the shared records alive until answered


@dataclass
class _Queued:
    """An encoded instruction waiting for its actor."""

    message: Message
    header: bytes
    refs: list[tuple[Any, int]]  # (object ref, bytes) per record, shared records share a ref
    request: PrefoldRequest | None


class RayChannel:
    """Deliver messages to sites hosted by a pool of Ray actors.

    Parameters
    ----------
    nodes : Mapping[SiteId, SiteNode]
        One node (anything with ``handle(message) -> message``) per site, e.g. from
        :func:`fedcare.runtime.simulation.build_nodes`; each is moved to the actor that
        hosts its site.
    address : str or None (default: None)
        Ray cluster to join (``"auto"``, ``"ray://host:10001"``...); ``None`` starts a
        local Ray, which :meth:`close` stops again.
    num_cpus : int or None (default: None)
        CPUs of the local Ray started here (``None``: all of them). Its actors run at
        the driver's own priority (Ray would renice them to 19: on a busy machine the
        simulated sites, which are the simulation's work, then barely run).
    actors : int or None (default: None)
        Size of the actor pool; ``None``: as many sites as the cluster's CPUs can train
        at once (CPUs / ``cpus_per_site``), at least 1 and at most one per site.
    sites_per_actor : int or None (default: None)
        Sites per actor instead of ``actors`` (1 gives every site its own actor).
    cpus_per_site : float or None (default: None)
        CPUs a site uses while it trains (each actor reserves that much: it runs its
        sites one at a time); ``None``: 1, or the cluster's share per actor if smaller.
    memory_per_site : int or None (default: None)
        Bytes of memory a site holds (its data and model); an actor reserves it for each
        site it hosts (Ray's ``memory`` resource).
    max_batch_bytes : int (default: 16 MiB)
        Most bytes of instructions (model records counted per site) in one call to an
        actor; bounds the replies streaming back from one batch.
    batches_per_actor : int (default: 2)
        Calls outstanding per actor (the next batch waits at the actor, not at the driver).
    max_message_bytes : int (default: 2 GiB)
        Largest reply accepted.
    """

    def __init__(
        self,
        nodes: Mapping[SiteId, Any],
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        actors: int | None = None,
        sites_per_actor: int | None = None,
        cpus_per_site: float | None = None,
        memory_per_site: int | None = None,
        max_batch_bytes: int = 16 << 20,
        batches_per_actor: int = 2,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if not nodes:
            raise ConfigError("RayChannel needs at least one site")
        if actors is not None and sites_per_actor is not None:
            raise ConfigError("RayChannel: give actors or sites_per_actor, not both")
        if actors is not None and actors < 1:
            raise ConfigError(f"RayChannel: actors must be at least 1, got {actors}")
        if sites_per_actor is not None and sites_per_actor < 1:
            raise ConfigError(f"RayChannel: sites_per_actor must be at least 1, got {sites_per_actor}")
        if cpus_per_site is not None and not cpus_per_site > 0:
            raise ConfigError(f"RayChannel: cpus_per_site must be positive, got {cpus_per_site}")
        if memory_per_site is not None and memory_per_site < 1:
            raise ConfigError(f"RayChannel: memory_per_site must be a positive number of bytes, got {memory_per_site}")
        if max_batch_bytes < 1 or batches_per_actor < 1:
            raise ConfigError("RayChannel: max_batch_bytes and batches_per_actor must be at least 1")
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            try:
                local = {"num_cpus": num_cpus, "_system_config": {"worker_niceness": 0}} if address is None else {}
                ray.init(
                    address=address, include_dashboard=False, log_to_driver=False, configure_logging=False, **local
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise FedcareError(f"cannot start or join Ray at {address or 'a local instance'}: {exc}") from None
        order = sorted(nodes)
        total = float(ray.cluster_resources().get("CPU", 1.0))
        if sites_per_actor is None:
            pool = actors or max(1, int(total // (cpus_per_site or 1.0)))
            sites_per_actor = math.ceil(len(order) / min(pool, len(order)))
        groups = [order[i : i + sites_per_actor] for i in range(0, len(order), sites_per_actor)]
        cpus = cpus_per_site if cpus_per_site is not None else min(1.0, total / len(groups))
        host = ray.remote(SiteHost)
        self._actor_of: dict[SiteId, int] = {}
        self._actors: list[Any] = []
        for group in groups:
            options: dict[str, Any] = {"num_cpus": cpus, "max_restarts": 0}
            if memory_per_site is not None:
                options["memory"] = memory_per_site * len(group)
            self._actors.append(host.options(**options).remote({s: nodes[s] for s in group}, max_message_bytes))
            for site in group:
                self._actor_of[site] = len(self._actors) - 1
        self._max_batch_bytes = max_batch_bytes
        self._batches_per_actor = batches_per_actor
        self._max_message_bytes = max_message_bytes
        self._hosted = [len(group) for group in groups]
        self._queues: list[collections.deque[_Queued]] = [collections.deque() for _ in self._actors]
        self._busy = [0] * len(self._actors)
        self._inflight: dict[Any, _Batch] = {}  # streaming generator -> its batch
        self._errors: collections.deque[Message] = collections.deque()
        #: Site replies that arrived folded into an actor's partial sum (all rounds).
        self.folded_sites = 0

    @property
    def actors(self) -> int:
        """Size of the actor pool."""
        return len(self._actors)

    def sites(self) -> Sequence[SiteId]:
        """All hosted sites, sorted."""
        return sorted(self._actor_of)

    def kill_site_actor(self, site: SiteId) -> None:
        """Kill the actor hosting ``site`` (failure drills and tests)."""
        ray.kill(self._actors[self._actor_of[site]], no_restart=True)

    def send(self, messages: Sequence[Message]) -> None:
        """Encode each instruction (a shared record once, put once) and queue it for its site's actor."""
        self._queue(messages, None)

    def send_prefolded(self, messages: Sequence[Message], request: PrefoldRequest) -> None:
        """As :meth:`send`, but each actor folds its sites' valid FIT replies (see :class:`PrefoldRequest`).

        A batch then returns one partial sum (float64, folded in site order) and each
        folded site's metrics instead of one model per site; errors and updates that
        cannot be folded come back whole, and a batch lost with its actor is a failure
        of each of its sites, as in :meth:`send`. An actor hosting one site folds
        nothing worth the trouble: its sites' replies come back whole.
        """
        self._queue(messages, request)

    def _queue(self, messages: Sequence[Message], request: PrefoldRequest | None) -> None:
        cache: dict[int, Record] = {}
        blobs: dict[int, tuple[Any, int]] = {}
        for message in messages:
            actor = self._actor_of.get(message.site)
            if actor is None:
                self._errors.append(message.reply(error=f"unknown site {message.site!r}"))
                continue
            header, records = message_arrays(message, cache=cache)
            refs = []
            for name, blob in zip(message.payload.arrays, records, strict=True):
                key = id(message.payload.arrays[name])
                if key not in blobs:
                    blobs[key] = (ray.put(blob), len(blob))
                refs.append(blobs[key])
            folds = request is not None and self._hosted[actor] > 1
            self._queues[actor].append(_Queued(message, header, refs, request if folds else None))
        self._fill()

    def _fill(self) -> None:
        for actor, queue in enumerate(self._queues):
            while queue and self._busy[actor] < self._batches_per_actor:
                request = queue[0].request
                batch = _Batch(actor, [], request)
                headers: list[bytes] = []
                slots: list[list[int]] = []
                index: dict[Any, int] = {}
                size = 0
                while queue and len(batch.messages) < MAX_BATCH_MESSAGES and queue[0].request is request:
                    item = queue[0]
                    # replies stream back one model per site: count each site's records; a
                    # pre-folded batch returns one sum: count a shared record once
                    nbytes = len(item.header) + sum(n for ref, n in item.refs if request is None or ref not in index)
                    if batch.messages and size + nbytes > self._max_batch_bytes:
                        break
                    queue.popleft()
                    size += nbytes
                    batch.messages.append(item.message)
                    headers.append(item.header)
                    slots.append([index.setdefault(ref, len(index)) for ref, _ in item.refs])
                batch.refs = list(index)
                handle = self._actors[actor]
                if request is None:
                    call = handle.handle_batch.options(num_returns="streaming").remote(headers, slots, *batch.refs)
                else:
                    spec = [(name, list(a.shape), a.dtype) for name, a in request.spec.items()]
                    call = handle.handle_folded.options(num_returns="streaming").remote(
                        headers, slots, spec, *batch.refs
                    )
                self._inflight[call] = batch
                self._busy[actor] += 1

    def receive(self, *, timeout_s: float) -> Iterator[Message]:
        """Yield replies as they arrive, until the deadline or nothing is outstanding."""
        deadline = time.monotonic() + timeout_s
        while True:
            while self._errors:
                yield self._errors.popleft()
            self._fill()
            remaining = deadline - time.monotonic()
            if not self._inflight or remaining <= 0:
                return
            ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=remaining)
            if not ready:
                return
            self._collect(ready[0])

    def _collect(self, generator: Any) -> None:
        """Turn the next item of a ready batch into replies (or its failure into error replies)."""
        batch = self._inflight[generator]
        try:
            ref = next(generator)
            indices, replies, summary = ray.get(ref)
        except StopIteration:
            self._close_batch(generator, "site actor ended the batch without answering")
            return
        except RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            log.warning("ray actor %d failed: %s", batch.actor, first)
            self._close_batch(generator, f"site actor failed ({type(exc).__name__}): {first[:300]}")
            return
        messages = [batch.messages[i] for i in indices]
        decoded = [self._reply(m, parts) for m, parts in zip(messages, replies, strict=True)]
        batch.answered.update(indices)
        if summary is not None:  # the folded sites' replies count only with their sum
            bad = next((r.error for r in decoded if r.has_error), None)
            error = f"reply from a pre-folded site: {bad}" if bad else self._take_sum(batch, messages, summary)
            if error:  # every site folded in an unusable sum failed
                decoded = [m.reply(error=error) for m in messages]
        self._errors.extend(decoded)
        if len(batch.answered) == len(batch.messages):
            self._close_batch(generator, "")

    def _take_sum(self, batch: _Batch, messages: list[Message], summary: tuple[bytes, list[Any]]) -> str:
        """Decode a batch's partial sum and hand it to the Coordinator; return why not, if not."""
        header, records = summary
        where = f"partial sum from the ray actor of {messages[0].site if messages else '?'}"
        try:
            decoded = message_from_parts(header, records, where=where, max_message_bytes=self._max_message_bytes)
            sums = decoded.payload.arrays.get(SUM_RECORD, {})
            assert batch.request is not None
            check_state(sums, {k: ArraySpec(a.shape, "float64") for k, a in batch.request.spec.items()}, where=where)
            metrics = decoded.payload.metrics
            if int(metrics.get("count", 0)) != len(messages):
                raise SerdeError(f"{where}: counts {metrics.get('count')} sites, names {len(messages)}")
            partial = PartialSum(
                sites=tuple(m.site for m in messages),
                sums=sums,
                total_weight=float(metrics["total_weight"]),
                metric_sums={k[2:]: float(v) for k, v in metrics.items() if k.startswith("m.")},
                update_bytes=int(metrics.get("update_bytes", 0)),
            )
            batch.request.on_sum(partial)
            self.folded_sites += len(messages)
        except (FedcareError, KeyError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        return ""

    def _close_batch(self, generator: Any, error: str) -> None:
        batch = self._inflight.pop(generator)
        self._busy[batch.actor] -= 1
        for i, message in enumerate(batch.messages):
            if i not in batch.answered:
                self._errors.append(message.reply(error=error or "site actor ended the batch without answering"))

    def _reply(self, message: Message, parts: tuple[bytes, list[Any]]) -> Message:
        header, records = parts
        if not header:  # the actor could not decode the instruction
            return message.reply(error=bytes(records[0]).decode(errors="replace")[:500])
        try:
            reply = message_from_parts(
                header, records, where=f"reply from {message.site}", max_message_bytes=self._max_message_bytes
            )
        except FedcareError as exc:
            return message.reply(error=f"{type(exc).__name__}: {exc}")
        if reply.site != message.site or (message.message_id and reply.reply_to != message.message_id):
            return message.reply(error=f"ray actor answered for {reply.site!r}, not for this instruction")
        return reply

    def close(self) -> None:
        """Kill the actors; stop Ray if this channel started it."""
        for queue in self._queues:
            queue.clear()
        self._inflight.clear()
        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except (RayError, ValueError):  # already dead
                pass
        self._actors.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
