"""SDP (RFC 4566) parsing and the audio offer/answer model (RFC 3264); no I/O."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import MEDIA_CODECS

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
ANSWER_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
# RFC 3551 static payload types: payload type -> (encoding, clock rate).
STATIC_PAYLOADS: dict[int, tuple[str, int]] = {
    0: ("PCMU", 8000),
    3: ("GSM", 8000),
    4: ("G723", 8000),
    8: ("PCMA", 8000),
    9: ("G722", 8000),
    18: ("G729", 8000),
}
RTP_PROFILES = ("RTP/AVP", "RTP/AVPF")
DEFAULT_PTIME = 20
# What we answer with, most preferred first (RFC 3551 names; all with an 8,000 Hz RTP clock):
# media.codecs' default.
DEFAULT_CODECS = MEDIA_CODECS
DTMF_EVENTS = "0-16"
HOLD_ADDRESSES = ("0.0.0.0", "::")

_LINE = re.compile(r"([a-z])=(.*)")
_INT = re.compile(r"[0-9]{1,10}")
_PTIME = re.compile(r"([0-9]{1,5})(?:\.[0-9]*)?")
_RTPMAP = re.compile(r"([0-9]{1,3})[ \t]+([^/ \t]+)/([0-9]{1,9})(?:/([0-9]{1,3}))?[ \t]*")
_FMTP = re.compile(r"([0-9]{1,3})[ \t]+(.*)")
_SPACES = re.compile(r"[ \t]+")


class SdpError(ValueError):
    """An SDP offer that cannot be answered (a UAS answers 488 Not Acceptable Here)."""


class InvalidSdp(SdpError):
    """The body is not well-formed SDP."""


class NoCommonCodec(SdpError):
    """The offer has no audio stream with a codec we support."""


@dataclass(frozen=True, slots=True)
class RtpMap:
    """One a=rtpmap (or implied static) payload format."""

    payload_type: int
    encoding: str
    clock_rate: int
    channels: int | None = None


@dataclass(slots=True)
class MediaDescription:
    """One m= section with its effective connection address and direction."""

    media: str
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    rtpmaps: dict[int, RtpMap] = field(default_factory=dict)
    fmtps: dict[int, str] = field(default_factory=dict)
    ptime: int | None = None
    direction: str = "sendrecv"

    def payload_format(self, payload_type: int) -> RtpMap | None:
        """Return the rtpmap of a payload type, falling back to the static table."""
        if payload_type in self.rtpmaps:
            return self.rtpmaps[payload_type]
        static = STATIC_PAYLOADS.get(payload_type)
        return None if static is None else RtpMap(payload_type, static[0], static[1])

    @property
    def payload_types(self) -> list[int]:
        """The numeric payload types of an RTP m= line, in offer order."""
        return [int(f) for f in self.formats if _INT.fullmatch(f) and int(f) <= 127]


@dataclass(slots=True)
class SessionDescription:
    """A parsed SDP session: origin, session-level connection and direction, media sections."""

    origin: str = ""
    session_name: str = ""
    connection: str | None = None
    direction: str | None = None
    media: list[MediaDescription] = field(default_factory=list)

    @property
    def audio(self) -> MediaDescription | None:
        """The first audio m= section, or None."""
        return next((m for m in self.media if m.media == "audio"), None)

    @property
    def on_hold(self) -> bool:
        """True if the audio stream is put on hold (0.0.0.0, sendonly or inactive)."""
        audio = self.audio
        if audio is None:
            return False
        return audio.connection in HOLD_ADDRESSES or audio.direction in ("sendonly", "inactive")


@dataclass(frozen=True, slots=True)
class Answer:
    """Our SDP answer and the media parameters both sides agreed on."""

    body: bytes
    codec: str
    payload_type: int
    clock_rate: int
    dtmf_payload_type: int | None
    ptime: int
    direction: str
    remote_address: str
    remote_port: int
    on_hold: bool


def _connection_address(value: str) -> str:
    """Return the IP address of a c= value ('IN IP4 192.0.2.1/127' -> '192.0.2.1').

    Only IP literals are accepted: media is never sent to a name written by the peer, and no
    name is ever looked up for it (RFC 4566 allows names; we answer 488).
    """
    parts = _SPACES.split(value.strip(" \t"))
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6") or not parts[2]:
        raise InvalidSdp(f"bad c= line {value[:60]!r}")
    address = parts[2].split("/", 1)[0]
    try:
        version = ipaddress.ip_address(address).version
    except ValueError:
        raise InvalidSdp(f"c= address {address[:60]!r} is not an IP address") from None
    if f"IP{version}" != parts[1]:
        raise InvalidSdp(f"c= address {address[:60]!r} is not an {parts[1]} address")
    return address


def _media_line(value: str, session: SessionDescription) -> MediaDescription:
    """Parse an m= value into a MediaDescription inheriting session-level defaults."""
    parts = _SPACES.split(value.strip(" \t"))
    if len(parts) < 4:
        raise InvalidSdp(f"bad m= line {value[:60]!r}")
    port_text = parts[1].split("/", 1)[0]
    if not _INT.fullmatch(port_text) or int(port_text) > 65535:
        raise InvalidSdp(f"bad port in m= line {value[:60]!r}")
    return MediaDescription(
        media=parts[0],
        port=int(port_text),
        proto=parts[2],
        formats=parts[3:],
        connection=session.connection,
        direction=session.direction or "sendrecv",
    )


def _attribute(value: str, media: MediaDescription | None, session: SessionDescription) -> None:
    """Apply one a= attribute to the current media section (or the session)."""
    name, _, arg = value.partition(":")
    if name in DIRECTIONS:
        if media is None:
            session.direction = name
        else:
            media.direction = name
        return
    if media is None:
        return
    if name == "rtpmap":
        match = _RTPMAP.fullmatch(arg)
        if match is None:
            raise InvalidSdp(f"bad a=rtpmap {arg[:60]!r}")
        pt = int(match.group(1))
        channels = None if match.group(4) is None else int(match.group(4))
        media.rtpmaps[pt] = RtpMap(pt, match.group(2), int(match.group(3)), channels)
    elif name == "fmtp":
        match = _FMTP.fullmatch(arg)
        if match is not None:
            media.fmtps[int(match.group(1))] = match.group(2).strip(" \t")
    elif name == "ptime":
        match = _PTIME.fullmatch(arg.strip(" \t"))
        if match is None or int(match.group(1)) == 0:
            raise InvalidSdp(f"bad a=ptime {arg[:30]!r}")
        media.ptime = int(match.group(1))


def parse_sdp(body: bytes) -> SessionDescription:
    """Parse an SDP body; raise InvalidSdp if it is not well-formed."""
    text = body.decode("utf-8", "replace")
    lines = [line for line in re.split(r"\r?\n", text) if line.strip(" \t")]
    if not lines or lines[0].strip(" \t") != "v=0":
        raise InvalidSdp("SDP must start with v=0")
    session = SessionDescription()
    media: MediaDescription | None = None
    for line in lines[1:]:
        match = _LINE.fullmatch(line)
        if match is None:
            raise InvalidSdp(f"bad SDP line {line[:60]!r}")
        kind, value = match.groups()
        if kind == "m":
            media = _media_line(value, session)
            session.media.append(media)
        elif kind == "c":
            address = _connection_address(value)
            if media is None:
                session.connection = address
            else:
                media.connection = address
        elif kind == "a":
            _attribute(value, media, session)
        elif kind == "o" and media is None:
            session.origin = value
        elif kind == "s" and media is None:
            session.session_name = value
    return session


def _choose_codec(media: MediaDescription, codecs: Sequence[str]) -> RtpMap | None:
    """Return the offered payload format of the first codec in our preference list, or None."""
    offered: dict[str, RtpMap] = {}
    for pt in media.payload_types:
        fmt = media.payload_format(pt)
        if fmt is not None and fmt.clock_rate == 8000 and fmt.channels in (None, 1):
            offered.setdefault(fmt.encoding.upper(), fmt)  # the offerer's first PT of a codec
    return next((offered[name.upper()] for name in codecs if name.upper() in offered), None)


def _telephone_event(media: MediaDescription, clock_rate: int) -> int | None:
    """Return the offered telephone-event payload type at clock_rate, or None."""
    for pt in media.payload_types:
        fmt = media.rtpmaps.get(pt)
        if fmt and fmt.encoding.lower() == "telephone-event" and fmt.clock_rate == clock_rate:
            return pt
    return None


def build_answer(
    offer: SessionDescription,
    *,
    address: str,
    port: int,
    session_id: int,
    session_version: int,
    codecs: Sequence[str] = DEFAULT_CODECS,
) -> Answer:
    """Answer an offer with one audio stream (RFC 3264 §6); other streams are rejected.

    The codec is the first of `codecs` (our preference, media.codecs) that the offer has,
    whatever the offer's order: G.722 carries 16 kHz audio, what the recogniser wants.
    """
    chosen: tuple[MediaDescription, RtpMap] | None = None
    for media in offer.media:
        if media.media != "audio" or media.port == 0 or media.proto not in RTP_PROFILES:
            continue
        codec = _choose_codec(media, codecs)
        if codec is not None:
            chosen = (media, codec)
            break
    if chosen is None:
        raise NoCommonCodec(
            f"no active RTP/AVP audio stream offers any of {', '.join(codecs)}"
        )
    media, codec = chosen
    if media.connection is None:
        raise InvalidSdp("the audio stream has no connection address (c=)")
    on_hold = media.connection in HOLD_ADDRESSES
    direction = "recvonly" if on_hold and media.direction == "sendrecv" else (
        ANSWER_DIRECTION.get(media.direction, "sendrecv")
    )
    dtmf = _telephone_event(media, codec.clock_rate)
    ptime = media.ptime or DEFAULT_PTIME
    addrtype = "IP6" if ":" in address else "IP4"
    lines = [
        "v=0",
        f"o=- {session_id} {session_version} IN {addrtype} {address}",
        "s=voicedashd",
        f"c=IN {addrtype} {address}",
        "t=0 0",
    ]
    for m in offer.media:
        if m is not media:
            lines.append(f"m={m.media} 0 {m.proto} {m.formats[0]}")
            continue
        pts = [codec.payload_type] + ([dtmf] if dtmf is not None else [])
        lines.append(f"m=audio {port} {m.proto} {' '.join(str(pt) for pt in pts)}")
        lines.append(f"a=rtpmap:{codec.payload_type} {codec.encoding}/{codec.clock_rate}")
        if dtmf is not None:
            lines.append(f"a=rtpmap:{dtmf} telephone-event/{codec.clock_rate}")
            lines.append(f"a=fmtp:{dtmf} {DTMF_EVENTS}")
        lines.append(f"a=ptime:{ptime}")
        lines.append(f"a={direction}")
    body = ("\r\n".join(lines) + "\r\n").encode("utf-8")
    return Answer(
        body=body,
        codec=codec.encoding.upper(),
        payload_type=codec.payload_type,
        clock_rate=codec.clock_rate,
        dtmf_payload_type=dtmf,
        ptime=ptime,
        direction=direction,
        remote_address=media.connection,
        remote_port=media.port,
        on_hold=on_hold or direction in ("recvonly", "inactive"),
    )
