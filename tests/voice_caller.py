"""A caller that talks: SIP over raw UDP, speech out and the bot's answer in as real RTP.

Used by the voice bot tests and scripts/bench-voicebot. The caller offers one codec (PCMU, or
G722 for wideband), sends its audio, already encoded, paced at 20 ms per packet from absolute
deadlines, keeps every packet it receives with its arrival time, and answers a BYE from the
daemon. Both codecs carry 160 bytes per 20 ms packet.
"""

from __future__ import annotations

import functools
import re
import secrets
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trio

from tests.sipp import RawSipPeer, header, to_tag
from voicedashd.media.g711 import PCMU
from voicedashd.media.g722 import G722

PAYLOAD_TYPES = {"PCMU": 0, "G722": 9}

PTIME = 0.02
SAMPLES = 160
SILENT_RMS = 300.0  # decoded 16-bit RMS above which a packet counts as speech


def speak(text: str, path: Path, *, lead: float = 0.0, tail: float = 1.5) -> Path:
    """Festival's HTS voice says text (not the bot's voice); sox makes it 8 kHz PCMU with
    lead/tail seconds of silence."""
    festival, sox = shutil.which("text2wave"), shutil.which("sox")
    if festival is None or sox is None:
        raise AssertionError("festival (with festvox-us-slt-hts) and sox are needed "
                             "(scripts/test installs them)")
    wav = path.with_suffix(".wav")
    subprocess.run([festival, "-eval", "(voice_cmu_us_slt_arctic_hts)", "-o", str(wav)],
                   input=text.encode(), check=True)
    subprocess.run([sox, "-D", str(wav), "-r", "8000", "-c", "1", "-e", "u-law", "-t", "raw",
                    str(path), "pad", str(lead), str(tail)], check=True)
    return path


def speech_end(ulaw: bytes, codec: str = "PCMU") -> float:
    """Seconds from the start of a recording (PCMU or G722) to the end of its last loud 20 ms."""
    levels = stream_levels([ulaw[i:i + SAMPLES] for i in range(0, len(ulaw), SAMPLES)], codec)
    loud = [i for i, level in enumerate(levels) if level > SILENT_RMS]
    if not loud:
        raise ValueError("the recording is silent")
    return (loud[-1] + 1) * PTIME


def packet_levels(payloads: list[bytes]) -> list[float]:
    """RMS of each PCMU payload, decoded."""
    return [float(np.sqrt(np.mean(PCMU.decode(p).astype(np.float64) ** 2))) if p else 0.0
            for p in payloads]


def stream_levels(payloads: list[bytes], codec: str = "PCMU") -> list[float]:
    """RMS of each payload of one stream, in order (G.722 is decoded as one stream: state)."""
    if codec == "PCMU":
        return packet_levels(payloads)
    decoder = G722()
    return [_rms(decoder.decode(p)) for p in payloads]


def _rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


