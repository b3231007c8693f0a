"""An in-process media session on a real RTP port pair, with a UDP socket as its SDP peer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from tests.harness import free_even_port_range
from voicedashd.media.dtmf import DtmfDigit
from voicedashd.media.ports import RtpPortPool, RtpSockets
from voicedashd.media.sender import MediaClock
from voicedashd.media.session import MediaSession, SessionSettings
from voicedashd.metrics import Metrics
from voicedashd.sip.sdp import Answer


@asynccontextmanager
async def ports_and_peer() -> AsyncIterator[tuple[RtpSockets, trio.socket.SocketType, Answer]]:
    """A real RTP port pair, a UDP socket on 127.0.0.1 as its peer, and the SDP answer to it."""
    peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await peer.bind(("127.0.0.1", 0))
    pool = RtpPortPool("127.0.0.1", *free_even_port_range())
    media = pool.allocate()
    answer = Answer(body=b"", codec="PCMU", payload_type=0, clock_rate=8000,
                    dtmf_payload_type=101, ptime=20, direction="sendrecv",
                    remote_address="127.0.0.1", remote_port=peer.getsockname()[1],
                    on_hold=False)
    try:
        yield media, peer, answer
    finally:
        pool.release(media)
        peer.close()


@asynccontextmanager
async def session_with_peer(settings: SessionSettings, digits: list[DtmfDigit] | None = None,
                   answers: list[Answer] | None = None, clock: MediaClock | None = None,
                   allowed: tuple[str, ...] = ("127.0.0.1",), metrics: Metrics | None = None,
                   ) -> AsyncIterator[tuple[MediaSession, trio.socket.SocketType, RtpSockets]]:
    """A session on a real RTP port whose SDP peer is a UDP socket on 127.0.0.1.

    The call's current SDP answer is the last of `answers` (append one for a re-INVITE);
    RTP may go to the SDP addresses in `allowed` before the peer's packets arrive.
    """
    sink = digits if digits is not None else []
    history = answers if answers is not None else []
    async with ports_and_peer() as (media, peer, answer):
        history.append(answer)
        async with trio.open_nursery() as clock_nursery, MediaSession(
                media, lambda: history[-1], settings, call_id="test",
                clock=clock or MediaClock(), clock_nursery=clock_nursery,
                on_dtmf=sink.append, may_send_to=allowed.__contains__,
                metrics=metrics or Metrics()) as session:
            yield session, peer, media
