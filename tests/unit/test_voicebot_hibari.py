"""Offline neural speech: hibari's voice, brought to the pipeline's 16 kHz, shared by threads."""

from __future__ import annotations

import threading
from pathlib import Path

import hibari
import hibari.voices
import numpy as np
import pytest
import trio
import trio_asyncio  # noqa: F401 - before Pipecat, see voicedashd/voicebot/__init__.py
from pipecat.frames.frames import (
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)

from tests.pipecat_run import run_frames
from voicedashd.voicebot.hibari_tts import (
    HibariTTSService,
    HibariVoice,
    offline_voices,
    to_pipeline_pcm,
)

HELLO = "Hello, how can I help?"
SENTENCES = (HELLO, "We are open Monday to Friday from nine until six.",
             "A haircut costs twenty five pounds.", "Could you say that again, please?")
RATE = 16000
NEAR_NYQUIST = -32.0  # dB, 7-8 kHz against 0.3-3 kHz; see the aliasing test


@pytest.fixture(scope="module")
def voice() -> HibariVoice:
    return HibariVoice.load("heart", threads=1)


def samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, "<i2").astype(np.float64)


def band_db(x: np.ndarray, rate: int, band: tuple[float, float],
            reference: tuple[float, float] = (300, 3000)) -> float:
    """Energy in band relative to the reference band, in dB."""
    power = np.abs(np.fft.rfft(x)) ** 2
    freq = np.fft.rfftfreq(len(x), 1 / rate)

    def energy(lo: float, hi: float) -> float:
        return float(power[(freq >= lo) & (freq < hi)].sum())

    return 10 * np.log10(energy(*band) / energy(*reference))


def test_speech_is_16_bit_16khz_audio_of_a_plausible_length_and_level(
        voice: HibariVoice) -> None:
    x = samples(voice.synthesize(HELLO, 1.0))
    assert 0.5 < len(x) / RATE < 3.0
    assert np.sqrt(np.mean(x ** 2)) > 500  # speech at about -25 dBFS; silence would be ~0
    loud = np.flatnonzero(np.abs(x) > 33)  # -60 dBFS
    assert loud[0] <= 0.035 * RATE  # the 300 ms pause before speech is cut to 30 ms
    assert len(x) - loud[-1] < 0.16 * RATE  # the long one after it is cut to 150 ms
    slower = samples(voice.synthesize(HELLO, 0.7))
    assert len(slower) > 1.2 * len(x)


def test_resampling_filters_out_what_would_alias() -> None:
    """A 10 kHz tone has no place at 16 kHz: it must vanish, not come back at 6 kHz."""
    t = np.arange(24000) / 24000
    audio = 0.4 * np.sin(2 * np.pi * 1000 * t) + 0.4 * np.sin(2 * np.pi * 10000 * t)
    x = samples(to_pipeline_pcm(audio, 24000))
    assert len(x) == RATE  # a loud tone to the end: nothing is trimmed
    assert band_db(x[800:-800], RATE, (5900, 6100), (900, 1100)) < -60
    picked = audio[np.arange(RATE) * 3 // 2]  # what dropping samples would do
    assert band_db(picked, RATE, (5900, 6100), (900, 1100)) > -10


def test_speech_has_no_aliased_hiss_next_to_nyquist(voice: HibariVoice) -> None:
    """hibari speaks up to 12 kHz; at 16 kHz, 7-8 kHz holds only what was there before."""
    assert band_db(samples(voice.synthesize(HELLO, 1.0)), RATE, (7000, 8000)) < NEAR_NYQUIST
    # The threshold tells a filter from a naive 24 -> 16 kHz conversion of the same speech:
    raw = hibari.Hibari()(HELLO, seed=1).astype(np.float64)
    at = np.arange(len(raw) * 2 // 3) * 1.5
    for naive in (raw[at.astype(int)], np.interp(at, np.arange(len(raw)), raw)):
        assert band_db(naive, RATE, (7000, 8000)) > NEAR_NYQUIST


def test_an_unknown_voice_is_a_one_line_error_naming_the_setting() -> None:
    with pytest.raises(ValueError, match=r"voicebot\.tts\.voice") as error:
        HibariVoice.load("nosuchvoice")
    message = str(error.value)
    assert "\n" not in message
    assert "'nosuchvoice'" in message and "available offline: heart" in message


def test_a_voice_not_on_this_host_is_an_error_not_a_download(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def download(*args: object) -> str:
        raise AssertionError("hibari tried to download a voice")

    monkeypatch.setenv("HIBARI_HOME", str(tmp_path))
    monkeypatch.setattr(hibari.voices, "download", download)
    assert "emma" in hibari.voices.VOICES  # a real voice, just not in the wheel
    with pytest.raises(ValueError, match=r"voicebot\.tts\.voice") as error:
        HibariVoice.load("emma")
    message = str(error.value)
    assert "\n" not in message
    assert "'emma'" in message and str(tmp_path) in message and "offline: heart" in message
    assert list(tmp_path.iterdir()) == []
    (tmp_path / hibari.voices.VOICES["emma"]["file"]).touch()  # as if copied by hand
    assert offline_voices() == ["heart", "emma"]


async def test_four_threads_synthesize_at_once(voice: HibariVoice) -> None:
    expected = [len(voice.synthesize(text, 1.0)) for text in SENTENCES]
    start = threading.Barrier(len(SENTENCES))
    lengths: dict[int, list[int]] = {}

    def speak(index: int) -> None:
        start.wait()  # all four in hibari at the same moment
        lengths[index] = [len(voice.synthesize(SENTENCES[(index + k) % len(SENTENCES)], 1.0))
                          for k in range(len(SENTENCES))]

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for index in range(len(SENTENCES)):
                nursery.start_soon(trio.to_thread.run_sync, speak, index)
    for index, got in lengths.items():
        assert got == [expected[(index + k) % len(SENTENCES)] for k in range(len(SENTENCES))]
    assert len(lengths) == len(SENTENCES)


async def test_the_tts_service_speaks_in_a_pipeline(voice: HibariVoice) -> None:
    observed: list[tuple[str, float]] = []
    frames = await run_frames(
        lambda offload: [HibariTTSService(voice=voice, offload=offload,
                                          observe=lambda name, s: observed.append((name, s)))],
        [TTSSpeakFrame(HELLO)], (TTSStartedFrame, TTSAudioRawFrame, TTSStoppedFrame))
    audio = [f for f in frames if isinstance(f, TTSAudioRawFrame)]
    assert audio, frames
    assert {(f.sample_rate, f.num_channels) for f in audio} == {(RATE, 1)}
    assert 0.5 < sum(len(f.audio) for f in audio) / 2 / RATE < 3.0
    assert isinstance(frames[0], TTSStartedFrame) and isinstance(frames[-1], TTSStoppedFrame)
    assert [name for name, _ in observed] == ["tts"]
