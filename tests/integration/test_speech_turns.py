"""The voice bot's turns against real audio: the real daemon (Whisper + hibari), a caller on
raw UDP, no mocks.

What must not become words (line noise, DTMF, silence, the bot's own voice coming back), what
must not end the call (a long message, a line that mentions goodbye), what must (a line that is
only a goodbye), and how one utterance's transcripts arrive (interims, then one final).
"""

from __future__ import annotations

import re
import secrets
import struct
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import trio

from tests.harness import (
    DaemonConfig,
    RunningDaemon,
    User,
    free_even_port_range,
    make_config,
    run_daemon,
)
from tests.integration.test_voicebot import KNOWLEDGE, logged
from tests.sipp import RawSipPeer, to_tag
from tests.stored import stored_events
from tests.voice_caller import (
    PTIME,
    SAMPLES,
    SILENT_RMS,
    VoiceCall,
    packet_levels,
    running,
    speak,
    speech_end,
    voice_call,
)
from voicedashd.media.g711 import PCMU

RATE = 8000
GREETING = "Hello, how can I help?"
# Long enough to echo for a while, several sentences (each its own tts_started).
ECHO_GREETING = ("Hello, you have reached Bella Hair Salon. I am the automated assistant of the "
                 "salon. How can I help you today?")
FAREWELL = ["Thank you for calling.", "Goodbye."]  # the default farewell, sentence by sentence
MESSAGE = ("Hi, this is Maria from the bakery on Church Street. I'm calling about the order for "
           "Saturday. Could you call me back on five five five, one two three four, any time "
           "after three? I'd like to change the cake to chocolate and add twenty cupcakes.")
GOODBYE = "Okay, thanks, goodbye."
NOT_GOODBYE = "I wanted to say goodbye to my old phone plan and ask about a new one"
SENTENCE = "I would like to book a haircut for next Saturday morning please"
LEAD, TAIL = 3.0, 4.0  # the caller's silence while the bot greets, and after its line

DTMF_PT = 101  # offered as telephone-event/8000; the daemon answers with the offered number
RFC_DIGITS = "2580#"  # as RFC 4733 telephone-events
TONE_DIGITS = "2580#"  # as in-band tones in the audio
DTMF_TICKS = 10  # 200 ms per key
DTMF_FREQUENCIES = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}
DTMF_EVENTS = "0123456789*#ABCD"  # RFC 4733 §3.2 event codes, in order

Samples = npt.NDArray[np.float64]
# One RTP packet of a caller's script: payload type, marker bit, how many packets ago its
# event began (its RTP timestamp is that packet's; 0 for audio), payload.
Packet = tuple[int, bool, int, bytes]


def turns_config(tmp_path: Path, *, greeting: str = GREETING) -> DaemonConfig:
    """The default engines (Whisper, hibari) answering from the salon knowledge folder."""
    config = make_config(tmp_path, users=[User("1001")])
    config.rtp_ports = free_even_port_range(40)
    (tmp_path / "knowledge").mkdir(exist_ok=True)
    (tmp_path / "knowledge" / "salon.md").write_text(KNOWLEDGE)
    config.extra = f'[voicebot]\nknowledge = "knowledge"\ngreeting = "{greeting}"\n'
    config.write()
    return config


