"""What every transport shares: the Channel protocol (declared in the core) and ``freeze``.

The Coordinator only sends messages and reads replies as they arrive, with a deadline;
it never knows whether sites are threads, Ray actors or hospitals on the other side of
a gRPC stream. :class:`~fedcare.protocols.Channel` is defined in :mod:`fedcare.protocols`
so the runtime can ask for one without importing a transport.
"""

from __future__ import annotations

from fedcare.protocols import Channel
from fedcare.types import Message

__all__ = ["Channel", "freeze"]


def freeze(message: Message) -> None:
    """Make the arrays of ``message`` read-only once sent.

    Channels deliver (or stream) the sender's own arrays instead of copies, so a
    sender changing them in place afterwards would change what sites receive; frozen,
    such a write fails loudly instead.
    """
    for state in message.payload.arrays.values():
        for arr in state.values():
            arr.flags.writeable = False
