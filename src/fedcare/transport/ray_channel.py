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

from fedcare.errors import ConfigError, FedcareError
from fedcare.transport.wire import DEFAULT_MAX_MESSAGE_BYTES, Record, message_arrays, message_from_parts
from fedcare.types import Message, SiteId

__all__ = ["RayChannel"]

log = logging.getLogger(__name__)

#: Instructions sent to one actor in one call, at most (besides the byte budget).
MAX_BATCH_MESSAGES = 512


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
        return self._answer(header, list(records), set())

    def handle_batch(self, headers: Sequence[bytes], slots: Sequence[Sequence[int]], *records: Any) -> Iterator[Any]:
        """Answer a batch of instructions in order, yielding each encoded reply as soon as it exists.

        ``slots[i]`` lists which of ``records`` instruction ``i`` carries, so a model
        shared by the batch arrives (and its digest is checked) once.
        """
        verified: set[tuple[int, bytes]] = set()
        for header, slot in zip(headers, slots, strict=True):
            yield self._answer(header, [records[k] for k in slot], verified)

    def _answer(self, header: bytes, records: list[Any], verified: set[tuple[int, bytes]]) -> tuple[bytes, list[Any]]:
        try:
            message = message_from_parts(
                header,
                records,
                where="instruction at a ray site actor",
                max_message_bytes=self.max_message_bytes,
                verified=verified,
            )
        except FedcareError as exc:  # nothing to reply to: the driver names the site
            return b"", [f"{type(exc).__name__}: {exc}".encode()]
        node = self.nodes.get(message.site)
        if node is None:
            reply = message.reply(error=f"site {message.site!r} is not hosted by this actor")
        else:
            try:
                reply = node.handle(message)
            except Exception as exc:  # a crashing site is data, as in the in-process channel
                reply = message.reply(error=f"{type(exc).__name__}: {exc}")
        return message_arrays(reply)  # uint8 arrays: the driver reads them in place from the object store


@dataclass
class _Batch:
    """One call to an actor: its instructions in order and how many were answered."""

    actor: int
    messages: list[Message]
    answered: int = 0
    refs: list[Any] = field(default_factory=list)  # keeps the shared records alive until answered


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
        self._queues: list[collections.deque[tuple[Message, bytes, list[Any], int]]] = [
            collections.deque() for _ in self._actors
        ]
        self._busy = [0] * len(self._actors)
        self._inflight: dict[Any, _Batch] = {}  # streaming generator -> its batch
        self._errors: collections.deque[Message] = collections.deque()

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
        cache: dict[int, Record] = {}
        blobs: dict[int, Any] = {}
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
                    blobs[key] = ray.put(blob)
                refs.append(blobs[key])
            size = len(header) + sum(len(b) for b in records)
            self._queues[actor].append((message, header, refs, size))
        self._fill()

    def _fill(self) -> None:
        for actor, queue in enumerate(self._queues):
            while queue and self._busy[actor] < self._batches_per_actor:
                batch = _Batch(actor, [])
                headers: list[bytes] = []
                slots: list[list[int]] = []
                index: dict[Any, int] = {}
                size = 0
                while queue and len(batch.messages) < MAX_BATCH_MESSAGES:
                    if batch.messages and size + queue[0][3] > self._max_batch_bytes:
                        break
                    message, header, refs, nbytes = queue.popleft()
                    size += nbytes
                    batch.messages.append(message)
                    headers.append(header)
                    slots.append([index.setdefault(ref, len(index)) for ref in refs])
                batch.refs = list(index)
                generator = (
                    self._actors[actor]
                    .handle_batch.options(num_returns="streaming")
                    .remote(headers, slots, *batch.refs)
                )
                self._inflight[generator] = batch
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
        """Turn the next item of a ready batch into a reply (or its failure into error replies)."""
        batch = self._inflight[generator]
        try:
            ref = next(generator)
            reply = self._reply(batch.messages[batch.answered], ray.get(ref))
        except StopIteration:
            self._close_batch(generator, "site actor ended the batch without answering")
            return
        except RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            log.warning("ray actor %d failed: %s", batch.actor, first)
            self._close_batch(generator, f"site actor failed ({type(exc).__name__}): {first[:300]}")
            return
        batch.answered += 1
        self._errors.append(reply)
        if batch.answered == len(batch.messages):
            self._close_batch(generator, "")

    def _close_batch(self, generator: Any, error: str) -> None:
        batch = self._inflight.pop(generator)
        self._busy[batch.actor] -= 1
        for message in batch.messages[batch.answered :]:
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
