"""InProcessChannel: sites as handlers in this process, run on a thread pool.

This is the simulation transport and the shipped fake for tests. Instructions are
passed by reference (no serialisation): the arrays of a broadcast model are marked
read-only, so a site that tried to change the global model in place fails loudly
instead of corrupting its neighbours. numpy and torch release the GIL, so sites train
in parallel on the pool.

Backpressure: at most ``max_inflight`` replies exist at once (being computed or
waiting to be read). A site waits for a slot before it runs and the slot is freed when
the Coordinator reads its reply, so when sites produce updates faster than the
Coordinator folds them, the queue cannot grow: memory stays O(max_inflight * model),
not O(N * model).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from fedcare.transport.base import freeze
from fedcare.types import Message, SiteId

__all__ = ["InProcessChannel", "SiteHandler"]

#: A site's entry point: one instruction in, one reply out.
SiteHandler = Callable[[Message], Message]


class InProcessChannel:
    """Deliver messages to in-process site handlers on a thread pool.

    Parameters
    ----------
    handlers : Mapping[SiteId, SiteHandler]
        One handler per site (usually :meth:`SiteNode.handle`).
    max_workers : int or None (default: None)
        Pool size; ``None`` uses the number of CPUs.
    max_inflight : int or None (default: None)
        Most replies computed or queued at once; ``None`` means twice the pool size.
    """

    def __init__(
        self,
        handlers: Mapping[SiteId, SiteHandler],
        *,
        max_workers: int | None = None,
        max_inflight: int | None = None,
    ) -> None:
        if not handlers:
            raise ValueError("InProcessChannel needs at least one site handler")
        self._handlers = dict(handlers)
        workers = max_workers or os.cpu_count() or 1
        inflight = max_inflight or 2 * workers
        if inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {inflight}")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedcare-site")
        self._replies: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._slots = threading.Semaphore(inflight)
        self._holding: set[int] = set()  # ids of queued replies that hold a slot
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def sites(self) -> Sequence[SiteId]:
        """All registered sites, sorted."""
        return sorted(self._handlers)

    def send(self, messages: Sequence[Message]) -> None:
        """Queue each instruction for its site's handler."""
        for message in messages:
            if message.site not in self._handlers:
                self._replies.put(message.reply(error=f"unknown site {message.site!r}"))
                continue
            freeze(message)
            self._pool.submit(self._run, message)

    def _run(self, message: Message) -> None:
        while not self._slots.acquire(timeout=0.1):
            if self._closed.is_set():
                return
        if self._closed.is_set():
            self._slots.release()
            return
        handler = self._handlers[message.site]
        try:
            reply = handler(message)
        except Exception as exc:  # a crashing site is data, not a crash of the run
            reply = message.reply(error=f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._holding.add(id(reply))
        self._replies.put(reply)

    def _release(self, reply: Message) -> None:
        with self._lock:
            if id(reply) not in self._holding:
                return
            self._holding.discard(id(reply))
        self._slots.release()

    def receive(self, *, timeout_s: float) -> Iterator[Message]:
        """Yield replies in arrival order until the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                reply = self._replies.get(timeout=remaining)
            except queue.Empty:
                return
            self._release(reply)
            yield reply

    def close(self) -> None:
        """Stop the pool without waiting for stragglers."""
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
