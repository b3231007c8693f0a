"""A speech corpus for the recogniser: a salon's callers, in voices other than the bot's own.

What a caller says to the bot of a hair salon (knowledge questions, messages with names and
phone numbers, small talk, a farewell), the knowledge that answers the questions, and the
audio of each line as the caller's phone would send it: 8 kHz mono G.711 µ-law, with silence
before (the bot greets) and after (the bot hears the caller stop). The voices are Debian
synthesisers that the bot never speaks with (festival, flite, espeak-ng) and a person reading
Dickens. Also the scorer: `normalize` and `word_error_rate` (jiwer).

Used by tests/unit/test_speech_corpus.py, tests/integration/test_speech_corpus.py and
scripts/bench-voicebot. Audio files are cached by content in the directory given.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import jiwer
import numpy as np
from num2words import num2words

from voicedashd.media.g711 import PCMU

Kind = Literal["question", "message", "small_talk", "farewell"]
KINDS: tuple[Kind, ...] = ("question", "message", "small_talk", "farewell")
SAMPLE_RATE = 8000
WIDE = 16000  # the wideband clips' rate (what a G.722 phone carries)
LEAD = 2.5  # seconds of silence before the caller speaks: the bot's greeting
TAIL = 1.5  # seconds of silence after: the bot hears the caller stop and answers
TOOL_TIMEOUT = 60  # seconds any one synthesiser or sox run may take

KNOWLEDGE = """\
# Bella Hair Salon

## Opening hours

We are open Monday to Friday from 9 in the morning to 6 in the evening.
On Saturday we are open from 10 in the morning to 2 in the afternoon.
We are closed on Sundays and public holidays.

## Prices

A haircut costs 25 pounds, and 15 pounds for children under 12.
A beard trim costs 10 pounds.
A wash and blow dry costs 20 pounds.

## Location

Our address is 12 High Street, next to the post office.
You can park your car for free behind the salon.
The bus stops right outside the door.

## Appointments

