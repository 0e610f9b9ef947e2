"""RayChannel: simulated sites as Ray actors, reached by the same Coordinator.

Each actor hosts one site (or, for thousands of sites on a few cores, a group of
``sites_per_actor`` sites) and holds only those sites' nodes and data; each actor gets
its own CPU and memory reservation. Instructions and replies cross as fedcare's wire
encoding (a protobuf header plus one safetensors buffer per record, BLAKE3-checked and
validated on arrival, :func:`fedcare.transport.wire.message_from_parts`), exactly what a
gRPC peer would send; a model broadcast to N sites is encoded once and put once into
Ray's object store. (Ray itself moves each actor's nodes to it once, at start, with its
own serialisation: they are the driver's own objects.)

Replies are yielded as they complete, and at most ``max_inflight`` instructions are
outstanding at once (the rest wait at the driver as small headers), so the driver holds
O(max_inflight) replies in Ray's object store and decodes one at a time: its memory is
O(model), never O(N * model). An actor that dies, or a node that is lost, turns its
outstanding instructions into error replies: a recorded site failure of that round.

Ray is an optional dependency (``pip install 'fedcare[ray]'``); this module imports it.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ray
from ray.exceptions import RayError

from fedcare.errors import ConfigError, FedcareError
from fedcare.transport.wire import DEFAULT_MAX_MESSAGE_BYTES, Record, message_from_parts, message_parts
from fedcare.types import Message, SiteId

__all__ = ["RayChannel"]

log = logging.getLogger(__name__)


class SiteHost:
    """The body of one Ray actor: a few sites' nodes, each holding only its own data."""

    def __init__(self, nodes: Mapping[str, Any], max_message_bytes: int) -> None:
        self.nodes = dict(nodes)
        self.max_message_bytes = max_message_bytes

    def sites(self) -> list[str]:
        """The sites this actor hosts."""
        return sorted(self.nodes)

    def handle(self, header: bytes, *records: Any) -> tuple[bytes, list[bytes]]:
        """Decode and validate one instruction, let its site answer, encode the reply."""
        message = message_from_parts(
            header, records, where="instruction at a ray site actor", max_message_bytes=self.max_message_bytes
        )
        node = self.nodes.get(message.site)
        if node is None:
            reply = message.reply(error=f"site {message.site!r} is not hosted by this actor")
        else:
            try:
                reply = node.handle(message)
            except Exception as exc:  # a crashing site is data, as in the in-process channel
                reply = message.reply(error=f"{type(exc).__name__}: {exc}")
        return message_parts(reply)


