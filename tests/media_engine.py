"""Run one call's media engine (a MediaSession on a MediaClock) alone in this process.

    python -m tests.media_engine PORT

Sends the call's RTP (comfort silence) to 127.0.0.1:PORT and consumes whatever comes back,
exactly as the daemon does for a call, but without the rest of the daemon (voice bot, API,
hub) sharing the event loop. Prints its own RTP port once running; stops when stdin closes.
"""

from __future__ import annotations

import logging
import sys

import structlog
import trio

from tests.harness import free_even_port_range
from voicedashd.media.ports import RtpPortPool
from voicedashd.media.sender import MediaClock
from voicedashd.media.session import SessionSettings, discard_inbound, open_media_session
from voicedashd.metrics import Metrics
from voicedashd.sip.sdp import Answer


async def main(peer_port: int) -> None:
    """Run the session until stdin reaches end of file."""
    pool = RtpPortPool("127.0.0.1", *free_even_port_range())
    media = pool.allocate()
    answer = Answer(body=b"", codec="PCMU", payload_type=0, clock_rate=8000,
                    dtmf_payload_type=101, ptime=20, direction="sendrecv",
                    remote_address="127.0.0.1", remote_port=peer_port, on_hold=False)
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    async with trio.open_nursery() as nursery, open_media_session(
            media, lambda: answer, SessionSettings(timeout=3600), call_id="engine",
            clock=MediaClock(), clock_nursery=nursery, on_dtmf=lambda digit: None,
            may_send_to=lambda host: True, metrics=Metrics()) as session:
        nursery.start_soon(discard_inbound, session)
        print(media.port, flush=True)
        while await stdin.receive_some():
            pass
        nursery.cancel_scope.cancel()
    pool.release(media)


if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    trio.run(main, int(sys.argv[1]))
