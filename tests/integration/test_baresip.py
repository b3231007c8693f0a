"""baresip, a real SIP phone no one here wrote, calls the running daemon (voice bot on).

Over UDP and TCP: its SDP names 127.0.0.1; the question it plays from a WAV file becomes the
caller's final transcript, the bot answers from the knowledge, and what baresip decoded of
the bot's speech is recognised back to the words of that answer; keys it presses are `dtmf`
events; hold and resume (re-INVITEs) keep the call and our audio comes back after; either side
can hang up.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soxr
import trio

from tests.baresip import Baresip, BaresipSetup, run_baresip, wav_for_call
from tests.harness import DaemonConfig, RunningDaemon, run_daemon
from tests.integration.test_hub import login
from tests.integration.test_voicebot import GREETING, bot_config, logged
from tests.speech_corpus import TOOL_TIMEOUT, VOICES, normalize
from tests.stored import stored_events
from voicedashd.voicebot.whisper import SAMPLE_RATE, WhisperRecognizer

QUESTION = "What are your opening hours on Saturday?"
GOODBYE = "Okay, thanks, goodbye."
VOICE = "festival-slt-hts"  # not the bot's voice (hibari)
RATE = 8000  # the caller's WAV at the G.711 rate: baresip 1.0's own resampler garbles speech
WIDE_RATE = 16000  # the caller's WAV for a G.722 call, at the codec's own rate
CODECS = ("PCMU", "PCMA")
LEAD = 3.0  # the caller keeps quiet while the bot greets
CALL_SECONDS = 60.0  # the WAV's length: baresip ends the call when its source runs out
DIGITS = "147#"
FAREWELL = ["Thank you for calling.", "Goodbye."]


def caller_wav(text: str, directory: Path, rate: int = RATE) -> Path:
    """A voice other than the bot's says text: mono 16-bit WAV at rate, silence around it."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / "raw.wav"
    VOICES[VOICE].synthesise(text, raw)
    narrow = directory / "narrow.wav"
    subprocess.run([shutil.which("sox") or "sox", "-D", str(raw), "-r", str(rate), "-c", "1",
                    "-b", "16", str(narrow), "norm", "-3"],
                   check=True, capture_output=True, timeout=TOOL_TIMEOUT)
    with wave.open(str(narrow)) as speech:
        pcm = np.frombuffer(speech.readframes(speech.getnframes()), dtype=np.int16)
    return wav_for_call(pcm, rate, directory / "caller.wav", lead=LEAD, seconds=CALL_SECONDS)