You can book an appointment by phone during our opening hours, or at the front desk.
If you want an appointment for today, call us in the morning: we often have free places on
the same day.
If you cannot come, please tell us one day before.
"""


@dataclass(frozen=True, slots=True)
class Line:
    """One thing a caller says; a question names the knowledge section that answers it."""

    text: str
    kind: Kind
    passage: str | None = None


# No words with US/UK spelling variants (colour, dialled, cancelled): a recogniser's choice of
# spelling is not an error. Phone numbers are spoken digit by digit, as callers give them.
LONG_MESSAGE = Line(
    "Hello, this is Linda Green calling about my daughter Emma. She would like a haircut next "
    "week for a school party, and she can only come after three in the afternoon on Wednesday "
    "or Thursday. If that works for you, please call me back on five five five, nine two four "
    "six, or send me a text message on the same number.", "message")
FAREWELL = Line("Okay, thanks, goodbye.", "farewell")
CORPUS: tuple[Line, ...] = (
    Line("Hello, what are your opening hours?", "question", "Opening hours"),
    Line("Are you open on Saturday?", "question", "Opening hours"),
    Line("Are you open on Sundays?", "question", "Opening hours"),
    Line("What time do you close on Friday?", "question", "Opening hours"),
    Line("How much does a haircut cost?", "question", "Prices"),
    Line("How much is a beard trim?", "question", "Prices"),
    Line("What is your address?", "question", "Location"),
    Line("Where can I park my car?", "question", "Location"),
    Line("How can I book an appointment?", "question", "Appointments"),
    Line("Can I get an appointment for today?", "question", "Appointments"),
    Line("Hi, this is Maria, please call me back on five five five, one two three four.",
         "message"),
    Line("My name is David Miller, my number is five five five, two nine eight seven.",
         "message"),
    Line("This is Anna from the flower shop, can you call me back on five five five, four four "
         "zero one?", "message"),
    Line("Hello, it is Peter, I have to move my appointment on Tuesday, my number is five five "
         "five, six seven one two.", "message"),
    Line("This is Laura, I left my umbrella in the salon yesterday, please call me on five five "
         "five, three zero three zero.", "message"),
    Line("Hi, James here, please ask Emma to call me back, my number is five five five, eight "
         "one six two.", "message"),
    LONG_MESSAGE,
    Line("Hello, is this the hair salon?", "small_talk"),
    Line("Good morning, how are you today?", "small_talk"),
    Line("Sorry, I did not hear that, can you say it again?", "small_talk"),
    Line("Oh, that is great, thank you very much.", "small_talk"),
    Line("The weather is lovely today, isn't it?", "small_talk"),
    Line("Let me just find a pen and some paper.", "small_talk"),
    FAREWELL,
)


# -- knowledge ----------------------------------------------------------------------------------

_HEADING = re.compile(r"^##\s+(.+?)\s*$", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?:])\s+")


def knowledge_sections() -> dict[str, list[str]]:
    """Each `##` section of KNOWLEDGE by title, as its sentences."""
    parts = _HEADING.split(KNOWLEDGE)
    return {title: [s for s in _SENTENCE_END.split(" ".join(body.split())) if s]
            for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def answer_from(section: str, answer: str) -> bool:
    """Whether the bot's answer says (at least) one sentence of a knowledge section.

    The bot reads retrieved sentences out one at a time, so the answer is compared with each
    sentence, both normalised; a sentence spoken in part (TTS split it) counts when it is at
    least four words long.
    """
    said = f" {normalize(answer)} "
    for sentence in knowledge_sections()[section]:
        words = normalize(sentence)
        if f" {words} " in said or (len(said.split()) >= 4 and said in f" {words} "):
            return True
    return False


# -- voices -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Voice:
    """A Debian synthesiser voice: its command ({text}, {text_file}, {wav} filled in)."""

    command: tuple[str, ...]
    package: str
    default: bool  # in the corpus the acceptance test runs

    def synthesise(self, text: str, wav: Path) -> None:
        """Say text into a WAV file."""
        program = shutil.which(self.command[0])
        if program is None:
            raise AssertionError(f"{self.command[0]} not found: install the Debian package "
                                 f"{self.package} (scripts/test does)")
        text_file = wav.with_suffix(".txt")
        text_file.write_text(text + "\n")
        argv = [program, *(part.format(text=text, text_file=text_file, wav=wav)
                           for part in self.command[1:])]
        subprocess.run(argv, check=True, capture_output=True, timeout=TOOL_TIMEOUT)


def _flite(voice: str) -> Voice:
    return Voice(("flite", "-voice", voice, "-t", "{text}", "-o", "{wav}"), "flite",
                 default=voice in ("kal", "awb", "rms"))


def _espeak(voice: str) -> Voice:
    return Voice(("espeak-ng", "-v", voice, "-w", "{wav}", "{text}"), "espeak-ng", default=False)


VOICES: dict[str, Voice] = {
    # CMU ARCTIC SLT, an HTS (statistical parametric) voice: the most natural of these.
    "festival-slt-hts": Voice(("text2wave", "-eval", "(voice_cmu_us_slt_arctic_hts)",
                               "-o", "{wav}", "{text_file}"),
                              "festival festvox-us-slt-hts", default=True),
    "flite-kal": _flite("kal"),  # US male diphone voice, 8 kHz
    "flite-awb": _flite("awb"),  # Scottish English male (CMU ARCTIC)
    "flite-rms": _flite("rms"),  # US male (CMU ARCTIC)
    "flite-slt": _flite("slt"),  # US female (CMU ARCTIC)
    "espeak-en-us+m3": _espeak("en-us+m3"),  # formant synthesis, close to the bot's espeak
    "espeak-en-gb+f2": _espeak("en-gb+f2"),
}
DEFAULT_VOICES: tuple[str, ...] = tuple(name for name, voice in VOICES.items() if voice.default)


# -- human speech -------------------------------------------------------------------------------

# two_cities.wav from the moonshine-voice wheel (github.com/moonshine-ai/moonshine,
# test-assets/two_cities.wav, same bytes): a person reading the opening of A Tale of Two
# Cities, 44 s, 48 kHz mono. The Moonshine tests name it "first_pete_wav_path" beside a separate
# two_cities_librivox_48k.wav "other speaker": it is Pete Warden (Moonshine AI) reading, not a
# LibriVox recording. It is distributed under the repository's MIT licence (its LICENSE covers
# everything but core/third-party and non-English models); the text is Dickens, public domain.
TWO_CITIES_ASSET = "moonshine_voice/assets/two_cities.wav"


@dataclass(frozen=True, slots=True)
class HumanClip:
    """One sentence of the two_cities.wav reading: where it is, and the words read."""

    name: str
    start: float
    end: float
    text: str

    @property
    def seconds(self) -> float:
        """Length of the cut, silence at its edges included."""
        return self.end - self.start


# Cut in the reader's pauses (found with faster-whisper word timestamps, checked against the
# level of every 50 ms and by transcribing each cut alone); the texts are the Project Gutenberg
# text of what is read, which the reader follows word for word.
_HUMAN_CLIPS = (
    HumanClip("best-of-times", 0.90, 4.80,
              "It was the best of times, it was the worst of times,"),
    HumanClip("age-of-wisdom", 4.80, 8.50,
              "it was the age of wisdom, it was the age of foolishness,"),
    HumanClip("epoch-of-belief", 8.50, 13.00,
              "it was the epoch of belief, it was the epoch of incredulity,"),
    HumanClip("season-of-light", 13.10, 16.90,
              "it was the season of Light, it was the season of Darkness,"),
    HumanClip("spring-of-hope", 16.90, 20.80,
              "it was the spring of hope, it was the winter of despair,"),
    HumanClip("everything-before-us", 20.80, 24.40,
              "we had everything before us, we had nothing before us,"),
    HumanClip("direct-to-heaven", 24.40, 28.60,
              "we were all going direct to Heaven, we were all going direct the other way--"),
    HumanClip("in-short", 28.60, 32.55,
              "in short, the period was so far like the present period,"),
    HumanClip("noisiest-authorities", 32.55, 36.80,
              "that some of its noisiest authorities insisted on its being received,"),
    HumanClip("superlative-degree", 36.80, 41.90,
              "for good or for evil, in the superlative degree of comparison only."),
)


def human_clips() -> tuple[HumanClip, ...]:
    """The sentences of the human recording, with their reference texts."""
    return _HUMAN_CLIPS


def two_cities_wav() -> Path:
    """Where the moonshine-voice wheel keeps two_cities.wav (its package is never imported)."""
    try:
        distribution = importlib.metadata.distribution("moonshine-voice")
    except importlib.metadata.PackageNotFoundError:
        raise AssertionError("moonshine-voice is not installed: pip install -e '.[test]'"
                             ) from None
    path = Path(str(distribution.locate_file(TWO_CITIES_ASSET)))
    if not path.is_file():
        raise AssertionError(f"{path} is missing: reinstall moonshine-voice==0.0.73")
    return path


# -- audio files --------------------------------------------------------------------------------

def make_clip(voice: str, text: str, directory: Path, *, lead: float = LEAD,
              tail: float = TAIL) -> Path:
    """A voice says text: 8 kHz µ-law raw with lead/tail seconds of silence (cached)."""
    spec = VOICES[voice]
    target = directory / f"{voice}-{_digest(voice, spec.command, text, lead, tail)}.ul"
    if not target.exists():
        with _scratch(directory) as scratch:
            wav = scratch / "speech.wav"
            spec.synthesise(text, wav)
            _to_ulaw([str(wav)], target, scratch, lead=lead, tail=tail)
    return target


def make_wideband_clip(voice: str, text: str, directory: Path, *, lead: float = LEAD,
                       tail: float = TAIL) -> Path:
    """make_clip's audio, from the same synthesis, as 16 kHz 16-bit raw (a G.722 caller's)."""
    spec = VOICES[voice]
    target = directory / f"{voice}-{_digest(voice, spec.command, text, lead, tail, WIDE)}.s16"
    if not target.exists():
        with _scratch(directory) as scratch:
            wav = scratch / "speech.wav"
            spec.synthesise(text, wav)
            _to_raw([str(wav)], target, scratch, lead=lead, tail=tail, rate=WIDE,
                    encoding=("-e", "signed", "-b", "16"))
    return target


def cut_wideband_clip(clip: HumanClip, directory: Path, *, lead: float = LEAD,
                      tail: float = TAIL) -> Path:
    """cut_clip's sentence as 16 kHz 16-bit raw (a G.722 caller's)."""
    source = two_cities_wav()
    target = directory / f"human-{clip.name}-{_digest(clip, lead, tail, WIDE)}.s16"
    if not target.exists():
        with _scratch(directory) as scratch:
            _to_raw([str(source)], target, scratch, lead=lead, tail=tail, rate=WIDE,
                    encoding=("-e", "signed", "-b", "16"),
                    effects=("trim", f"{clip.start}", f"={clip.end}"))
    return target


def cut_clip(clip: HumanClip, directory: Path, *, lead: float = LEAD,
             tail: float = TAIL) -> Path:
    """A sentence of the human recording as 8 kHz µ-law raw with lead/tail silence (cached)."""
    source = two_cities_wav()
    target = directory / f"human-{clip.name}-{_digest(clip, lead, tail)}.ul"
    if not target.exists():
        with _scratch(directory) as scratch:
            _to_ulaw([str(source)], target, scratch, lead=lead, tail=tail,
                     effects=("trim", f"{clip.start}", f"={clip.end}"))
    return target


def noise_clip(directory: Path, seconds: float = 30.0, *, level: float = -50.0,
               hum: float = -60.0) -> Path:
    """A quiet line: pink noise at `level` dBFS RMS plus 50 Hz hum at `hum` dBFS, µ-law raw."""
    target = directory / f"noise-{_digest(seconds, level, hum)}.ul"
    if not target.exists():
        samples = int(seconds * SAMPLE_RATE)
        rng = np.random.default_rng(4733)  # the same noise every time
        spectrum = np.fft.rfft(rng.standard_normal(samples))
        frequencies = np.fft.rfftfreq(samples, 1 / SAMPLE_RATE)
        spectrum[1:] /= np.sqrt(frequencies[1:])  # 1/f power: pink
        spectrum[0] = 0
        pink = np.fft.irfft(spectrum, samples)
        pink *= _rms_amplitude(level) / np.sqrt(np.mean(pink ** 2))
        t = np.arange(samples) / SAMPLE_RATE
        mains = np.sqrt(2) * _rms_amplitude(hum) * np.sin(2 * np.pi * 50 * t)
        pcm = np.clip(np.round(pink + mains), -32768, 32767).astype(np.int16)
        _write_atomically(target, PCMU.encode(pcm))
    return target


def noise_then_silence(directory: Path, noise: float = 30.0, silence: float = 5.0) -> Path:
    """One file for sipp's rtp_stream: `noise` seconds of noise_clip, then µ-law silence."""
    target = directory / f"noise-then-silence-{_digest(noise, silence)}.ul"
    if not target.exists():
        audio = noise_clip(directory, noise).read_bytes()
        _write_atomically(target, audio + PCMU.silence_frame(int(silence * SAMPLE_RATE)))
    return target


