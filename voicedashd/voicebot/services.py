"""Offline Pipecat services: Whisper and PocketSphinx recognition, espeak-ng synthesis."""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    StartFrame,
    TranscriptionFrame,
    TTSAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings, TTSSettings
from pipecat.services.stt_service import STTService
from pipecat.services.tts_service import TTSService
from pipecat.utils.time import time_now_iso8601

from .echo import EchoReference
from .host import Observe, Offload, RunProcess, TryOffload
from .sphinx import SAMPLE_RATE, Recognizer, SphinxModel
from .whisper import MAX_SECONDS, Transcription, WhisperRecognizer

if TYPE_CHECKING:
    import asyncio  # for a type only: asyncio itself is the bridge's business

INTERIM_EVERY = 0.3  # seconds of speech between interim transcripts
PREROLL = 1.0  # seconds kept from before the VAD noticed speech (it notices ~0.5 s late)
WHISPER_PREROLL = 0.5  # Whisper needs the onset, not a second of the line's noise before it
ESPEAK = "espeak-ng"


class _Utterance:
    """The caller's audio of one turn: a rolling pre-roll, then everything until the stop."""

    def __init__(self, preroll: float) -> None:
        self._preroll: deque[bytes] = deque()
        self._preroll_limit = int(preroll * SAMPLE_RATE * 2)
        self._preroll_bytes = 0
        self.audio = bytearray()
        self.speaking = False

    def add(self, pcm: bytes) -> None:
        """Keep 20 ms of audio: as pre-roll before speech, in the utterance during it."""
        if self.speaking:
            self.audio += pcm
            return
        self._preroll.append(pcm)
        self._preroll_bytes += len(pcm)
        while self._preroll_bytes > self._preroll_limit:
            self._preroll_bytes -= len(self._preroll.popleft())

    def start(self) -> None:
        """Speech began: the utterance opens with the pre-roll."""
        self.speaking = True
        self.audio = bytearray(b"".join(self._preroll))
        self._preroll.clear()
        self._preroll_bytes = 0

    def take(self) -> bytes:
        """The utterance so far, which starts afresh (the caller may still be speaking)."""
        audio, self.audio = bytes(self.audio), bytearray()
        return audio

    @property
    def seconds(self) -> float:
        """Length of the utterance so far."""
        return len(self.audio) / (SAMPLE_RATE * 2)


