"""A media session's block (on the clock while it runs, timeout, failure) and socket work."""

from __future__ import annotations

import dataclasses
import os
import socket
import struct
import traceback
import wave
from pathlib import Path

import numpy as np
import pytest
import trio
from structlog.testing import capture_logs

from tests.media_peer import ports_and_peer, session_with_peer
from voicedashd.media.g711 import PCMU
from voicedashd.media.rtp import RtpPacket, parse_rtp
from voicedashd.media.sender import MediaClock
from voicedashd.media.session import (
    RTCP_READ_INTERVAL,
    MediaFailed,
    MediaSession,
    SessionSettings,
)
from voicedashd.media.strict import PROBATION
from voicedashd.metrics import Metrics

SETTINGS = SessionSettings(rate=8000, timeout=60)
# An RTCP receiver report with no report blocks (RFC 3550 §6.4.2).
RTCP_RR = bytes([0x80, 201, 0, 1, 0, 0, 0x12, 0x34])


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _waiting(sock: socket.socket) -> bool:
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


def _rtp(seq: int) -> bytes:
    """A 20 ms PCMU packet of silence."""
    return struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 1234) + b"\xff" * 160


async def test_the_block_runs_on_the_clock_and_leaves_it_on_exit(
        autojump_clock: trio.abc.Clock) -> None:
    clock = MediaClock()
    with trio.fail_after(10), capture_logs() as logs:
        async with session_with_peer(SETTINGS, clock=clock) as (session, peer, _):
            assert clock.members == 1
            await peer.recv(2048)  # the clock sends the session's comfort silence
        assert clock.members == 0
    with pytest.raises(trio.EndOfChannel):
        session.inbound.receive_nowait()
    names = [e["event"] for e in logs if e["event"].startswith("media_session")]
    assert names == ["media_session_started", "media_session_ended"]


async def test_the_block_ends_after_timeout_without_inbound_rtp(
        autojump_clock: trio.abc.Clock) -> None:
    """RTP keeps the session up; once it stops, the block is cancelled after settings.timeout
    and exits normally with timed_out set."""
    clock = MediaClock()
    with trio.fail_after(60):
        async with session_with_peer(SessionSettings(rate=8000, timeout=5), clock=clock) as (
                session, peer, media):
            for seq in range(8):  # 8 s of one packet a second: longer than the timeout
                await peer.sendto(_rtp(seq), ("127.0.0.1", media.port))
                last = trio.current_time()
                await trio.sleep(1)
            await trio.sleep_forever()
    assert session.timed_out and session.error is None
    assert 5 <= trio.current_time() - last <= 5 + 0.1
    assert session.stats.inbound.packets == 8
    assert clock.members == 0


async def test_a_failing_tick_ends_the_block_with_media_failed_from_its_error(
        autojump_clock: trio.abc.Clock) -> None:
    """The tick's error is the cause, with the traceback of where it was raised; the session
    leaves the clock and logs its end, but leaves logging the error to the call task."""
    clock = MediaClock()
    async with ports_and_peer() as (media, _, answer), trio.open_nursery() as clock_nursery:
        answers = [answer]
        session = MediaSession(media, lambda: answers[-1], SETTINGS, clock=clock,
                               clock_nursery=clock_nursery, call_id="test",
                               on_dtmf=lambda _: None, may_send_to=lambda _: True,
                               metrics=Metrics())
        with trio.fail_after(10), capture_logs() as logs, \
                pytest.raises(MediaFailed) as failed:
            async with session:
                # a re-INVITE to a codec we cannot speak: the next tick raises
                answers.append(dataclasses.replace(answer, codec="G729", payload_type=18))
                await trio.sleep_forever()
    cause = failed.value.__cause__
    assert isinstance(cause, ValueError) and "G729" in str(cause)
    assert traceback.extract_tb(cause.__traceback__)[-1].name == "open_codec"
    assert session.error is cause and not session.timed_out
    assert clock.members == 0 and clock.stats.failures == 1
    assert [e["failed"] for e in logs if e["event"] == "media_session_ended"] == [True]
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]