@pytest.fixture(scope="module")
def lines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The caller's lines (festival's voice) as PCMU: silence while the bot greets, the line,
    silence after."""
    directory = tmp_path_factory.mktemp("turns")
    texts = {"message": MESSAGE, "goodbye": GOODBYE, "not_goodbye": NOT_GOODBYE,
             "sentence": SENTENCE}
    return {name: speak(text, directory / f"{name}.ul", lead=LEAD, tail=TAIL).read_bytes()
            for name, text in texts.items()}


# -- audio that is not speech --------------------------------------------------------------

def dbfs(samples: Samples) -> float:
    """RMS level relative to a full-scale square wave."""
    return float(20 * np.log10(np.sqrt(np.mean(samples ** 2)) / 32768))


def at_level(samples: Samples, level: float) -> Samples:
    """The samples scaled to an RMS of `level` dBFS."""
    return samples * (32768 * 10 ** (level / 20) / np.sqrt(np.mean(samples ** 2)))


def line_noise(seconds: float, rng: np.random.Generator) -> Samples:
    """About -50 dBFS of white and pink noise with a fainter 50 Hz mains hum."""
    count = int(seconds * RATE)
    white = rng.standard_normal(count)
    spectrum = np.fft.rfft(rng.standard_normal(count))
    frequencies = np.fft.rfftfreq(count, 1 / RATE)
    frequencies[0] = frequencies[1]
    pink = np.fft.irfft(spectrum / np.sqrt(frequencies), count)
    hum = np.sin(2 * np.pi * 50 * np.arange(count) / RATE)
    return at_level(white, -53) + at_level(pink, -53) + at_level(hum, -60)


def dtmf_tones(digits: str, *, on: float = 0.2, off: float = 0.2) -> Samples:
    """The digits as in-band DTMF: two sines each at -10 dBFS (about -7 dBm0, a phone's level)
    for `on`, then `off` of quiet."""
    t = np.arange(int(on * RATE)) / RATE
    gap = np.zeros(int(off * RATE))
    parts: list[Samples] = []
    for digit in digits:
        low, high = DTMF_FREQUENCIES[digit]
        tone = sum(at_level(np.sin(2 * np.pi * f * t), -10) for f in (low, high))
        parts += [np.asarray(tone), gap]
    return np.concatenate(parts)


def pcmu(samples: Samples) -> bytes:
    """8 kHz samples as PCMU, padded with silence to whole 20 ms packets."""
    ulaw = PCMU.encode(np.clip(np.round(samples), -32768, 32767).astype(np.int16))
    return ulaw + b"\xff" * (-len(ulaw) % SAMPLES)


def audio_packets(ulaw: bytes) -> Iterator[Packet]:
    """PCMU in 20 ms packets."""
    for start in range(0, len(ulaw), SAMPLES):
        yield 0, False, 0, ulaw[start:start + SAMPLES].ljust(SAMPLES, b"\xff")


def telephone_event(digit: str) -> Iterator[Packet]:
    """One key as RFC 4733 §2.5 packets: marker on the first, the duration growing every
    20 ms, the end packet three times; all with the event's start timestamp."""
    event = DTMF_EVENTS.index(digit)
    volume = 10  # -10 dBm0
    for tick in range(DTMF_TICKS):
        payload = struct.pack("!BBH", event, volume, (tick + 1) * SAMPLES)
        yield DTMF_PT, tick == 0, tick, payload
    end = struct.pack("!BBH", event, 0x80 | volume, DTMF_TICKS * SAMPLES)
    for repeat in range(3):
        yield DTMF_PT, False, DTMF_TICKS + repeat, end


def quieter(payload: bytes, gain: float) -> bytes:
    """A PCMU payload scaled by gain."""
    return PCMU.encode((PCMU.decode(payload) * gain).astype(np.int16))


# -- a caller that plays a script, then silence or an echo of what it hears ----------------

@dataclass
class ScriptedCall(VoiceCall):
    """A call whose caller sends a script of packets (audio, telephone-events) at 20 ms, then
    silence; or, with an echo delay, sends back every payload the daemon sends it.

    The echo is the caller's own RTP stream (its SSRC, sequence numbers and timestamps),
    paced at 20 ms, each payload `echo_delay` late and `echo_gain` quieter.
    """

    script: list[Packet] = field(default_factory=list)
    echo_delay: float | None = None
    echo_gain: float = 0.5  # -6 dB
    script_done: trio.Event = field(default_factory=trio.Event)
    echoed_loud: int = 0  # loud packets sent back
    _echo: deque[tuple[float, bytes]] = field(default_factory=deque)
    _heard: trio.Event = field(default_factory=trio.Event)

    async def send(self) -> None:
        """Send the script, then silence or the echo, one packet every 20 ms until cancelled."""
        ssrc, sequence = secrets.randbits(32), secrets.randbelow(1 << 16)
        script = iter(self.script)
        self.started = trio.current_time()
        tick = 0
        while True:
            await trio.sleep_until(self.started + tick * PTIME)
            item = next(script, None)
            if item is None:
                self.script_done.set()
                item = 0, False, 0, self._echo_or_silence()
            payload_type, marker, back, payload = item
            header = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | payload_type,
                                 sequence, ((tick - back) * SAMPLES) & 0xFFFFFFFF, ssrc)
            await self.rtp.sendto(header + payload, self.daemon_rtp)
            sequence = (sequence + 1) & 0xFFFF
            tick += 1

    def _echo_or_silence(self) -> bytes:
        if self._echo and self._echo[0][0] <= trio.current_time():
            payload = self._echo.popleft()[1]
            if packet_levels([payload])[0] > SILENT_RMS:
                self.echoed_loud += 1
            return payload
        return b"\xff" * SAMPLES

    async def listen(self) -> None:
        """Keep every RTP payload that arrives; in echo mode, queue it to be sent back."""
        while True:
            data = await self.rtp.recv(2048)
            if len(data) > 12:
                now, payload = trio.current_time(), data[12:]
                self.keep(now, payload)
                if self.echo_delay is not None:
                    self._echo.append((now + self.echo_delay, quieter(payload, self.echo_gain)))
                self._heard.set()
                self._heard = trio.Event()

    async def wait_received(self, count: int) -> None:
        """Until `count` packets have come from the daemon."""
        while len(self.received) < count:
            await self._heard.wait()