class WhisperSTTService(STTService):
    """Open-vocabulary recognition of each caller turn with the process-wide Whisper model.

    The turn's audio is kept from the VAD's start (with a short pre-roll) to its stop. While
    the caller speaks, the growing utterance is decoded again in the background every
    INTERIM_EVERY seconds when a speech worker is idle (an interim line; one at a time, so a
    long turn gets fewer of them rather than falling behind), and once more at the stop (the
    final line, which waits for a worker). Audio never waits for a guess. Text the model
    writes for silence, tones or noise is dropped, so such audio gives no transcript, and a
    final is never empty.
    """

    def __init__(self, *, recognizer: WhisperRecognizer, echo: EchoReference,
                 offload: Offload, try_offload: TryOffload, **kwargs: object) -> None:
        super().__init__(audio_passthrough=False, sample_rate=SAMPLE_RATE,
                         ttfs_p99_latency=0.3,
                         settings=STTSettings(model="whisper-tiny.en", language="en"),
                         **kwargs)  # type: ignore[arg-type]
        self._recognizer = recognizer
        self._echo = echo
        self._offload = offload
        self._try_offload = try_offload
        self._utterance = _Utterance(WHISPER_PREROLL)
        self._turn = 0  # counts turns, so a late guess never lands in the next one
        self._guessing: asyncio.Task[None] | None = None
        self._interim_at = 0.0
        self._last_interim = ""

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Take 20 ms of audio; while the caller speaks, start a guess at the words now and then."""
        self._utterance.add(audio)
        if not self._utterance.speaking:
            return
        if self._utterance.seconds >= MAX_SECONDS - 1:  # one turn, several windows
            await self._finish()
            self._utterance.speaking = True  # the caller is still talking
            return
        due = self._utterance.seconds - self._interim_at >= INTERIM_EVERY
        if due and (self._guessing is None or self._guessing.done()):
            self._interim_at = self._utterance.seconds
            self._guessing = self.create_task(
                self._guess(bytes(self._utterance.audio), self._turn), "whisper-interim")
        return
        yield  # an async generator, as Pipecat expects; frames are pushed by the tasks

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Follow the VAD: open an utterance at its start, recognise it at its stop."""
        if isinstance(frame, VADUserStartedSpeakingFrame) and not self._utterance.speaking:
            self._utterance.start()
            self._interim_at = 0.0
            self._last_interim = ""
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame) and self._utterance.speaking:
            await self._finish()

    async def stop(self, frame: EndFrame) -> None:
        """No guess outlives the pipeline."""
        await self._stop_guessing()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        """No guess outlives the pipeline."""
        await self._stop_guessing()
        await super().cancel(frame)

    def _hear(self, audio: bytes, end: float, final: bool) -> Transcription | None:
        """The caller's words in a turn (worker thread); None when it is the bot's echo."""
        if self._echo.is_echo(audio, end):
            return None
        return self._recognizer.transcribe(audio, final=final)

    async def _guess(self, audio: bytes, turn: int) -> None:
        heard = await self._try_offload(self._hear, audio, time.monotonic(), False)
        if (not heard or turn != self._turn or not heard.is_speech()
                or heard.text == self._last_interim):
            return
        self._last_interim = heard.text
        await self.push_frame(InterimTranscriptionFrame(heard.text, "", time_now_iso8601()))

    async def _finish(self) -> None:
        # A guess still running is left to finish on its worker and is then ignored: the
        # final is decoded on another one meanwhile.
        self._turn += 1
        self._utterance.speaking = False
        heard = await self._offload(self._hear, self._utterance.take(), time.monotonic(), True)
        if heard is not None and heard.is_speech():
            await self.push_frame(
                TranscriptionFrame(heard.text, "", time_now_iso8601(), finalized=True))

    async def _stop_guessing(self) -> None:
        guessing, self._guessing = self._guessing, None
        if guessing is not None and not guessing.done():
            await self.cancel_task(guessing)


class PocketsphinxSTTService(STTService):
    """Speech to text with PocketSphinx and a knowledge-specific language model.

    Decodes while the caller speaks (between the VAD's start and stop), pushing interim
    transcripts every INTERIM_EVERY seconds of speech and a final one when the VAD says the
    caller stopped. Decoding runs in a worker thread; the decoder is borrowed from the
    model's pool for the call.
    """

    def __init__(self, *, model: SphinxModel, offload: Offload, **kwargs: object) -> None:
        # The final transcript follows the VAD's stop within milliseconds (decoded live).
        super().__init__(audio_passthrough=False, sample_rate=SAMPLE_RATE,
                         ttfs_p99_latency=0.05,
                         settings=STTSettings(model="pocketsphinx-en-us", language="en"),
                         **kwargs)  # type: ignore[arg-type]
        self._model = model
        self._offload = offload
        self._recognizer: Recognizer | None = None
        self._speaking = False
        self._preroll: deque[bytes] = deque()
        self._preroll_bytes = 0
        self._pending = bytearray()
        self._utterance_started = False
        self._last_interim = ""

    async def start(self, frame: StartFrame) -> None:
        """Borrow a decoder for the call."""
        await super().start(frame)
        if self._recognizer is None:
            self._recognizer = await self._offload(self._model.acquire)

    async def stop(self, frame: EndFrame) -> None:
        """Give the decoder back."""
        await super().stop(frame)
        self._release()

    async def cancel(self, frame: CancelFrame) -> None:
        """Give the decoder back."""
        await super().cancel(frame)
        self._release()

    async def cleanup(self) -> None:
        """Give the decoder back (if stop/cancel did not)."""
        await super().cleanup()
        self._release()

    def _release(self) -> None:
        recognizer, self._recognizer = self._recognizer, None
        if recognizer is not None:
            recognizer.cancel()
            self._model.release(recognizer)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Take 20 ms of audio: remember it (before speech) or decode it (during speech)."""
        if not self._speaking:
            self._preroll.append(audio)
            self._preroll_bytes += len(audio)
            while self._preroll_bytes > PREROLL * SAMPLE_RATE * 2:
                self._preroll_bytes -= len(self._preroll.popleft())
            return
        self._pending += audio
        if len(self._pending) >= INTERIM_EVERY * SAMPLE_RATE * 2 and self._recognizer:
            chunk, self._pending = bytes(self._pending), bytearray()
            if self._utterance_started:
                text = await self._offload(self._recognizer.feed, chunk)
            else:
                self._utterance_started = True
                text = await self._offload(self._recognizer.begin, chunk)
            if text and text != self._last_interim:
                self._last_interim = text
                yield InterimTranscriptionFrame(text, "", time_now_iso8601())

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Follow the VAD: start an utterance with the pre-roll, finish it at the stop."""
        if isinstance(frame, VADUserStartedSpeakingFrame) and not self._speaking:
            self._speaking = True
            self._utterance_started = False
            self._pending = bytearray(b"".join(self._preroll))
            self._preroll.clear()
            self._preroll_bytes = 0
            self._last_interim = ""
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStoppedSpeakingFrame) and self._speaking:
            self._speaking = False
            await self._finish_utterance()

    async def _finish_utterance(self) -> None:
        recognizer = self._recognizer
        if recognizer is None:
            return
        rest, self._pending = bytes(self._pending), bytearray()
        text = await self._offload(_finish, recognizer, rest, self._utterance_started)
        if text:
            await self.push_frame(
                TranscriptionFrame(text, "", time_now_iso8601(), finalized=True))


