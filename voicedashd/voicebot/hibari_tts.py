"""Offline neural speech synthesis with hibari (a 7.9 MB ONNX model shipped inside its wheel).

One HibariVoice is loaded per process and shared by every call: onnxruntime sessions may run
from several threads at once, and hibari's G2P keeps no state between calls once its two lazily
built parts (the G2P itself and its out-of-vocabulary net) exist, which load() makes sure of.
So synthesis needs no lock, and calls speaking at the same time do not wait for each other.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import hibari
import numpy as np
import soxr
from hibari.voices import VOICES, voice_path
from pipecat.frames.frames import Frame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

from .host import Observe, Offload
from .sphinx import SAMPLE_RATE

SILENCE = 1e-3  # -60 dBFS: below this the model's output is its noise floor, not speech
MAX_TRAILING_SILENCE = 0.15  # seconds; hibari ends a sentence with ~0.25-0.5 s of quiet
MAX_LEADING_SILENCE = 0.03  # seconds kept before the first sound of a sentence


class HibariVoice:
    """A hibari voice loaded once; synthesizes sentences from any number of worker threads."""

    def __init__(self, tts: hibari.Hibari) -> None:
        self._tts = tts

    @classmethod
    def load(cls, voice: str = "heart", threads: int = 1) -> HibariVoice:
        """Load a voice available offline (blocking: call it from a worker thread)."""
        try:
            path = voice_path(voice, download_missing=False)
        except ValueError:
            raise ValueError(_unavailable(voice, "there is no such hibari voice")) from None
        except FileNotFoundError as missing:
            # A daemon must not reach out to the internet at start-up or mid-call.
            raise ValueError(_unavailable(
                voice, f"its model is not on this host (voices are never downloaded; "
                       f"put it at {missing})")) from None
        tts = hibari.Hibari(voice=voice, model=path, threads=threads)
        # Both are built on first use: build them now so threads never race to build them
        # twice, and the first call does not pay for loading the lexicons.
        tts.g2p.oov  # noqa: B018
        tts("Ready.")  # the first inference run sizes onnxruntime's buffers
        return cls(tts)

    @property
    def name(self) -> str:
        """The voice's name in hibari's registry."""
        return str(self._tts.voice)

    def synthesize(self, text: str, speed: float) -> bytes:
        """16-bit mono PCM at the pipeline rate of text spoken (speed 1.0 is the natural pace)."""
        # hibari splits text into sentences (and over-long ones at clauses); each is resampled
        # whole and loses its long trailing quiet, so the gaps between them stay natural.
        return b"".join(to_pipeline_pcm(part, hibari.SAMPLE_RATE)
                        for part in self._tts.stream(text, speed) if len(part))


def to_pipeline_pcm(audio: np.ndarray, rate: int) -> bytes:
    """Float audio at rate as 16-bit PCM at the pipeline rate, silence at both ends capped."""
    # soxr's band-limited filter: dropping samples or interpolating would fold hibari's
    # 8-12 kHz fricatives back below 8 kHz as hiss.
    pcm = soxr.resample(np.asarray(audio, np.float32), rate, SAMPLE_RATE, quality="VHQ")
    loud = np.flatnonzero(np.abs(pcm) > SILENCE)
    if not len(loud):
        return b""
    # hibari opens every sentence with ~300 ms of digital silence: the caller would wait for it.
    begin = max(0, int(loud[0]) - int(MAX_LEADING_SILENCE * SAMPLE_RATE))
    end = int(loud[-1]) + 1 + int(MAX_TRAILING_SILENCE * SAMPLE_RATE)
    pcm = pcm[begin:end]
    return np.clip(np.rint(pcm * 32767.0), -32768, 32767).astype("<i2").tobytes()


def offline_voices() -> list[str]:
    """Names of the hibari voices that can be loaded without downloading anything."""
    available = []
    for name in VOICES:
        try:
            voice_path(name, download_missing=False)
        except (ValueError, FileNotFoundError):
            continue
        available.append(name)
    return available


def _unavailable(voice: str, reason: str) -> str:
    return (f"voicebot.tts.voice = {voice!r}: {reason}; voices available offline: "
            f"{', '.join(offline_voices()) or 'none'}")


class HibariTTSService(TTSService):
    """Text to speech with a shared HibariVoice, one sentence at a time in a worker thread."""

    def __init__(self, *, voice: HibariVoice, offload: Offload, observe: Observe,
                 speed: float = 1.0, **kwargs: object) -> None:
        super().__init__(push_start_frame=True, push_stop_frames=True, sample_rate=SAMPLE_RATE,
                         settings=TTSSettings(model="hibari", voice=voice.name, language="en"),
                         **kwargs)  # type: ignore[arg-type]
        self._voice = voice
        self._offload = offload
        self._observe = observe
        self._speed = speed

    def can_generate_metrics(self) -> bool:
        """Pipecat may report TTFB for this service."""
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Synthesise one sentence off the event loop; raises if hibari fails (the call ends)."""
        started = time.monotonic()
        audio = await self._offload(self._voice.synthesize, text, self._speed)
        self._observe("tts", time.monotonic() - started)
        await self.stop_ttfb_metrics()
        if audio:
            yield TTSAudioRawFrame(audio, SAMPLE_RATE, 1, context_id=context_id)