def clip_seconds(path: Path) -> float:
    """Length of a µ-law raw file."""
    return path.stat().st_size / SAMPLE_RATE


def _rms_amplitude(dbfs: float) -> float:
    return 32768 * 10 ** (dbfs / 20)


def _to_ulaw(inputs: Sequence[str], target: Path, scratch: Path, *, lead: float, tail: float,
             effects: Sequence[str] = ()) -> None:
    """sox: input(s) -> 8 kHz mono µ-law raw, peak-normalised to -3 dBFS, silence padded."""
    _to_raw(inputs, target, scratch, lead=lead, tail=tail, effects=effects)


def _to_raw(inputs: Sequence[str], target: Path, scratch: Path, *, lead: float, tail: float,
            effects: Sequence[str] = (), rate: int = SAMPLE_RATE,
            encoding: Sequence[str] = ("-e", "u-law")) -> None:
    """sox: input(s) -> mono raw at rate, peak-normalised to -3 dBFS, silence padded."""
    sox = shutil.which("sox")
    if sox is None:
        raise AssertionError("sox not found: install the Debian package sox (scripts/test does)")
    partial = scratch / "clip.raw"
    # No dither (-D), and the padding last, so that silence is digital silence (0xFF).
    subprocess.run([sox, "-D", *inputs, "-r", str(rate), "-c", "1", *encoding,
                    "-t", "raw", str(partial), *effects, "channels", "1", "rate", str(rate),
                    "norm", "-3", "pad", str(lead), str(tail)],
                   check=True, capture_output=True, timeout=TOOL_TIMEOUT)
    os.replace(partial, target)