@pytest.mark.parametrize("recording", [False, True])
async def test_an_error_in_the_block_comes_out_as_raised_and_the_session_still_ends(
        recording: bool, tmp_path: Path) -> None:
    """Whether the session records (its recorder's nursery around the block) or not."""
    settings = dataclasses.replace(SETTINGS, record_to=tmp_path / "r.wav" if recording else None)
    clock = MediaClock()
    before = _open_fds()
    async with ports_and_peer() as (media, peer, answer), trio.open_nursery() as clock_nursery:
        session = MediaSession(media, lambda: answer, settings, clock=clock,
                               clock_nursery=clock_nursery, call_id="test",
                               on_dtmf=lambda _: None, may_send_to=lambda _: True,
                               metrics=Metrics())
        cause = ValueError("in the pipeline")
        with trio.fail_after(10), pytest.raises(KeyError, match="bot bug") as raised:
            async with session:
                await peer.recv(2048)  # running, with its socket handles made
                raise KeyError("bot bug") from cause
        assert raised.value.__cause__ is cause
        assert clock.members == 0
        assert _open_fds() == before + 3  # the peer and the port pair: the session's are closed
    assert (tmp_path / "r.wav").exists() == recording
    with pytest.raises(RuntimeError, match="runs once"):
        async with session:
            pass


async def _talk(peer: trio.socket.SocketType, port: int, seconds: float) -> None:
    """The caller's RTP: 20 ms packets of silence for this long."""
    for seq in range(round(seconds / 0.02)):
        await peer.sendto(_rtp(seq), ("127.0.0.1", port))
        await trio.sleep(0.02)


# The recording tests run on the real clock: the recorder writes in a worker thread, and an
# autojump clock takes the wait for a thread as idle time and races to the next deadline.


async def test_the_recording_holds_the_call_even_when_it_is_cancelled(tmp_path: Path) -> None:
    settings = SessionSettings(rate=8000, timeout=60, record_to=tmp_path / "call.wav")
    with trio.fail_after(30), capture_logs() as logs, trio.CancelScope() as call:
        async with session_with_peer(settings) as (_, peer, media):
            await _talk(peer, media.port, 1.5)
            call.cancel()  # a shutdown: the file is completed all the same
            await trio.sleep_forever()
    with wave.open(str(tmp_path / "call.wav"), "rb") as wav:
        assert wav.getframerate() == 8000
        # all of it but the last packets, held by the jitter buffer when the call ended
        assert 1.3 * 8000 <= wav.getnframes() <= 1.5 * 8000
    assert [e["event"] for e in logs if e["event"].startswith("media_recording")] == [
        "media_recording_saved"]


async def test_a_recording_the_disk_refuses_ends_the_recording_not_the_call() -> None:
    """Logged once, with the traceback, where it is handled; the session carries on."""
    settings = SessionSettings(rate=8000, timeout=60, record_to=Path("/dev/full"))
    with trio.fail_after(30), capture_logs() as logs:
        async with session_with_peer(settings) as (session, peer, media):
            await _talk(peer, media.port, 2.5)  # the first batch (1 s) fails, later ones drop
            assert session.recorder is not None
            assert session.recorder.dropped_batches > 0  # the audio after the error
    failed = [e for e in logs if e["event"].startswith("media_recording")]
    assert [(e["event"], e["log_level"], e.get("exc_info")) for e in failed] == [
        ("media_recording_failed", "error", True)]
    assert session.error is None and session.stats.inbound.packets >= 0.9 * 125


# -- strict RTP in a session (the learning itself: tests/unit/test_strict_rtp.py) ----------


