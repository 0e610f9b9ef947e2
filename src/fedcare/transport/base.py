"""The Channel protocol: how the Coordinator reaches sites.

The Coordinator only sends messages and reads replies as they arrive, with a deadline;
it never knows whether sites are threads, Ray actors or hospitals on the other side of
a gRPC stream. Every implementation passes the same contract tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from fedcare.types import Message, SiteId

__all__ = ["Channel", "freeze"]


class Channel(Protocol):
    """A way to send instructions to sites and receive their replies."""

    def sites(self) -> Sequence[SiteId]:
        """Sites currently reachable, in a stable (sorted) order."""
        ...

    def send(self, messages: Sequence[Message]) -> None:
        """Deliver instructions; never blocks on a site's work."""
        ...

    def receive(self, *, timeout_s: float) -> Iterator[Message]:
        """Yield replies as they arrive, until ``timeout_s`` seconds have passed.

        The caller stops iterating once it has what it waits for.
        """
        ...

    def close(self) -> None:
        """Release threads, sockets and workers."""
        ...


def freeze(message: Message) -> None:
    """Make the arrays of ``message`` read-only once sent.

    Channels deliver (or stream) the sender's own arrays instead of copies, so a
    sender changing them in place afterwards would change what sites receive; frozen,
    such a write fails loudly instead.
    """
    for state in message.payload.arrays.values():
        for arr in state.values():
            arr.flags.writeable = False