@asynccontextmanager
async def scripted_call(sip_port: int, script: list[Packet], *, extension: str = "1001",
                        echo_delay: float | None = None) -> AsyncIterator[ScriptedCall]:
    """Place a call offering PCMU and telephone-event; play the script (or echo); BYE on exit
    if the call is still up."""
    rtp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await rtp.bind(("127.0.0.1", 0))
    port = rtp.getsockname()[1]
    async with RawSipPeer(sip_port) as sip:
        call_id, from_tag = secrets.token_hex(8), secrets.token_hex(4)
        invite = sip.invite(branch=f"z9hG4bK{secrets.token_hex(6)}", call_id=call_id,
                            from_tag=from_tag, extension=extension)
        head = invite.split("\r\n\r\n", 1)[0]
        sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               f"m=audio {port} RTP/AVP 0 {DTMF_PT}\r\na=rtpmap:0 PCMU/8000\r\n"
               f"a=rtpmap:{DTMF_PT} telephone-event/8000\r\na=fmtp:{DTMF_PT} 0-16\r\n"
               "a=ptime:20\r\n")
        head = re.sub(r"Content-Length: \d+", f"Content-Length: {len(sdp)}", head)
        await sip.send(f"{head}\r\n\r\n{sdp}")
        ok = await sip.receive_status(200, timeout=15)
        media = re.search(rf"^m=audio (\d+) RTP/AVP 0 {DTMF_PT}\r?$", ok, re.MULTILINE)
        address = re.search(r"^c=IN IP4 (\S+)", ok, re.MULTILINE)
        assert media and address and f"a=rtpmap:{DTMF_PT} telephone-event/8000" in ok, ok
        call = ScriptedCall(sip, rtp, call_id, from_tag, to_tag(ok), extension,
                            (address.group(1), int(media.group(1))), script=script,
                            echo_delay=echo_delay)
        await sip.send(sip.in_dialog("ACK", call_id=call_id, from_tag=from_tag,
                                     to_tag=call.to_tag, cseq=1, extension=extension))
        async with running(call, call.send):
            yield call


