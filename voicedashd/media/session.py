"""One call's RTP session: decoded inbound PCM, paced outbound PCM, DTMF, media timeout."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
import structlog
import trio

from ..config import MediaConfig
from ..metrics import Metrics
from ..sip.sdp import HOLD_ADDRESSES, Answer
from .callrecord import PARTIAL_SUFFIX, StereoMixer
from .codecs import Codec, open_codec
from .dtmf import DtmfDigit
from .g711 import Pcm
from .jitter import JitterStats
from .ports import RtpSockets
from .record import SavedWav, WavRecorder
from .resample import Resampler
from .rtp import InboundStats, InboundStream, MalformedRtp, RtpPacket, parse_rtp
from .sender import MediaClock, RtpSender, SenderStats
from .strict import DropLog, Source, StrictRtp, Verdict

log = structlog.get_logger(__name__)

PIPELINE_RATE = 16000
INBOUND_FRAMES = 50  # 1 s of 20 ms frames waiting for the consumer; beyond that, frames drop
MAX_QUEUED = 1.0  # seconds of outbound audio send_pcm lets pile up before it waits
RECV_SIZE = 2048
MAX_BURST = 64  # datagrams read per call per tick; more wait for the next tick
# RTCP is read and dropped this often, not every tick: peers send a report every 5 s or so
# (RFC 3550 §6.2), and an empty read on every tick of every call costs more than it saves.
RTCP_READ_INTERVAL = 0.5


class MediaFailed(Exception):
    """A call's media failed on the clock (a tick raised); the cause is the tick's error."""


@dataclass(slots=True)
class PcmFrame:
    """Decoded 16-bit mono audio at `rate` Hz (one RTP packet's worth; treat as read-only)."""

    samples: Pcm
    rate: int

    @property
    def data(self) -> bytes:
        """The samples as 16-bit little-endian bytes (what Pipecat audio frames carry)."""
        return self.samples.astype("<i2", copy=False).tobytes()

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.rate


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """How a session behaves: media timeout, jitter buffer, PCM rate, strict RTP's silence
    before a new source may be learnt, optional recordings: record_to the inbound debugging
    file ([media] record_dir), call_record_to the tenant's stereo call recording."""

    timeout: float = 30.0
    jitter: float = 0.06
    rate: int = PIPELINE_RATE
    relearn_after: float = 5.0
    record_to: Path | None = None
    call_record_to: Path | None = None


def session_settings(config: MediaConfig, call_id: str, *,
                     call_record_to: Path | None = None) -> SessionSettings:
    """Settings for one call from [media]; the recording is named by start time and call."""
    record_to = None
    if config.record_dir is not None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        record_to = config.record_dir / f"{stamp}-{call_id}.wav"
    return SessionSettings(timeout=config.timeout, jitter=config.jitter_buffer,
                           relearn_after=config.relearn_after, record_to=record_to,
                           call_record_to=call_record_to)


@dataclass(slots=True)
class SessionStats:
    """Counters of one session, for the end-of-call log line and the benchmark."""

    inbound: InboundStats
    jitter: JitterStats
    sender: SenderStats
    frames_dropped: int = 0
    send_errors: int = 0
    foreign: int = 0
    probation: int = 0

    def as_log(self) -> dict[str, Any]:
        """Flat key/values for the media_session_ended log line."""
        return {
            "rtp_in": self.inbound.packets, "rtp_malformed": self.inbound.malformed,
            "rtp_lost": self.jitter.lost, "rtp_late": self.jitter.late,
            "rtp_duplicates": self.jitter.duplicates, "rtp_reordered": self.jitter.reordered,
            "ssrc_changes": self.inbound.ssrc_changes, "frames_dropped": self.frames_dropped,
            "rtp_out_audio": self.sender.audio, "rtp_out_silence": self.sender.silence,
            "rtp_out_skipped": self.sender.skipped, "send_errors": self.send_errors,
            "rtp_foreign": self.foreign, "rtp_probation": self.probation,
        }


class MediaSession:
    """A call's media as the voice bot sees it.

    `inbound` yields decoded PCM frames at `rate`; `send_pcm` queues speech, sent one 20 ms
    packet per clock tick after what is already queued, with comfort silence whenever
    nothing is queued; `flush` drops queued speech at once (barge-in). DTMF digits go to
    on_dtmf. The shared MediaClock drives the socket work while the session's `async with`
    block runs (clock_nursery hosts the clock's loop if it is not running yet).

    Strict RTP (media/strict.py): before the peer's packets arrive we send to its SDP address
    only if may_send_to(address) (sip.trusted, media.allowed_peers), else nothing; inbound
    packets count only from the source learnt from them, the rest are dropped and counted in
    metrics. If accepted RTP stops for settings.timeout the block is cancelled and exits
    normally with `timed_out` set; if the session's tick fails, the block is cancelled and
    MediaFailed is raised from the tick's error when it exits (in the call's task).
    """

    def __init__(self, sockets: RtpSockets, answer: Callable[[], Answer | None],
                 settings: SessionSettings, *, clock: MediaClock, clock_nursery: trio.Nursery,
                 call_id: str, on_dtmf: Callable[[DtmfDigit], None],
                 may_send_to: Callable[[str], bool], metrics: Metrics) -> None:
        first = answer()
        if first is None:
            raise ValueError("a media session needs the call's SDP answer")
        self._clock = clock
        self._clock_nursery = clock_nursery
        self.rate = settings.rate
        self.settings = settings
        self.call_id = call_id
        self.timed_out = False
        self.error: Exception | None = None
        self._current_answer = answer
        self._on_dtmf = on_dtmf
        self._send_frames, self.inbound = trio.open_memory_channel[PcmFrame](INBOUND_FRAMES)
        self._codec: Codec = open_codec(first.codec)
        self._sender = RtpSender(self._codec, first.payload_type)
        self._stream = InboundStream(first.payload_type, first.dtmf_payload_type,
                                     jitter_delay=settings.jitter)
        # G.711 is 8 kHz audio, resampled to and from the pipeline's 16 kHz; G.722 is 16 kHz
        # already, and these pass it through untouched.
        self._decoder = Resampler(self._codec.sample_rate, self.rate)
        self._encoder = Resampler(self.rate, self._codec.sample_rate)
        self._decoding_ssrc: int | None = None
        self._flushes = 0
        self._frames_dropped = 0
        self._send_errors = 0
        self._last_rtp = 0.0
        self._answer = first
        self._may_send_to = may_send_to
        sdp = _sdp_source(first)
        self._strict = StrictRtp(sdp, sdp_allowed=may_send_to(sdp[0]),
                                 relearn_after=settings.relearn_after)
        self._foreign_log = DropLog()
        self._dropped = {verdict: metrics.rtp_dropped.labels(reason=verdict.value)
                         for verdict in (Verdict.FOREIGN, Verdict.PROBATION)}
        self._drops = {Verdict.FOREIGN: 0, Verdict.PROBATION: 0}
        self._scope = trio.CancelScope()
        self._apply(first)
        self.recorder = (None if settings.record_to is None else
                         WavRecorder(settings.record_to, self.rate, call_id=call_id))
        # The tenant's call recording: both directions, aligned on the clock's ticks.
        self.call_recorder: WavRecorder | None = None
        self._mixer: StereoMixer | None = None
        if settings.call_record_to is not None:
            final = settings.call_record_to
            self.call_recorder = WavRecorder(final.with_name(final.name + PARTIAL_SUFFIX),
                                             self.rate, call_id=call_id, channels=2,
                                             publish_as=final)
            self._mixer = StereoMixer(self.rate)
        # Our own handles on the sockets, for non-blocking reads and sends made from the
        # clock's tick without a trip through the scheduler (the port pool owns the
        # originals). Made by the first tick that needs one: a call hung up at once needs none.
        self._sockets = sockets
        self._rtcp_due = 0.0
        self._running: AsyncExitStack | None = None

    # -- the call's side -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the recorder and join the clock; the media runs until the block exits."""
        if self._running is not None:
            raise RuntimeError("a media session runs once")
        sdp = self._strict.sdp
        log.info("media_session_started", call_id=self.call_id, port=self._sockets.port,
                 codec=self._codec.name, address=sdp[0], peer_port=sdp[1],
                 sending=self.peer is not None)
        # Unwound in reverse on exit: the scope catches our own cancel (timeout, failure),
        # then the session ends, then the recorder finishes its file. The sockets belong to the
        # port pool, which closes them when the call releases its ports.
        async with AsyncExitStack() as stack:
            recorders = [r for r in (self.recorder, self.call_recorder) if r is not None]
            if recorders:
                # A nursery only for the recorders' tasks: a call that records nothing needs none.
                nursery = await stack.enter_async_context(trio.open_nursery())
                for recorder in recorders:
                    nursery.start_soon(recorder.run)
            stack.callback(self._end)
            stack.enter_context(self._scope)
            now = trio.current_time()
            self._last_rtp = now
            self._rtcp_due = now + RTCP_READ_INTERVAL
            self._clock.join(self, self._clock_nursery)
            self._running = stack.pop_all()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> bool:
        """Leave the clock and clean up; raise MediaFailed if a tick failed."""
        assert self._running is not None, "exited a media session that was never entered"
        try:
            suppressed = await self._running.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            # A recording session runs the block inside the recorder's nursery, whose group
            # wraps what the block raised (the recorder itself never raises): the block's
            # error goes on as it was raised, whether the session records or not.
            if exc is None or group.exceptions != (exc,):
                raise
        else:
            if self.error is not None and (exc is None or suppressed):
                raise MediaFailed(f"the media of call {self.call_id} failed") from self.error
            return suppressed
        raise exc  # outside the handler, so its context and cause stay the block's

    def _end(self) -> None:
        """Stop the media: off the clock, inbound closed, recording finished, counters logged."""
        self._clock.leave(self)
        self._send_frames.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.call_recorder is not None:
            self.call_recorder.close()
        log.info("media_session_ended", call_id=self.call_id, port=self._sockets.port,
                 timed_out=self.timed_out, failed=self.error is not None, **self.stats.as_log())

    # -- the voice bot's side ------------------------------------------------------------

    async def send_pcm(self, pcm: Pcm | bytes, *, last: bool = False) -> None:
        """Queue speech (16-bit mono at `rate`); last=True ends an utterance (flushes filters)."""
        generation = self._flushes
        await self._sender.wait_queued_below(MAX_QUEUED)
        if generation != self._flushes:
            return  # barged in while waiting: this chunk belongs to the dropped speech
        samples = np.frombuffer(pcm, dtype="<i2") if isinstance(pcm, bytes) else pcm
        self._sender.queue(self._codec.encode(self._encoder.process(samples, last=last)))
        if self._mixer is not None:
            self._mixer.outbound(samples)

    def flush(self) -> None:
        """Drop all queued outbound speech now (barge-in); comfort silence follows."""
        self._flushes += 1
        self._sender.flush()
        self._encoder.reset()
        if self._mixer is not None:
            self._mixer.flush_outbound()

    @property
    def records_call(self) -> bool:
        """Whether the call is being recorded for its tenant (the caller must be told)."""
        return self.call_recorder is not None

    @property
    def call_recording(self) -> SavedWav | None:
        """The tenant's completed recording, once the session has ended and saved it."""
        return self.call_recorder.saved if self.call_recorder is not None else None

    @property
    def queued(self) -> float:
        """Seconds of outbound speech not yet sent."""
        return self._sender.queued

    @property
    def stats(self) -> SessionStats:
        """Counters so far."""
        return SessionStats(self._stream.stats, self._stream.jitter.stats, self._sender.stats,
                            self._frames_dropped, self._send_errors,
                            self._drops[Verdict.FOREIGN], self._drops[Verdict.PROBATION])

    @property
    def peer(self) -> Source | None:
        """Where RTP is sent: the learnt source, else the SDP address if allowed, else None."""
        return self._strict.target

    # -- SDP (re-INVITE) -----------------------------------------------------------------

    def _refresh(self) -> None:
        """Follow a changed SDP answer (re-INVITE: hold, new address, new codec)."""
        answer = self._current_answer()
        if answer is None or answer is self._answer:
            return
        self._answer = answer
        self._apply(answer)
        sdp = _sdp_source(answer)
        self._strict.sdp_changed(sdp, sdp_allowed=self._may_send_to(sdp[0]))

    def _apply(self, answer: Answer) -> None:
        if (answer.codec != self._codec.name
                or answer.payload_type != self._sender.payload_type):
            self._codec = open_codec(answer.codec)
            self._sender.set_codec(self._codec, answer.payload_type)
            self._decoder = Resampler(self._codec.sample_rate, self.rate)
            self._encoder = Resampler(self.rate, self._codec.sample_rate)
        if (answer.payload_type, answer.dtmf_payload_type) != (
                self._stream.audio_payload_type, self._stream.dtmf_payload_type):
            self._stream = InboundStream(answer.payload_type, answer.dtmf_payload_type,
                                         jitter_delay=self.settings.jitter)
        self._sender.paused = (answer.direction in ("recvonly", "inactive")
                               or answer.remote_address in HOLD_ADDRESSES
                               or answer.remote_port == 0)

    @property
    def _expects_media(self) -> bool:
        return self._answer.direction in ("sendrecv", "recvonly")

    # -- the clock's side (ClockMember) ----------------------------------------------------

    def send_tick(self) -> None:
        """Send this tick's packet: queued speech or comfort silence (nothing while held)."""
        sent_audio = self._sender.stats.audio
        try:
            self._send()
        finally:
            if self._mixer is not None and self.call_recorder is not None:
                bot_sent = self._sender.stats.audio != sent_audio
                self.call_recorder.write(self._mixer.tick(bot_sent=bot_sent,
                                                          queued=self._sender.queued))

    def _send(self) -> None:
        self._refresh()
        if self._sender.paused:
            self._sender.skip(1)
            return
        target = self._strict.target
        if target is None:  # nowhere we may send yet: wait, like on hold, for a learnt source
            self._sender.skip(1)
            return
        packet = self._sender.next_packet()
        sock = self._sockets.rtp
        try:
            sock.sendto(packet, target)
        except OSError as exc:  # incl. a full send buffer: the packet is lost, as on the wire
            self._send_errors += 1
            if self._send_errors == 1:
                log.warning("rtp_send_failed", call_id=self.call_id, address=target[0],
                            port=target[1], error=str(exc))

    def receive_tick(self, now: float) -> None:
        """Read what arrived, release what the jitter buffer and DTMF timers let go, and end
        the session if nothing has arrived for settings.timeout."""
        self._refresh()  # packets sent after a re-INVITE's answer are judged by its SDP
        self._read_all(now)
        if now >= self._rtcp_due:
            self._drop_rtcp(now)
        deadline = self._stream.next_deadline
        if deadline is not None and deadline <= now:
            self._deliver(self._stream.timer_fired(now))
        if not self._expects_media:
            self._last_rtp = now  # on hold, the peer owes us nothing
        elif now - self._last_rtp >= self.settings.timeout:
            self.timed_out = True
            self._scope.cancel()

    def skip_ticks(self, ticks: int) -> None:
        """The clock stalled past catching up: the timestamp moves on with the clock."""
        self._sender.skip(ticks)
        self._sender.stats.skipped += ticks
        if self._mixer is not None and self.call_recorder is not None:
            self.call_recorder.write(self._mixer.silence(ticks))

    def fail(self, error: Exception) -> None:
        """A tick raised: the error ends this call (MediaFailed from it, in the call's task)."""
        self.error = error
        self._scope.cancel()

    def _read_all(self, now: float) -> None:
        """Take the datagrams waiting on the socket (at most MAX_BURST per tick)."""
        sock = self._sockets.rtp
        for _ in range(MAX_BURST):
            try:
                data, source = sock.recvfrom(RECV_SIZE)
            except OSError:  # nothing waiting (or an ICMP error queued on the socket)
                return
            try:
                packet = parse_rtp(data)
            except MalformedRtp:
                self._stream.stats.malformed += 1
                continue
            learnt = self._strict.learnt
            verdict = self._strict.receive((source[0], source[1]), packet.ssrc,
                                           packet.sequence, now)
            if verdict is not Verdict.ACCEPT:
                self._drop(verdict, source, now)
                continue
            if self._strict.learnt != learnt:
                self._learnt(source)
            self._last_rtp = now
            self._deliver(self._stream.push(packet, now))

    def _drop_rtcp(self, now: float) -> None:
        """Read and ignore RTCP (we send none; reading keeps the socket buffer empty)."""
        self._rtcp_due = now + RTCP_READ_INTERVAL
        for _ in range(MAX_BURST):  # beyond that a flood is dropped by the kernel, as we would
            try:
                self._sockets.rtcp.recv(RECV_SIZE)
            except OSError:  # nothing waiting (or an ICMP error queued on the socket)
                return

    def _learnt(self, source: Any) -> None:
        """Symmetric RTP (comedia): we answer to where the peer's packets really come from."""
        sdp = self._strict.sdp
        log.info("rtp_source_learnt", call_id=self.call_id, address=source[0], port=source[1],
                 sdp_address=sdp[0], sdp_port=sdp[1])

    def _drop(self, verdict: Verdict, source: Any, now: float) -> None:
        """Count a packet strict RTP refused; foreign ones are logged, at most one line per
        interval with the count since the last."""
        self._drops[verdict] += 1
        self._dropped[verdict].inc()
        if verdict is Verdict.FOREIGN and (count := self._foreign_log.dropped(now)):
            learnt = self._strict.learnt or ("", 0)
            log.warning("rtp_foreign_source_dropped", call_id=self.call_id, address=source[0],
                        port=source[1], dropped=count, learnt_address=learnt[0],
                        learnt_port=learnt[1])

    def _deliver(self, items: Sequence[RtpPacket | DtmfDigit]) -> None:
        for item in items:
            if isinstance(item, DtmfDigit):
                self._on_dtmf(item)
                continue
            if item.ssrc != self._decoding_ssrc:
                if self._decoding_ssrc is not None:  # the peer restarted its stream
                    self._codec.restart_decoder()
                self._decoding_ssrc = item.ssrc
            pcm = self._decoder.process(self._codec.decode(item.payload))
            if not len(pcm):
                continue
            if self.recorder is not None:
                self.recorder.write(pcm)
            if self._mixer is not None:
                self._mixer.inbound(pcm)
            try:
                self._send_frames.send_nowait(PcmFrame(pcm, self.rate))
            except (trio.WouldBlock, trio.BrokenResourceError):
                self._frames_dropped += 1


def _sdp_source(answer: Answer) -> Source:
    """The SDP's address and port, the address in the form the socket reports sources."""
    try:
        address = ipaddress.ip_address(answer.remote_address).compressed
    except ValueError:  # a name: never allowed, never a packet's source
        address = answer.remote_address
    return address, answer.remote_port


def open_media_session(
    sockets: RtpSockets, answer: Callable[[], Answer | None], settings: SessionSettings, *,
    clock: MediaClock, clock_nursery: trio.Nursery, call_id: str,
    on_dtmf: Callable[[DtmfDigit], None], may_send_to: Callable[[str], bool], metrics: Metrics,
) -> MediaSession:
    """A call's media session, to run with `async with` (see MediaSession)."""
    return MediaSession(sockets, answer, settings, clock=clock, clock_nursery=clock_nursery,
                        call_id=call_id, on_dtmf=on_dtmf, may_send_to=may_send_to,
                        metrics=metrics)


async def discard_inbound(session: MediaSession) -> None:
    """Consume inbound audio and say nothing: a call's media until the voice bot takes over."""
    async for _ in session.inbound:
        pass
