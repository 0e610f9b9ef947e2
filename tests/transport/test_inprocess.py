import threading
import time

import numpy as np

from fedcare.transport import InProcessChannel
from fedcare.types import Message, MessageKind, Payload, RunId, SiteId


def _message(site: str) -> Message:
    return Message(kind=MessageKind.FIT, run_id=RunId("r"), round_no=1, site=SiteId(site))


def test_replies_in_flight_are_bounded_while_the_reader_is_slow():
    # Prepare: 12 fast sites, a reader that takes its time: without backpressure all
    # 12 replies (12 model copies) would pile up in the queue.
    lock = threading.Lock()
    state = {"made": 0, "read": 0, "peak": 0}

    def handler(msg: Message) -> Message:
        with lock:
            state["made"] += 1
            state["peak"] = max(state["peak"], state["made"] - state["read"])
        return msg.reply(Payload(arrays={"model": {"w": np.ones(1000, np.float32)}}))

    sites = [f"s{i:02d}" for i in range(12)]
    channel = InProcessChannel(dict.fromkeys(map(SiteId, sites), handler), max_workers=2, max_inflight=3)
    # Execute
    channel.send([_message(s) for s in sites])
    seen = []
    for reply in channel.receive(timeout_s=10):
        time.sleep(0.02)
        with lock:
            state["read"] += 1
        seen.append(reply.site)
        if len(seen) == len(sites):
            break
    channel.close()
    # Assert: every site answered; never more than 3 replies waited, plus the one being read
    assert sorted(seen) == sites
    assert state["peak"] <= 3 + 1


def test_close_releases_sites_waiting_for_a_slot():
    started = threading.Event()

    def handler(msg: Message) -> Message:
        started.set()
        return msg.reply()

    channel = InProcessChannel({SiteId("a"): handler, SiteId("b"): handler}, max_workers=2, max_inflight=1)
    channel.send([_message("a"), _message("b")])  # one reply fills the only slot; nobody reads it
    assert started.wait(5)
    channel.close()
    time.sleep(0.3)
    assert not [t for t in threading.enumerate() if t.name.startswith("fedcare-site") and t.is_alive()]