# -- reading the daemon's log ---------------------------------------------------------------

def call_log(daemon: RunningDaemon, call_id: str) -> list[dict[str, Any]]:
    """The call's bus events so far, for assertion messages."""
    keep = ("event", "seq", "text", "is_final", "digit", "reason")
    return [{k: line[k] for k in keep if k in line} for line in daemon.logs
            if line.get("call_id") == call_id and line.get("progress") == "realtime"]


async def until(daemon: RunningDaemon, condition: Callable[[], bool], what: str, *,
                call_id: str, timeout: float) -> None:
    """Wait (on the daemon's log) until condition holds; fail naming what did not happen."""
    with trio.move_on_after(timeout):
        while not condition():
            await daemon._changed.wait()
        return
    raise AssertionError(f"{what} not within {timeout} s: {call_log(daemon, call_id)}")


async def call_started(daemon: RunningDaemon, *, start: int = 0) -> str:
    """The daemon's id of the first call that starts after log index start."""
    started = await daemon.wait_for_log("call_started", timeout=15, start=start)
    return str(started["call_id"])


def said(daemon: RunningDaemon, call_id: str, start: int = 0) -> list[str]:
    """What the bot started saying in the call (after log index start)."""
    return [line["text"] for line in daemon.logs[start:] if line.get("event") == "tts_started"
            and line.get("call_id") == call_id]


def bot_quiet(daemon: RunningDaemon, call_id: str) -> bool:
    """Every sentence the bot started in the call has completed."""
    return (len(logged(daemon, "tts_completed", call_id=call_id))
            >= len(logged(daemon, "tts_started", call_id=call_id)))


def finals(daemon: RunningDaemon, call_id: str) -> list[str]:
    """The call's final transcripts so far."""
    return [line["text"] for line in logged(daemon, "stt_transcript", call_id=call_id,
                                            is_final=True)]


async def answer_to_last_final(daemon: RunningDaemon, call_id: str, *,
                               timeout: float = 30) -> tuple[str, list[str]]:
    """Once the caller is done: wait until the bot has reacted to the caller's last final
    transcript and is quiet again; that final's text and what the bot said after it."""
    def last_final() -> dict[str, Any] | None:
        lines = logged(daemon, "stt_transcript", call_id=call_id, is_final=True)
        return lines[-1] if lines else None

    def answered() -> bool:
        final = last_final()
        return (final is not None and bool(said(daemon, call_id, daemon.logs.index(final)))
                and bot_quiet(daemon, call_id))

    await until(daemon, answered, "a final transcript, and the bot's reaction to it",
                call_id=call_id, timeout=timeout)
    final = last_final()
    assert final is not None
    return final["text"], said(daemon, call_id, daemon.logs.index(final))


# -- the tests ------------------------------------------------------------------------------

async def test_noise_dtmf_and_silence_give_no_words(tmp_path: Path) -> None:
    """30 s of line noise with hum, five keys as RFC 4733 events, the same keys as in-band
    tones, 3 s of digital silence: each key is a dtmf event once, and nothing is transcribed."""
    rng = np.random.default_rng(4733)
    noise = line_noise(30, rng)
    assert -51.5 < dbfs(noise) < -48.5, dbfs(noise)
    script = list(audio_packets(pcmu(noise)))
    for digit in RFC_DIGITS:
        script += [*telephone_event(digit), *audio_packets(pcmu(line_noise(0.3, rng)))]
    tones = dtmf_tones(TONE_DIGITS)
    script += audio_packets(pcmu(tones + line_noise(len(tones) / RATE, rng)))
    script += audio_packets(b"\xff" * int(3 * RATE))
    assert len(script) * PTIME < 40
    config = turns_config(tmp_path)
    with trio.fail_after(70):
        async with run_daemon(config.path) as daemon:
            async with scripted_call(config.sip_port, script) as call:
                call_id = await call_started(daemon)
                await call.script_done.wait()
            ended = await daemon.wait_for_log("call_ended", call_id=call_id)
            session = await daemon.wait_for_log("media_session_ended", call_id=call_id)
    events = call_log(daemon, call_id)
    assert ended["reason"] == "caller_hangup", events
    assert said(daemon, call_id) == [GREETING], events  # the bot was there, and kept quiet
    assert not logged(daemon, "stt_transcript", call_id=call_id), events
    assert [e["digit"] for e in logged(daemon, "dtmf", call_id=call_id)] == [
        "[redacted]"] * len(RFC_DIGITS), events
    dtmf = stored_events(config.dir / "store.sqlite3", "dtmf", call_id)
    assert [e["digit"] for e in dtmf] == list(RFC_DIGITS), events
    assert all(e["duration"] == pytest.approx(DTMF_TICKS * PTIME) for e in dtmf), dtmf
    assert session["rtp_in"] >= len(script), session


