"""A media session's own socket work: RTCP drained, handles made when needed and closed."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from tests.media_peer import session_with_peer
from voicedashd.media.session import (
    RTCP_READ_INTERVAL,
    SessionSettings,
)

SETTINGS = SessionSettings(rate=8000, timeout=60)
# An RTCP receiver report with no report blocks (RFC 3550 §6.4.2).
RTCP_RR = bytes([0x80, 201, 0, 1, 0, 0, 0x12, 0x34])


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _waiting(sock: trio.socket.SocketType) -> bool:
    """Whether a datagram waits on the socket (peeked, not taken)."""
    with socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno())) as handle:
        try:
            handle.recv(2048, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
    return True


async def test_rtcp_is_read_and_dropped(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(10):
        async with session_with_peer(SETTINGS) as (session, peer, media):
            for _ in range(5):
                await peer.sendto(RTCP_RR, ("127.0.0.1", media.port + 1))
            assert _waiting(media.rtcp)
            await trio.sleep(2 * RTCP_READ_INTERVAL)
            assert not _waiting(media.rtcp)
            await peer.sendto(RTCP_RR, ("127.0.0.1", media.port + 1))  # and later reports too
            await trio.sleep(2 * RTCP_READ_INTERVAL)
            assert not _waiting(media.rtcp)
            assert session.stats.inbound.packets == 0  # RTCP is not taken for audio
    assert session.error is None and not session.timed_out


async def test_a_session_closes_the_handles_it_made(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(10):
        # whatever the first session of a process opens for good
        async with session_with_peer(SETTINGS):
            pass
        before = _open_fds()
        async with session_with_peer(SETTINGS) as (session, _, _):
            await trio.sleep(2 * RTCP_READ_INTERVAL)  # ticks sent, RTP and RTCP read
            assert session.stats.sender.silence > 0
        assert _open_fds() == before


async def test_a_session_hung_up_at_once_sends_nothing_and_ends_cleanly() -> None:
    with trio.fail_after(10):
        before = _open_fds()
        async with session_with_peer(SETTINGS) as (session, _, _):
            pass
        assert _open_fds() == before  # no handle of the session's is left over
        assert session.stats.sender.audio + session.stats.sender.silence == 0
        assert session.error is None and not session.timed_out
        with pytest.raises(trio.EndOfChannel):
            session.inbound.receive_nowait()