def _packet(seq: int, *, ssrc: int, payload_type: int = 0, payload: bytes = b"\xff" * 160,
            marker: bool = False) -> bytes:
    return RtpPacket(payload_type=payload_type, sequence=seq % 65536, timestamp=seq * 160,
                     ssrc=ssrc, payload=payload, marker=marker).to_bytes()


async def _udp(host: str) -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock


async def test_a_strangers_audio_and_digits_are_dropped_and_counted(
        autojump_clock: trio.abc.Clock) -> None:
    """Once the peer is learnt, packets from 127.0.0.2 (even with the peer's SSRC) reach
    neither the audio nor DTMF, nothing is sent back to it, and one line is logged."""
    metrics, digits = Metrics(), []
    loud = PCMU.encode(np.full(160, 8000, dtype=np.int16))
    # RFC 4733: digit 5, end bit set, 160 samples, sent three times as senders do
    dtmf_end = bytes([5, 0x80 | 10]) + struct.pack("!H", 160)
    stranger = await _udp("127.0.0.2")
    with trio.fail_after(10), capture_logs() as logs:
        async with session_with_peer(SessionSettings(rate=8000, timeout=60), digits=digits,
                                     metrics=metrics) as (session, peer, media):
            target, peer_port = ("127.0.0.1", media.port), peer.getsockname()[1]
            for seq in range(3):
                await peer.sendto(_packet(seq, ssrc=1), target)
            await trio.sleep(0.1)
            for seq in range(3, 23):
                await stranger.sendto(_packet(seq, ssrc=1, payload=loud), target)
            for seq in range(23, 26):
                await stranger.sendto(_packet(seq, ssrc=1, payload_type=101,
                                              payload=dtmf_end, marker=seq == 23), target)
            await trio.sleep(0.1)
            for seq in range(3, 6):
                await peer.sendto(_packet(seq, ssrc=1), target)
            frames = [await session.inbound.receive() for _ in range(6)]
            await trio.sleep(1)
            assert not _waiting(stranger)
    stranger.close()
    assert all(abs(int(s)) < 100 for f in frames for s in f.samples), "a loud frame got in"
    assert digits == []
    assert session.stats.inbound.packets == 6
    assert session.stats.foreign == 23 and session.stats.probation == 0
    assert metrics.registry.get_sample_value(
        "voicedashd_rtp_dropped_packets_total", {"reason": "foreign_source"}) == 23
    lines = [e for e in logs if e["event"] == "rtp_foreign_source_dropped"]
    assert [(e["address"], e["dropped"], e["learnt_port"]) for e in lines] == [
        ("127.0.0.2", 1, peer_port)]
    ended = next(e for e in logs if e["event"] == "media_session_ended")
    assert ended["rtp_foreign"] == 23


async def test_nothing_goes_to_an_sdp_address_not_allowed_until_a_source_is_learnt(
        autojump_clock: trio.abc.Clock) -> None:
    """The SDP peer is not allowed: the clock ticks but sends nothing anywhere; a source on
    another port passes probation and from then on gets the stream, from its first packet."""
    phone = await _udp("127.0.0.1")
    phone_address = phone.getsockname()
    with trio.fail_after(10), capture_logs() as logs:
        async with session_with_peer(SETTINGS, allowed=()) as (session, peer, media):
            await trio.sleep(1)
            assert session.peer is None and not _waiting(peer) and not _waiting(phone)
            assert session.stats.sender.silence == 0 and session.stats.sender.skipped == 0
            for seq in range(PROBATION):
                await phone.sendto(_packet(seq, ssrc=9), ("127.0.0.1", media.port))
                await trio.sleep(0.02)
            first = parse_rtp(await phone.recv(2048))
            assert session.peer == phone_address
            await trio.sleep(0.5)
            assert not _waiting(peer)
    phone.close()
    assert first.marker
    assert session.stats.probation == PROBATION - 1 and session.stats.inbound.packets == 1
    learnt = [e for e in logs if e["event"] == "rtp_source_learnt"]
    assert [(e["address"], e["port"]) for e in learnt] == [phone_address]
