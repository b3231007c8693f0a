"""Offline speech recognition with PocketSphinx, its language model built from the knowledge.

PocketSphinx's general English model turns espeak's "what are your opening hours" into
"what are the odds". Callers ask about what the knowledge folder covers, so each knowledge
base gets its own vocabulary (the knowledge words plus common caller phrasing, with
pronunciations from the bundled CMU dictionary) and a trigram model over its sentences. The
acoustic model is the bundled wideband en-us one, and telephone audio (8 kHz, upsampled to
16 kHz) leaves its filters above 4 kHz with no energy at all, which the model never saw: a
faint high-passed noise fills that band (with it, most of
espeak's test questions come out right over G.711; without it, hardly any do).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock

import numpy as np
import pocketsphinx
import structlog

from .lm import build_arpa

log = structlog.get_logger(__name__)

SAMPLE_RATE = 16000
LANGUAGE_WEIGHT = 10.0
FRAME_BYTES = 320  # 10 ms at 16 kHz
MARGIN_FRAMES = 15  # 150 ms of quiet kept around speech
QUIET_FLOOR = 50.0
QUIET_RATIO = 0.05
BAND_FILL_RMS = 60.0  # 16-bit sample units; speech is ~3000
MAX_IDLE_DECODERS = 8
_VARIANT = re.compile(r"\(\d+\)$")

# How callers phrase things, whatever the knowledge is about: kept in every vocabulary so a
# question's frame ("what time do you ...") is as likely as the knowledge's own words.
CALLER_PHRASES = """
hello
hi
hi there
good morning
good afternoon
good evening
yes
yes please
no
no thank you
thank you
thanks
okay
that's all
bye
goodbye
thank you goodbye
can you help me
i have a question
i would like to know
i would like to
i want to
can i
can you tell me
could you tell me
what are your
what is your
what is the
what are the
what time do you open
what time do you close
when are you open
when do you open
when do you close
are you open on
are you open today
are you open tomorrow
do you have
do you do
do you offer
do you sell
is there
is it possible to
how much is
how much does it cost
how much does a
how much do you charge for
how long does it take
how do i
how can i
where are you
where is the
where can i
who can i talk to
can i speak to someone
can i book an appointment
i would like to make an appointment
i would like to leave a message
please call me back
my name is
my number is
""".strip().splitlines()


@dataclass(frozen=True, slots=True)
class SpeechVocabulary:
    """What one recogniser can hear: pronunciations, a language model, words left out."""

    dictionary: str
    arpa: str
    words: int
    missing: tuple[str, ...]


def _dictionary_path() -> Path:
    return Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"


def _acoustic_model() -> str:
    return str(Path(pocketsphinx.get_model_path()) / "en-us" / "en-us")


def build_vocabulary(sentences: Iterable[list[str]]) -> SpeechVocabulary:
    """Vocabulary and trigram model of the given spoken sentences plus common caller phrasing.

    Words the CMU dictionary lacks cannot be recognised; a sentence is split where one
    occurs so no n-gram spans the gap.
    """
    corpus = [line.split() for line in CALLER_PHRASES]
    corpus += [s for s in sentences if s]
    wanted = {w for s in corpus for w in s}
    pronunciations: dict[str, list[str]] = {}
    with _dictionary_path().open(encoding="utf-8") as lines:
        for line in lines:
            word, _, phones = line.partition(" ")
            base = _VARIANT.sub("", word)
            if base in wanted:
                phones = phones.split("#", 1)[0].strip()
                pronunciations.setdefault(base, []).append(f"{word} {phones}")
    missing = sorted(wanted - pronunciations.keys())
    segments: list[list[str]] = []
    for sentence in corpus:
        segment: list[str] = []
        for word in sentence:
            if word in pronunciations:
                segment.append(word)
            elif segment:
                segments.append(segment)
                segment = []
        if segment:
            segments.append(segment)
    dictionary = "\n".join(e for w in sorted(pronunciations) for e in pronunciations[w])
    return SpeechVocabulary(dictionary=dictionary + "\n", arpa=build_arpa(segments),
                            words=len(pronunciations), missing=tuple(missing))


@dataclass(eq=False)
class SphinxModel:
    """One vocabulary's model files and a pool of decoders using them (shared by calls).

    A decoder holds the acoustic model (~6 MB); decoders are made on demand, handed to one
    call at a time and kept for the next call, so the model loads at most once per concurrent
    call over the life of the process, never per call.
    """

    vocabulary: SpeechVocabulary
    _dir: tempfile.TemporaryDirectory[str] = field(
        default_factory=lambda: tempfile.TemporaryDirectory(prefix="voicedashd-sphinx-"))
    _idle: list[pocketsphinx.Decoder] = field(default_factory=list)
    _lock: Lock = field(default_factory=Lock)
    _initial_cmn: str = ""

    def __post_init__(self) -> None:
        folder = Path(self._dir.name)
        (folder / "words.dict").write_text(self.vocabulary.dictionary, encoding="utf-8")
        (folder / "model.arpa").write_text(self.vocabulary.arpa, encoding="utf-8")
        first = self._new_decoder()  # also proves the files load, at index time
        self._initial_cmn = first.get_cmn()
        self._idle.append(first)

    def _new_decoder(self) -> pocketsphinx.Decoder:
        folder = Path(self._dir.name)
        # fwdflat (a second search pass) costs twice the CPU and did not change a result.
        return pocketsphinx.Decoder(hmm=_acoustic_model(), dict=str(folder / "words.dict"),
                                    lm=str(folder / "model.arpa"), lw=LANGUAGE_WEIGHT,
                                    fwdflat=False, loglevel="FATAL")

    def acquire(self) -> Recognizer:
        """A recogniser for one call (blocking: may load a decoder; run in a worker thread).

        A reused decoder starts from the initial cepstral mean, not the last caller's.
        """
        with self._lock:
            decoder = self._idle.pop() if self._idle else None
        if decoder is None:
            decoder = self._new_decoder()
        decoder.set_cmn(self._initial_cmn)
        return Recognizer(self, decoder)

    def release(self, recognizer: Recognizer) -> None:
        """Take a call's decoder back for the next call."""
        with self._lock:
            if len(self._idle) < MAX_IDLE_DECODERS:
                self._idle.append(recognizer.decoder)

    def close(self) -> None:
        """Drop idle decoders and remove the model files."""
        with self._lock:
            self._idle.clear()
        self._dir.cleanup()