async def stays_up_after(tmp_path: Path, line: bytes) -> tuple[RunningDaemon, str, str]:
    """Play a line and hang up: the bot answered it with something other than the farewell,
    never hung up itself, and the call ended with the caller's BYE. (daemon, call_id, heard)."""
    config = turns_config(tmp_path)
    with trio.fail_after(90):
        async with run_daemon(config.path) as daemon:
            async with voice_call(config.sip_port, line) as call:
                call_id = await call_started(daemon)
                await call.finished_talking.wait()
                _, answer = await answer_to_last_final(daemon, call_id)
                assert not call.bye_from_daemon.is_set(), call_log(daemon, call_id)
            ended = await daemon.wait_for_log("call_ended", call_id=call_id)
    events = call_log(daemon, call_id)
    assert ended["reason"] == "caller_hangup", events
    assert not call.bye_from_daemon.is_set()
    assert not logged(daemon, "voicebot_hung_up", call_id=call_id)
    assert answer[0] not in FAREWELL, events  # the line got an answer, not the farewell
    assert not set(said(daemon, call_id)) & set(FAREWELL), events
    assert call.speech_end is not None
    assert call.first_loud_after(call.speech_end) is not None  # the answer was heard
    return daemon, call_id, " ".join(finals(daemon, call_id)).lower()


async def test_long_message_without_goodbye_keeps_the_call(
        tmp_path: Path, lines: dict[str, bytes]) -> None:
    """A 15 s message with names and numbers and no farewell: transcribed, answered, and the
    call stays up until the caller hangs up."""
    assert speech_end(lines["message"]) - LEAD > 14
    daemon, call_id, heard = await stays_up_after(tmp_path, lines["message"])
    # The message was heard, give or take Whisper tiny's slips (a word here and there).
    words = ("maria", "bakery", "church street", "saturday", "call me back", "chocolate",
             "cupcake")
    assert sum(word in heard for word in words) >= 5, call_log(daemon, call_id)


async def test_okay_thanks_goodbye_ends_the_call(tmp_path: Path,
                                                 lines: dict[str, bytes]) -> None:
    """A line that is only a goodbye: the bot says its farewell, then sends BYE."""
    config = turns_config(tmp_path)
    with trio.fail_after(60):
        async with run_daemon(config.path) as daemon:
            async with voice_call(config.sip_port, lines["goodbye"]) as call:
                call_id = await call_started(daemon)
                with trio.move_on_after(30):
                    await call.bye_from_daemon.wait()
            ended = await daemon.wait_for_log("call_ended", call_id=call_id)
    events = call_log(daemon, call_id)
    assert call.bye_from_daemon.is_set(), events
    assert ended["reason"] == "bot_hangup", events
    heard = finals(daemon, call_id)
    assert heard and "goodbye" in heard[-1].lower(), events
    assert said(daemon, call_id)[-2:] == FAREWELL, events
    assert logged(daemon, "voicebot_hung_up", call_id=call_id)
    assert call.speech_end is not None
    assert call.first_loud_after(call.speech_end) is not None  # the farewell was heard