@dataclass
class VoiceCall:
    """One call in progress: what was sent when, what came back when."""

    sip: RawSipPeer
    rtp: trio.socket.SocketType
    call_id: str
    from_tag: str
    to_tag: str
    extension: str
    daemon_rtp: tuple[str, int]
    started: float = 0.0  # trio.current_time() when the first RTP packet went out
    speech_end: float | None = None  # when the last loud packet of the speech went out
    received: list[tuple[float, bytes]] = field(default_factory=list)
    bye_from_daemon: trio.Event = field(default_factory=trio.Event)
    bye_answered: trio.Event = field(default_factory=trio.Event)
    finished_talking: trio.Event = field(default_factory=trio.Event)
    answered: trio.Event = field(default_factory=trio.Event)  # loud audio after the speech
    codec: str = "PCMU"
    answer_sdp: str = ""  # the body of the daemon's 200 OK
    levels: list[float] = field(default_factory=list)  # RMS of each received packet
    _cseq: int = 1

    def __post_init__(self) -> None:
        self._decoder = G722() if self.codec == "G722" else None  # the received stream's

    def replies_after(self, moment: float) -> list[tuple[float, float]]:
        """(arrival, RMS) of the packets received after a moment."""
        return [(t, level) for (t, _), level in zip(self.received, self.levels, strict=True)
                if t >= moment]

    def first_loud_after(self, moment: float) -> float | None:
        """Arrival time of the first non-silent packet after a moment."""
        return next((t for t, level in self.replies_after(moment) if level > SILENT_RMS), None)

    async def talk(self, ulaw: bytes) -> None:
        """Send the recording as RTP in real time, then silence until the call ends.

        After a G.722 recording its last packet (the encoder's steady state on its silent
        tail) is repeated: G.722 has no constant silence byte.
        """
        ssrc, sequence, timestamp = secrets.randbits(32), secrets.randbelow(1 << 16), 0
        end = speech_end(ulaw, self.codec)
        whole = len(ulaw) // SAMPLES * SAMPLES
        silence = b"\xff" * SAMPLES if self.codec == "PCMU" else ulaw[whole - SAMPLES:whole]
        payload_type = PAYLOAD_TYPES[self.codec]
        self.started = trio.current_time()
        tick = 0
        while True:
            chunk = ulaw[tick * SAMPLES:(tick + 1) * SAMPLES]
            if len(chunk) < SAMPLES:
                chunk += silence[len(chunk):]
            packet = struct.pack("!BBHII", 0x80, payload_type, sequence, timestamp,
                                 ssrc) + chunk
            await trio.sleep_until(self.started + tick * PTIME)
            await self.rtp.sendto(packet, self.daemon_rtp)
            sequence = (sequence + 1) & 0xFFFF
            timestamp = (timestamp + SAMPLES) & 0xFFFFFFFF
            tick += 1
            if self.speech_end is None and tick * PTIME >= end:
                self.speech_end = trio.current_time()
            if tick * SAMPLES >= len(ulaw) and not self.finished_talking.is_set():
                self.finished_talking.set()

    async def listen(self) -> None:
        """Keep every RTP payload that arrives, with its arrival time."""
        while True:
            data = await self.rtp.recv(2048)
            if len(data) > 12:
                level = self.keep(trio.current_time(), data[12:])
                if (self.speech_end is not None and not self.answered.is_set()
                        and level > SILENT_RMS):
                    self.answered.set()

    def keep(self, arrival: float, payload: bytes) -> float:
        """Record a received payload and its level (RMS); return the level."""
        self.received.append((arrival, payload))
        level = (packet_levels([payload])[0] if self._decoder is None
                 else _rms(self._decoder.decode(payload)))
        self.levels.append(level)
        return level

    async def answer_bye(self) -> None:
        """Answer the daemon's BYE (the bot hung up, or the call failed); note the 200 to ours."""
        while True:
            text = await self.sip.receive(timeout=3600)
            if text.startswith("SIP/2.0 200 ") and (header(text, "CSeq") or "").endswith("BYE"):
                self.bye_answered.set()
            elif text.startswith("BYE "):
                response = "SIP/2.0 200 OK\r\n" + "".join(
                    f"{name}: {header(text, name)}\r\n"
                    for name in ("Via", "From", "To", "Call-ID", "CSeq")) + \
                    "Content-Length: 0\r\n\r\n"
                await self.sip.send(response)
                self.bye_from_daemon.set()

    async def hang_up(self) -> None:
        """Send BYE (answer_bye's loop notes the 200 in bye_answered)."""
        self._cseq += 1
        await self.sip.send(self.sip.in_dialog("BYE", call_id=self.call_id,
                                               from_tag=self.from_tag, to_tag=self.to_tag,
                                               cseq=self._cseq, extension=self.extension))


@asynccontextmanager
async def voice_call(sip_port: int, ulaw: bytes, *, extension: str = "1001",
                     codec: str = "PCMU") -> AsyncIterator[VoiceCall]:
    """Place a call offering one codec (PCMU or G722; `ulaw` is the recording in it), talk
    (the recording, then silence), listen; BYE on exit if still up."""
    rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await rtp.bind(("127.0.0.1", 0))
    port = rtp.getsockname()[1]
    async with RawSipPeer(sip_port) as sip:
        call_id, from_tag = secrets.token_hex(8), secrets.token_hex(4)
        invite = sip.invite(branch=f"z9hG4bK{secrets.token_hex(6)}", call_id=call_id,
                            from_tag=from_tag, extension=extension)
        offer = invite.replace("m=audio 40000 ", f"m=audio {port} ")
        if codec == "G722":  # the same length, so Content-Length stays right
            offer = offer.replace("RTP/AVP 0\r\na=rtpmap:0 PCMU/8000",
                                  "RTP/AVP 9\r\na=rtpmap:9 G722/8000")
        await sip.send(offer)
        ok = await sip.receive_status(200, timeout=15)
        media = re.search(r"^m=audio (\d+) ", ok, re.MULTILINE)
        address = re.search(r"^c=IN IP4 (\S+)", ok, re.MULTILINE)
        assert media and address, ok
        call = VoiceCall(sip, rtp, call_id, from_tag, to_tag(ok), extension,
                         (address.group(1), int(media.group(1))), codec=codec)
        call.answer_sdp = ok[ok.index("\r\n\r\n") + 4:]
        await sip.send(sip.in_dialog("ACK", call_id=call_id, from_tag=from_tag,
                                     to_tag=call.to_tag, cseq=1, extension=extension))
        async with running(call, functools.partial(call.talk, ulaw)):
            yield call


@asynccontextmanager
async def running(call: VoiceCall, talk: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """Listen, answer the daemon's BYE and talk while the block runs; BYE on exit if the call
    is still up; the RTP socket is closed after."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call.listen)
            nursery.start_soon(call.answer_bye)
            nursery.start_soon(talk)
            yield
            if not call.bye_from_daemon.is_set():
                await call.hang_up()
                with trio.move_on_after(5):
                    await call.bye_answered.wait()
            nursery.cancel_scope.cancel()
    finally:
        call.rtp.close()
