"""RTP (RFC 3550) packets and the inbound stream of one call; sans-IO, time passed in."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from .dtmf import DtmfDecoder, DtmfDigit, MalformedEvent
from .jitter import JitterBuffer

RTP_VERSION = 2
HEADER_SIZE = 12
_HEADER = struct.Struct("!BBHII")
# RFC 5761 §4: first-byte-plus-PT values 192-223 are RTCP; such a packet on the RTP port is
# multiplexed RTCP (we don't negotiate rtcp-mux), never audio.
_RTCP_PACKET_TYPES = range(64, 96)


class MalformedRtp(ValueError):
    """A datagram on the RTP port that is not a well-formed RTP packet."""


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet: the header fields we use, CSRCs, the extension and the payload.

    Not frozen only because a frozen dataclass costs microseconds per packet to build;
    nothing mutates one.
    """

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None

    def to_bytes(self, padding: int = 0) -> bytes:
        """Serialise the packet, optionally with padding bytes (RFC 3550 §5.1)."""
        first = (RTP_VERSION << 6) | (0x20 if padding else 0) | (0x10 if self.extension else 0)
        first |= len(self.csrcs)
        out = bytearray(_HEADER.pack(first, (0x80 if self.marker else 0) | self.payload_type,
                                     self.sequence, self.timestamp, self.ssrc))
        for csrc in self.csrcs:
            out += struct.pack("!I", csrc)
        if self.extension is not None:
            profile, data = self.extension
            if len(data) % 4:
                raise ValueError("an RTP header extension is a whole number of 32-bit words")
            out += struct.pack("!HH", profile, len(data) // 4) + data
        out += self.payload
        if padding:
            out += bytes(padding - 1) + bytes([padding])
        return bytes(out)


def parse_rtp(data: bytes) -> RtpPacket:
    """Parse a datagram strictly (version, CSRC list, extension, padding) or raise MalformedRtp."""
    if len(data) < HEADER_SIZE:
        raise MalformedRtp(f"{len(data)} bytes is shorter than an RTP header")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(data)
    payload_type = second & 0x7F
    if first == 0x80 and payload_type not in _RTCP_PACKET_TYPES:  # the usual: no options
        return RtpPacket(payload_type, sequence, timestamp, ssrc, data[HEADER_SIZE:],
                         bool(second & 0x80))
    if first >> 6 != RTP_VERSION:
        raise MalformedRtp(f"RTP version {first >> 6}, expected 2")
    if payload_type in _RTCP_PACKET_TYPES:
        raise MalformedRtp(f"packet type {second} is RTCP, not RTP")
    offset = HEADER_SIZE + 4 * (first & 0x0F)
    if len(data) < offset:
        raise MalformedRtp(f"{first & 0x0F} CSRCs do not fit in {len(data)} bytes")
    csrcs = struct.unpack_from(f"!{first & 0x0F}I", data, HEADER_SIZE)
    extension = None
    if first & 0x10:
        if len(data) < offset + 4:
            raise MalformedRtp("header extension flag set but no extension header")
        profile, words = struct.unpack_from("!HH", data, offset)
        end = offset + 4 + 4 * words
        if len(data) < end:
            raise MalformedRtp(f"header extension of {words} words overruns the packet")
        extension = (profile, bytes(data[offset + 4:end]))
        offset = end
    end = len(data)
    if first & 0x20:
        padding = data[-1]
        if padding == 0 or padding > end - offset:
            raise MalformedRtp(f"padding count {padding} is not within the payload")
        end -= padding
    return RtpPacket(payload_type=payload_type, sequence=sequence, timestamp=timestamp,
                     ssrc=ssrc, payload=bytes(data[offset:end]), marker=bool(second & 0x80),
                     csrcs=tuple(csrcs), extension=extension)


@dataclass(slots=True)
class InboundStats:
    """Counters of one inbound stream (logged when the session ends)."""

    packets: int = 0
    malformed: int = 0
    other_payload: int = 0
    ssrc_changes: int = 0
    dtmf_malformed: int = 0


@dataclass
class InboundStream:
    """What arrives on a call's RTP port: audio packets put in order, DTMF decoded once per event.

    Audio packets of the negotiated payload type go through a jitter buffer; an SSRC change
    (the peer restarted its stream) releases what was held and starts a fresh buffer.
    Telephone-events are decoded by their own payload type, whatever their SSRC.
    """

    audio_payload_type: int
    dtmf_payload_type: int | None
    clock_rate: int = 8000
    jitter_delay: float = 0.06
    stats: InboundStats = field(default_factory=InboundStats)
    ssrc: int | None = None
    jitter: JitterBuffer[RtpPacket] = field(init=False)
    dtmf: DtmfDecoder = field(init=False)

    def __post_init__(self) -> None:
        self.jitter = JitterBuffer(delay=self.jitter_delay)
        self.dtmf = DtmfDecoder(clock_rate=self.clock_rate)

    def push(self, packet: RtpPacket, now: float) -> Sequence[RtpPacket | DtmfDigit]:
        """Take one parsed packet; return audio now in order and finished DTMF digits."""
        self.stats.packets += 1
        if packet.payload_type == self.audio_payload_type:
            if packet.ssrc == self.ssrc:
                return self.jitter.push(packet.sequence, packet, now)
            out: list[RtpPacket | DtmfDigit] = []
            if self.ssrc is not None:
                self.stats.ssrc_changes += 1
                out.extend(self.jitter.flush())
                self.jitter.reset()
            self.ssrc = packet.ssrc
            out.extend(self.jitter.push(packet.sequence, packet, now))
            return out
        if packet.payload_type == self.dtmf_payload_type:
            try:
                return list(self.dtmf.push(packet, now))
            except MalformedEvent:
                self.stats.dtmf_malformed += 1
                return []
        self.stats.other_payload += 1
        return []

    def timer_fired(self, now: float) -> Sequence[RtpPacket | DtmfDigit]:
        """Release audio whose gap waited long enough, and DTMF whose end never came."""
        return [*self.jitter.pop_due(now), *self.dtmf.expire(now)]

    @property
    def next_deadline(self) -> float | None:
        """When timer_fired next has something to do, or None."""
        if self.jitter.idle and self.dtmf.idle:
            return None
        deadlines = [d for d in (self.jitter.next_deadline, self.dtmf.next_deadline)
                     if d is not None]
        return min(deadlines, default=None)