@dataclass(eq=False)
class Recognizer:
    """One call's decoder, fed an utterance as it is spoken: guesses on the way, then a final.

    Only the speech and MARGIN seconds of quiet around it are decoded: quiet the VAD's
    pre-roll or its stop delay adds is trimmed (frames quieter than QUIET_RATIO of the
    utterance's loudest, or than QUIET_FLOOR, count as quiet); a quiet stretch inside the
    utterance is held back and decoded only once speech resumes. Methods block for a few
    milliseconds of CPU; run them in a worker thread.
    """

    model: SphinxModel
    decoder: pocketsphinx.Decoder
    _live: bool = False
    _peak: float = 0.0
    _held: bytearray = field(default_factory=bytearray)
    _noise: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))

    def begin(self, preroll: bytes) -> str:
        """Start an utterance with the audio from before the VAD noticed it; a first guess."""
        self.cancel()
        self._peak = 0.0
        levels = _frame_levels(preroll)
        self._peak = max(levels, default=0.0)
        loud = [i for i, level in enumerate(levels) if self._loud(level)]
        first = max(0, loud[0] - MARGIN_FRAMES) if loud else max(0, len(levels) - MARGIN_FRAMES)
        self._held = bytearray(preroll[first * FRAME_BYTES:])
        return self.feed(b"")

    def feed(self, pcm: bytes) -> str:
        """More of the utterance; the best guess so far."""
        self._held += pcm
        levels = _frame_levels(bytes(self._held))
        self._peak = max([self._peak, *levels])
        loud = [i for i, level in enumerate(levels) if self._loud(level)]
        if loud:
            cut = min(len(self._held), (loud[-1] + 1 + MARGIN_FRAMES) * FRAME_BYTES)
            self._decode(bytes(self._held[:cut]))
            del self._held[:cut]
        return self._hypothesis() if self._live else ""

    def finish(self) -> str:
        """End the utterance (dropping its quiet tail); its final transcript, "" if none."""
        self._held.clear()
        if not self._live:
            return ""
        self.decoder.end_utt()
        self._live = False
        return self._hypothesis()

    def cancel(self) -> None:
        """Abandon the utterance in progress, if any."""
        self._held.clear()
        if self._live:
            self.decoder.end_utt()
            self._live = False

    def _loud(self, level: float) -> bool:
        return level > max(QUIET_FLOOR, QUIET_RATIO * self._peak)

    def _decode(self, pcm: bytes) -> None:
        if not pcm:
            return
        if not self._live:
            self.decoder.start_utt()
            self._live = True
        self.decoder.process_raw(self._band_fill(pcm), False, False)

    def _hypothesis(self) -> str:
        hypothesis = self.decoder.hyp()
        return _clean(hypothesis.hypstr) if hypothesis is not None else ""

    def _band_fill(self, pcm: bytes) -> bytes:
        """Add faint noise above ~4 kHz, where 8 kHz telephone audio has none."""
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        noise = self._noise.standard_normal(len(samples) + 4).astype(np.float32)
        noise = np.diff(noise, n=4)  # a 4th difference: gain rises steeply towards 8 kHz
        noise *= BAND_FILL_RMS / max(float(np.sqrt(np.mean(noise**2))), 1e-9)
        return np.clip(samples + noise, -32768, 32767).astype("<i2").tobytes()


def _frame_levels(pcm: bytes) -> list[float]:
    """RMS of each whole 10 ms frame."""
    samples = np.frombuffer(pcm[:len(pcm) - len(pcm) % FRAME_BYTES], dtype="<i2")
    if not len(samples):
        return []
    frames = samples.astype(np.float32).reshape(-1, FRAME_BYTES // 2)
    return np.sqrt(np.mean(frames**2, axis=1)).tolist()


def _clean(text: str) -> str:
    """Drop filler tokens (<sil>, [NOISE], ...) from a hypothesis."""
    return " ".join(w for w in text.split() if not w.startswith(("<", "[", "++")))