async def test_a_line_that_says_goodbye_to_something_else_keeps_the_call(
        tmp_path: Path, lines: dict[str, bytes]) -> None:
    """"goodbye" inside a longer line is not a farewell: the bot answers and stays."""
    daemon, call_id, heard = await stays_up_after(tmp_path, lines["not_goodbye"])
    assert "goodbye" in heard and "phone plan" in heard, call_log(daemon, call_id)


async def test_an_utterance_of_two_seconds_shows_interims_before_its_final(
        tmp_path: Path, lines: dict[str, bytes]) -> None:
    """A 3.5 s sentence: interim transcripts while it is spoken, then exactly one final line."""
    assert speech_end(lines["sentence"]) - LEAD >= 2.0
    config = turns_config(tmp_path)
    with trio.fail_after(60):
        async with run_daemon(config.path) as daemon:
            async with voice_call(config.sip_port, lines["sentence"]) as call:
                call_id = await call_started(daemon)
                await call.finished_talking.wait()
                final, _ = await answer_to_last_final(daemon, call_id)
            await daemon.wait_for_log("call_ended", call_id=call_id)
    events = call_log(daemon, call_id)
    transcripts = logged(daemon, "stt_transcript", call_id=call_id)
    assert [t["is_final"] for t in transcripts][-1:] == [True], events
    interims = [t for t in transcripts if not t["is_final"]]
    assert interims and all(t["text"].strip() for t in interims), events
    assert len(finals(daemon, call_id)) == 1, events
    assert final.strip() and "\n" not in final and re.search(r"(?i)hair ?cut", final), events
    assert all(t["speaker"] == "caller" for t in transcripts), events


async def test_the_bots_own_voice_coming_back_is_not_transcribed(tmp_path: Path) -> None:
    """A caller that only echoes the bot (80 ms late, 6 dB down) and says nothing itself: the
    greeting is not heard as the caller's words, during it or for 3 s after, and it plays out
    in full (as much loud audio as a silent caller got just before)."""
    config = turns_config(tmp_path, greeting=ECHO_GREETING)

    def greeted(call_id: str) -> Callable[[], bool]:
        return lambda: (" ".join(said(daemon, call_id)) == ECHO_GREETING
                        and bot_quiet(daemon, call_id))

    with trio.fail_after(75):
        async with run_daemon(config.path) as daemon:
            async with scripted_call(config.sip_port, []) as silent:
                silent_id = await call_started(daemon)
                await until(daemon, greeted(silent_id), "the whole greeting", call_id=silent_id,
                            timeout=20)
                await silent.wait_received(len(silent.received) + int(1 / PTIME))
            await daemon.wait_for_log("call_ended", call_id=silent_id)
            async with scripted_call(config.sip_port, [], echo_delay=0.08) as echo:
                echo_id = await call_started(daemon, start=daemon.logs.index(
                    logged(daemon, "call_ended", call_id=silent_id)[0]))
                await until(daemon, greeted(echo_id), "the whole greeting, echoed back",
                            call_id=echo_id, timeout=20)
                # 3 s more of the bot's RTP, sent back as it comes.
                await echo.wait_received(len(echo.received) + int(3 / PTIME))
            await daemon.wait_for_log("call_ended", call_id=echo_id)
    events = call_log(daemon, echo_id)
    assert echo.echoed_loud > 2 / PTIME, echo.echoed_loud  # seconds of the bot came back
    assert not logged(daemon, "stt_transcript", call_id=echo_id), events
    assert said(daemon, echo_id) == said(daemon, silent_id), events
    loud = [len([1 for _, level in call.replies_after(0) if level > SILENT_RMS])
            for call in (echo, silent)]
    assert loud[0] >= 0.95 * loud[1], loud  # no sentence was cut short