@pytest.fixture(scope="module")
def voices(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The caller's lines as baresip's audio source."""
    directory = tmp_path_factory.mktemp("baresip-voices")
    return {"question": caller_wav(QUESTION, directory / "question"),
            "question-wide": caller_wav(QUESTION, directory / "question-wide", WIDE_RATE),
            "goodbye": caller_wav(GOODBYE, directory / "goodbye")}


def daemon_config(tmp_path: Path) -> DaemonConfig:
    """The voice bot answering from the salon knowledge, in its own directory."""
    (tmp_path / "daemon").mkdir()
    return bot_config(tmp_path / "daemon")


def dial_uri(config: DaemonConfig, transport: str) -> str:
    return f"sip:1001@127.0.0.1:{config.sip_port};transport={transport}"


async def established(phone: Baresip, daemon: RunningDaemon, uri: str) -> str:
    """Dial; return the daemon's call id once both ends say the call is up."""
    await phone.dial(uri)
    await phone.wait_event("CALL_ESTABLISHED", timeout=15)
    started = await daemon.wait_for_log("call_started", timeout=10)
    return str(started["call_id"])


def heard(phone: Baresip) -> str:
    """What baresip decoded of our RTP, recognised by the bot's own recogniser (Whisper)."""
    samples, rate = phone.recording()
    wide = soxr.resample(samples.astype(np.float32), rate, SAMPLE_RATE)
    pcm = np.clip(np.round(wide), -32768, 32767).astype(np.int16)
    return WhisperRecognizer.load().transcribe(pcm.tobytes()).text


def recorded_seconds(phone: Baresip) -> float:
    samples, rate = phone.recording()
    return len(samples) / rate


async def recording_grows(phone: Baresip, seconds: float, timeout: float = 10) -> None:
    """Wait until baresip has decoded `seconds` more of our audio (the file has no event)."""
    target = recorded_seconds(phone) + seconds
    with trio.fail_after(timeout):
        while recorded_seconds(phone) < target:
            await trio.sleep(0.1)


async def packets_grow(phone: Baresip, count: int, timeout: float = 10) -> None:
    """Wait until baresip has received `count` more RTP packets from us."""
    target = await phone.packets_received() + count
    with trio.fail_after(timeout):
        while await phone.packets_received() < target:
            await trio.sleep(0.1)


async def rest_transcript(config: DaemonConfig, call_id: str) -> dict[str, Any]:
    """The call's transcript as the callee's dashboard user reads it over the REST API."""
    async with httpx.AsyncClient(base_url=config.api_url) as http:
        token = (await login(config, config.users[0]))["access_token"]
        answer = await http.get(f"/api/calls/{call_id}/transcript",
                                headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


@pytest.mark.parametrize(("transport", "codec"),
                         [("udp", "PCMU"), ("tcp", "PCMU"), ("udp", "G722")])
async def test_baresip_asks_and_hears_the_answer(tmp_path: Path, voices: dict[str, Path],
                                                 transport: str, codec: str) -> None:
    """baresip's recorded question → final transcript → knowledge answer (tts) → the answer
    decoded by baresip (its own G.711 or G.722) and recognised back; its SDP and RTP are
    127.0.0.1; it hangs up."""
    config = daemon_config(tmp_path)
    wide = codec == "G722"
    setup = BaresipSetup(tmp_path / "baresip", voices["question-wide" if wide else "question"],
                         codecs=("G722",) if wide else CODECS)
    with trio.fail_after(90):
        async with run_daemon(config.path) as daemon, run_baresip(setup) as phone:
            call_id = await established(phone, daemon, dial_uri(config, transport))
            final = await daemon.wait_for_log("stt_transcript", timeout=30, call_id=call_id,
                                              is_final=True)
            start = daemon.logs.index(final)
            answer = await daemon.wait_for_log("tts_started", timeout=10, start=start,
                                               call_id=call_id)
            await daemon.wait_for_log("tts_completed", timeout=30,
                                      start=daemon.logs.index(answer), call_id=call_id)
            await recording_grows(phone, 0.5)  # the answer's last packets reach baresip
            await phone.hang_up()
            await phone.wait_event("CALL_CLOSED", timeout=10)
            ended = await daemon.wait_for_log("call_ended", timeout=10, call_id=call_id)
            session = await daemon.wait_for_log("media_session_started", call_id=call_id)
            learnt = await daemon.wait_for_log("rtp_source_learnt", call_id=call_id)
            transcript = await rest_transcript(config, call_id)
    assert "opening hours" in final["text"].lower(), final
    said = [line["text"] for line in logged(daemon, "tts_started", call_id=call_id)]
    assert said[0] == GREETING, said
    assert "Monday to Friday" in answer["text"], answer  # read out from the knowledge
    assert ended["reason"] == "caller_hangup", ended
    lines = [(e["speaker"], e["text"]) for e in transcript["entries"] if e["final"]]
    assert ("caller", final["text"]) in lines and ("bot", answer["text"]) in lines, transcript
    assert transcript["ended"] is True, transcript
    # Its SDP names 127.0.0.1 (net_interface), and its RTP comes from there.
    assert (session["address"], session["codec"]) == ("127.0.0.1", codec), session
    assert (learnt["address"], learnt["sdp_address"]) == ("127.0.0.1", "127.0.0.1"), learnt
    assert learnt["port"] == learnt["sdp_port"], learnt
    # The bot's speech, as baresip decoded it, says the answer.
    words = set(normalize(await trio.to_thread.run_sync(heard, phone)).split())
    expected = normalize(answer["text"]).split()
    found = [word for word in expected if word in words]
    assert {"monday", "friday", "saturday"} <= words, words
    assert len(found) >= 0.7 * len(expected), (found, expected, words)


async def test_baresip_keys_hold_and_resume(tmp_path: Path) -> None:
    """Keys pressed on baresip are dtmf events with their digits; hold and resume are
    re-INVITEs the call survives (the daemon logs the hold state), our audio stops while
    held and flows again after."""
    config = daemon_config(tmp_path)
    silence = wav_for_call(np.zeros(0, dtype=np.int16), RATE, tmp_path / "silence.wav",
                           lead=0, seconds=CALL_SECONDS)
    setup = BaresipSetup(tmp_path / "baresip", silence, codecs=CODECS)
    with trio.fail_after(90):
        async with run_daemon(config.path) as daemon, run_baresip(setup) as phone:
            call_id = await established(phone, daemon, dial_uri(config, "tcp"))
            await phone.send_digits(DIGITS)
            await daemon.wait_for_count("dtmf", len(DIGITS), timeout=10)

            mark = len(daemon.logs)
            await phone.hold()
            held = await daemon.wait_for_log("call_media_updated", timeout=10, start=mark,
                                             call_id=call_id)
            await trio.sleep(0.2)  # what was in flight when we answered arrives
            before = await phone.packets_received()
            await trio.sleep(1.0)  # held: what we send in a second (an absence, no event)
            during = await phone.packets_received() - before

            mark = len(daemon.logs)
            await phone.resume()
            resumed = await daemon.wait_for_log("call_media_updated", timeout=10, start=mark,
                                                call_id=call_id)
            await packets_grow(phone, 50)  # a second of our RTP again
            assert not logged(daemon, "call_ended", call_id=call_id)
            await phone.hang_up()
            ended = await daemon.wait_for_log("call_ended", timeout=10, call_id=call_id)
    assert held["on_hold"] is True and resumed["on_hold"] is False, (held, resumed)
    assert during <= 2, during
    assert ended["reason"] == "caller_hangup", ended
    dtmf = stored_events(config.dir / "store.sqlite3", "dtmf", call_id)
    assert "".join(e["digit"] for e in dtmf) == DIGITS, dtmf


async def test_the_bot_hangs_up_on_baresip(tmp_path: Path, voices: dict[str, Path]) -> None:
    """The caller says goodbye: the bot says its farewell and sends BYE; baresip sees the call
    closed."""
    config = daemon_config(tmp_path)
    setup = BaresipSetup(tmp_path / "baresip", voices["goodbye"], codecs=CODECS)
    with trio.fail_after(90):
        async with run_daemon(config.path) as daemon, run_baresip(setup) as phone:
            # TCP: our BYE must go back over the connection baresip opened.
            call_id = await established(phone, daemon, dial_uri(config, "tcp"))
            closed = await phone.wait_event("CALL_CLOSED", timeout=40)
            ended = await daemon.wait_for_log("call_ended", timeout=10, call_id=call_id)
    assert ended["reason"] == "bot_hangup", ended
    said = [line["text"] for line in logged(daemon, "tts_started", call_id=call_id)]
    assert said[-2:] == FAREWELL, said
    # Closed by our BYE (ECONNRESET in libre's words), not by its WAV source running out.
    assert closed.get("param") == "Connection reset by peer", closed


async def test_baresip_whose_sdp_is_not_its_rtp_source(tmp_path: Path) -> None:
    """The issue's case on loopback: baresip's SDP names 127.0.0.2 (untrusted here) while its
    RTP comes from 127.0.0.1; we send nothing until its source is learnt, then audio flows."""
    config = daemon_config(tmp_path)
    config.trusted = ("127.0.0.1/32",)
    config.write()
    silence = wav_for_call(np.zeros(0, dtype=np.int16), RATE, tmp_path / "silence.wav",
                           lead=0, seconds=CALL_SECONDS)
    setup = BaresipSetup(tmp_path / "baresip", silence, codecs=CODECS,
                         media_address="127.0.0.2")
    with trio.fail_after(60):
        async with run_daemon(config.path) as daemon, run_baresip(setup) as phone:
            call_id = await established(phone, daemon, dial_uri(config, "udp"))
            learnt = await daemon.wait_for_log("rtp_source_learnt", timeout=10,
                                               call_id=call_id)
            await packets_grow(phone, 50)
            await phone.hang_up()
            ended = await daemon.wait_for_log("call_ended", timeout=10, call_id=call_id)
    [session] = logged(daemon, "media_session_started", call_id=call_id)
    assert (session["address"], session["sending"]) == ("127.0.0.2", False), session
    assert (learnt["address"], learnt["sdp_address"]) == ("127.0.0.1", "127.0.0.2"), learnt
    assert ended["reason"] == "caller_hangup", ended
