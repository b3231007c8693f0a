"""A caller that talks: SIP over raw UDP, speech out and the bot's answer in as real RTP.

Used by the voice bot tests and scripts/bench-voicebot. The caller sends its audio (PCMU)
paced at 20 ms per packet from absolute deadlines, keeps every packet it receives with its
arrival time, and answers a BYE from the daemon.
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


def speech_end(ulaw: bytes) -> float:
    """Seconds from the start of a PCMU recording to the end of its last loud 20 ms."""
    levels = packet_levels([ulaw[i:i + SAMPLES] for i in range(0, len(ulaw), SAMPLES)])
    loud = [i for i, level in enumerate(levels) if level > SILENT_RMS]
    if not loud:
        raise ValueError("the recording is silent")
    return (loud[-1] + 1) * PTIME


def packet_levels(payloads: list[bytes]) -> list[float]:
    """RMS of each PCMU payload, decoded."""
    return [float(np.sqrt(np.mean(PCMU.decode(p).astype(np.float64) ** 2))) if p else 0.0
            for p in payloads]


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
    _cseq: int = 1

    def replies_after(self, moment: float) -> list[tuple[float, float]]:
        """(arrival, RMS) of the packets received after a moment."""
        late = [(t, p) for t, p in self.received if t >= moment]
        return list(zip([t for t, _ in late], packet_levels([p for _, p in late]), strict=True))

    def first_loud_after(self, moment: float) -> float | None:
        """Arrival time of the first non-silent packet after a moment."""
        return next((t for t, level in self.replies_after(moment) if level > SILENT_RMS), None)

    async def talk(self, ulaw: bytes) -> None:
        """Send the recording as RTP in real time, then silence until the call ends."""
        ssrc, sequence, timestamp = secrets.randbits(32), secrets.randbelow(1 << 16), 0
        end = speech_end(ulaw)
        self.started = trio.current_time()
        tick = 0
        while True:
            chunk = ulaw[tick * SAMPLES:(tick + 1) * SAMPLES]
            if len(chunk) < SAMPLES:
                chunk += b"\xff" * (SAMPLES - len(chunk))
            packet = struct.pack("!BBHII", 0x80, 0, sequence, timestamp, ssrc) + chunk
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
                self.received.append((trio.current_time(), data[12:]))
                if (self.speech_end is not None and not self.answered.is_set()
                        and packet_levels([data[12:]])[0] > SILENT_RMS):
                    self.answered.set()

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
                     ) -> AsyncIterator[VoiceCall]:
    """Place a call, talk (the recording, then silence), listen; BYE on exit if still up."""
    rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await rtp.bind(("127.0.0.1", 0))
    port = rtp.getsockname()[1]
    async with RawSipPeer(sip_port) as sip:
        call_id, from_tag = secrets.token_hex(8), secrets.token_hex(4)
        invite = sip.invite(branch=f"z9hG4bK{secrets.token_hex(6)}", call_id=call_id,
                            from_tag=from_tag, extension=extension)
        await sip.send(invite.replace("m=audio 40000 ", f"m=audio {port} "))
        ok = await sip.receive_status(200, timeout=15)
        media = re.search(r"^m=audio (\d+) ", ok, re.MULTILINE)
        address = re.search(r"^c=IN IP4 (\S+)", ok, re.MULTILINE)
        assert media and address, ok
        call = VoiceCall(sip, rtp, call_id, from_tag, to_tag(ok), extension,
                         (address.group(1), int(media.group(1))))
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