@contextmanager
def _scratch(directory: Path) -> Iterator[Path]:
    """A temporary directory inside `directory` (so the final rename stays on one disk)."""
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".scratch-") as name:
        yield Path(name)


def _write_atomically(target: Path, data: bytes) -> None:
    with _scratch(target.parent) as scratch:
        partial = scratch / target.name
        partial.write_bytes(data)
        os.replace(partial, target)


def _digest(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


# -- scoring ------------------------------------------------------------------------------------

_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_TENS = "twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety"
# Spellings that differ with no difference in what was said (words, then two-word phrases).
SPELLINGS = {"ok": "okay", "mr": "mister", "mrs": "missus", "alright": "all right"}
PHRASES = {"hair cut": "haircut", "good bye": "goodbye"}


def normalize(text: str) -> str:
    """Text as words to compare, the idea of Whisper's English normaliser kept small.

    Lower case; "£25" is "25 pounds"; "9:30" is "9 30"; digits between - . , or / are
    separate groups ("555-1234" is "555 1234"); "twenty-five" is "twenty five", other
    hyphenated words are joined ("good-bye" is "goodbye", "to-day" is "today"); a group of
    three or more digits, or one starting with 0, is read digit by digit ("555" is "five five
    five"), other numbers as words ("10" is "ten"); punctuation is dropped (apostrophes inside
    words stay); then SPELLINGS and PHRASES.
    """
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    text = re.sub(r"£\s?(\d+)", r"\1 pounds", text)
    text = re.sub(r"\$\s?(\d+)", r"\1 dollars", text)
    text = re.sub(r"\b(\d{1,2}):(00|\d{2})\b",
                  lambda m: m.group(1) if m.group(2) == "00" else f"{m.group(1)} {m.group(2)}",
                  text)
    text = re.sub(r"(?<=\d)[-.,/](?=\d)", " ", text)
    text = re.sub(rf"\b({_TENS})-(?=[a-z])", r"\1 ", text)
    text = re.sub(r"(?<=[a-z])-(?=[a-z])", "", text)
    text = re.sub(r"(?<=\d)(?=[a-z])|(?<=[a-z])(?=\d)", " ", text)
    text = re.sub(r"\d+", _say_number, text)
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    words = " ".join(SPELLINGS.get(word, word) for word in text.split())
    for phrase, spelling in PHRASES.items():
        words = re.sub(rf"\b{phrase}\b", spelling, words)
    return words


def _say_number(match: re.Match[str]) -> str:
    digits = match.group(0)
    if len(digits) >= 3 or digits.startswith("0"):
        return " " + " ".join(_DIGIT_NAMES[int(d)] for d in digits) + " "
    return " " + str(num2words(int(digits))).replace("-", " ") + " "


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word error rate of a hypothesis against a reference, both normalised (empty: 1.0)."""
    expected, heard = normalize(reference), normalize(hypothesis)
    if not expected:
        raise ValueError("the reference has no words")
    if not heard:
        return 1.0
    return float(jiwer.wer(expected, heard))