def _finish(recognizer: Recognizer, rest: bytes, started: bool) -> str:
    if started:
        recognizer.feed(rest)
    else:
        recognizer.begin(rest)
    return recognizer.finish()


class EspeakTTSService(TTSService):
    """Text to speech with the espeak-ng command (one short subprocess per sentence)."""

    def __init__(self, *, run_process: RunProcess, observe: Observe, voice: str = "en-us",
                 speed: int = 170, **kwargs: object) -> None:
        super().__init__(push_start_frame=True, push_stop_frames=True,
                         settings=TTSSettings(model="espeak-ng", voice=voice, language="en"),
                         **kwargs)  # type: ignore[arg-type]
        self._run_process = run_process
        self._observe = observe
        self._voice = voice
        self._speed = speed
        self._resampler = create_stream_resampler()

    def can_generate_metrics(self) -> bool:
        """Pipecat may report TTFB for this service."""
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Synthesise one sentence; raises if espeak-ng fails (the call then ends)."""
        started = time.monotonic()
        wav = await self._run_process(
            [ESPEAK, "--stdout", "-v", self._voice, "-s", str(self._speed)],
            text.encode("utf-8"))
        rate, pcm = parse_wav(wav)
        audio = await self._resampler.resample(pcm, rate, self.sample_rate)
        self._observe("tts", time.monotonic() - started)
        await self.stop_ttfb_metrics()
        if audio:
            yield TTSAudioRawFrame(audio, self.sample_rate, 1, context_id=context_id)


def parse_wav(data: bytes) -> tuple[int, bytes]:
    """Sample rate and 16-bit mono PCM of a WAV stream (as espeak-ng --stdout writes it)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("espeak-ng did not write a WAV stream")
    offset, rate = 12, 0
    while offset + 8 <= len(data):
        chunk, size = data[offset:offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        body = offset + 8
        if chunk == b"fmt ":
            channels, rate, bits = (struct.unpack_from("<H", data, body + 2)[0],
                                    struct.unpack_from("<I", data, body + 4)[0],
                                    struct.unpack_from("<H", data, body + 14)[0])
            if channels != 1 or bits != 16:
                raise ValueError(f"expected 16-bit mono WAV, got {bits}-bit x{channels}")
        elif chunk == b"data":
            end = len(data) if size in (0, 0xFFFFFFFF) else min(len(data), body + size)
            pcm = data[body:end]
            return rate, pcm[:len(pcm) - len(pcm) % 2]
        offset = body + size + (size & 1)
    raise ValueError("WAV stream has no data chunk")