class RayChannel:
    """Deliver messages to sites hosted by Ray actors.

    Parameters
    ----------
    nodes : Mapping[SiteId, SiteNode]
        One node per site (e.g. from :func:`fedcare.runtime.simulation.build_nodes`);
        each is moved to the actor that hosts its site.
    address : str or None (default: None)
        Ray cluster to join (``"auto"``, ``"ray://host:10001"``...); ``None`` starts a
        local Ray, which :meth:`close` stops again.
    num_cpus : int or None (default: None)
        CPUs of the local Ray started here (``None``: all of them).
    sites_per_actor : int (default: 1)
        Sites hosted by one actor; more than one lets thousands of sites share a few cores.
    cpus_per_actor : float or None (default: None)
        CPUs reserved by each actor; ``None`` shares the cluster's CPUs evenly (at most 1).
    memory_per_actor : int or None (default: None)
        Bytes of memory reserved by each actor (Ray's ``memory`` resource).
    max_inflight : int or None (default: None)
        Most instructions outstanding at once; ``None`` is twice the number of actors.
    max_message_bytes : int (default: 2 GiB)
        Largest reply accepted.
    """

    def __init__(
        self,
        nodes: Mapping[SiteId, Any],
        *,
        address: str | None = None,
        num_cpus: int | None = None,
        sites_per_actor: int = 1,
        cpus_per_actor: float | None = None,
        memory_per_actor: int | None = None,
        max_inflight: int | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if not nodes:
            raise ConfigError("RayChannel needs at least one site")
        if sites_per_actor < 1:
            raise ConfigError(f"sites_per_actor must be at least 1, got {sites_per_actor}")
        if cpus_per_actor is not None and cpus_per_actor <= 0:
            raise ConfigError(f"cpus_per_actor must be positive, got {cpus_per_actor}")
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            try:
                ray.init(
                    address=address,
                    num_cpus=num_cpus if address is None else None,
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise FedcareError(f"cannot start or join Ray at {address or 'a local instance'}: {exc}") from None
        order = sorted(nodes)
        groups = [order[i : i + sites_per_actor] for i in range(0, len(order), sites_per_actor)]
        total = float(ray.cluster_resources().get("CPU", 1.0))
        cpus = cpus_per_actor if cpus_per_actor is not None else min(1.0, total / len(groups))
        options: dict[str, Any] = {"num_cpus": cpus, "max_restarts": 0}
        if memory_per_actor is not None:
            options["memory"] = memory_per_actor
        host = ray.remote(SiteHost)
        self._actor_of: dict[SiteId, Any] = {}
        self._actors: list[Any] = []
        for group in groups:
            actor = host.options(**options).remote({s: nodes[s] for s in group}, max_message_bytes)
            self._actors.append(actor)
            for site in group:
                self._actor_of[site] = actor
        self._max_inflight = max_inflight or 2 * len(groups)
        self._max_message_bytes = max_message_bytes
        self._queue: collections.deque[tuple[Message, bytes, list[Any]]] = collections.deque()
        self._inflight: dict[Any, Message] = {}
        self._errors: collections.deque[Message] = collections.deque()

    def sites(self) -> Sequence[SiteId]:
        """All hosted sites, sorted."""
        return sorted(self._actor_of)

    def kill_site_actor(self, site: SiteId) -> None:
        """Kill the actor hosting ``site`` (failure drills and tests)."""
        ray.kill(self._actor_of[site], no_restart=True)

    def send(self, messages: Sequence[Message]) -> None:
        """Encode each instruction (a shared record once) and queue it for its site's actor."""
        cache: dict[int, Record] = {}
        blobs: dict[int, Any] = {}
        for message in messages:
            if message.site not in self._actor_of:
                self._errors.append(message.reply(error=f"unknown site {message.site!r}"))
                continue
            header, records = message_parts(message, cache=cache)
            refs = []
            for name, blob in zip(message.payload.arrays, records, strict=True):
                key = id(message.payload.arrays[name])
                if key not in blobs:
                    blobs[key] = ray.put(blob)
                refs.append(blobs[key])
            self._queue.append((message, header, refs))
        self._fill()

    def _fill(self) -> None:
        while self._queue and len(self._inflight) < self._max_inflight:
            message, header, refs = self._queue.popleft()
            ref = self._actor_of[message.site].handle.remote(header, *refs)
            self._inflight[ref] = message

    def receive(self, *, timeout_s: float) -> Iterator[Message]:
        """Yield replies as they complete, until the deadline or nothing is outstanding."""
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
            message = self._inflight.pop(ready[0])
            yield self._reply(message, ready[0])

    def _reply(self, message: Message, ref: Any) -> Message:
        try:
            header, records = ray.get(ref)
            return message_from_parts(
                header, records, where=f"reply from {message.site}", max_message_bytes=self._max_message_bytes
            )
        except RayError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            log.warning("site %s: ray actor failed: %s", message.site, first)
            return message.reply(error=f"site actor failed ({type(exc).__name__}): {first[:300]}")
        except FedcareError as exc:
            return message.reply(error=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        """Kill the actors; stop Ray if this channel started it."""
        self._queue.clear()
        self._inflight.clear()
        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except (RayError, ValueError):  # already dead
                pass
        self._actors.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
