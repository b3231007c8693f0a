"""The speech corpus itself: its scorer, its lines and knowledge, and the audio it makes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from tests.speech_corpus import (
    CORPUS,
    DEFAULT_VOICES,
    FAREWELL,
    KINDS,
    KNOWLEDGE,
    LONG_MESSAGE,
    VOICES,
    answer_from,
    clip_seconds,
    cut_clip,
    human_clips,
    knowledge_sections,
    make_clip,
    noise_clip,
    noise_then_silence,
    normalize,
    word_error_rate,
)
from tests.voice_caller import SILENT_RMS, packet_levels, speech_end
from voicedashd.media.g711 import PCMU
from voicedashd.voicebot.rag import KnowledgeBase, chunk_markdown


@pytest.mark.parametrize(("text", "expected"), [
    ("Okay, thanks, goodbye.", "okay thanks goodbye"),
    ("OK. Thanks, good-bye!", "okay thanks goodbye"),
    ("Good bye", "goodbye"),
    ("I'll see you to-day", "i'll see you today"),
    ("What\u2019s the hair cut price?", "what's the haircut price"),
    ("Call me on 555-1234.", "call me on five five five one two three four"),
    ("Call me on 5551234", "call me on five five five one two three four"),
    ("five five five, one two three four", "five five five one two three four"),
    ("room 07", "room zero seven"),
    ("It costs 10 pounds", "it costs ten pounds"),
    ("It costs £25", "it costs twenty five pounds"),
    ("twenty-five pounds", "twenty five pounds"),
    ("from 9:00 to 18:30", "from nine to eighteen thirty"),
    ("Mr Smith is 3 years old", "mister smith is three years old"),
    ("'Quoted' words -- and dashes", "quoted words and dashes"),
    ("direct the other way--", "direct the other way"),
])
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(("reference", "hypothesis", "expected"), [
    ("Okay, thanks, goodbye.", "ok thanks good-bye", 0.0),
    ("call me back on five five five, one two three four", "Call me back on 555-1234.", 0.0),
    ("A haircut costs twenty five pounds.", "a hair cut costs £25", 0.0),
    ("Are you open on Saturday?", "Are you open on Sunday?", 0.2),  # a wrong word counts
    ("Are you open on Saturday?", "Are you open Saturday?", 0.2),  # so does a missing one
    ("Are you open on Saturday?", "Are you really open on Saturday?", 0.2),  # and an extra one
    ("Are you open on Saturday?", "", 1.0),
    ("Are you open on Saturday?", " ... ", 1.0),
])
def test_word_error_rate(reference: str, hypothesis: str, expected: float) -> None:
    assert word_error_rate(reference, hypothesis) == pytest.approx(expected)


def test_a_reference_without_words_is_refused() -> None:
    with pytest.raises(ValueError, match="no words"):
        word_error_rate("...", "hello")


def test_the_corpus_has_every_kind_of_line() -> None:
    assert len(CORPUS) >= 20
    assert len({line.text for line in CORPUS}) == len(CORPUS)
    assert all(line.kind in KINDS for line in CORPUS)
    counts = {kind: sum(line.kind == kind for line in CORPUS) for kind in KINDS}
    assert counts["question"] >= 8 and counts["message"] >= 6 and counts["small_talk"] >= 5
    assert counts["farewell"] == 1 and FAREWELL in CORPUS
    assert all((line.passage is not None) == (line.kind == "question") for line in CORPUS)
    assert all(normalize(line.text) for line in CORPUS)


def test_questions_name_sections_of_the_knowledge() -> None:
    sections = knowledge_sections()
    assert list(sections) == ["Opening hours", "Prices", "Location", "Appointments"]
    assert all(len(sentences) >= 2 for sentences in sections.values()), sections
    for line in CORPUS:
        if line.passage is not None:
            assert f"## {line.passage}\n" in KNOWLEDGE, line


def test_the_bots_own_retrieval_answers_each_question_from_its_section() -> None:
    """The knowledge is fit for the test: typed questions find their passages (no speech)."""
    base = KnowledgeBase(tuple(chunk_markdown(KNOWLEDGE, "salon.md", "salon")))
    for line in CORPUS:
        if line.passage is not None:
            answer = base.answer(line.text)
            assert answer is not None and answer_from(line.passage, answer), (line, answer)


def test_answer_from_matches_whole_sentences_only() -> None:
    assert answer_from("Prices", "A beard trim costs 10 pounds.")
    assert answer_from("Prices", "A beard trim costs ten pounds")
    assert answer_from("Location", "Our address is 12 High Street,")  # split by the TTS
    assert not answer_from("Prices", "Our address is 12 High Street, next to the post office.")
    assert not answer_from("Prices", "pounds")
    assert not answer_from("Prices", "Sorry, I don't know that.")


def test_the_long_message_is_long_and_says_no_goodbye() -> None:
    assert LONG_MESSAGE.kind == "message" and LONG_MESSAGE in CORPUS
    assert len(normalize(LONG_MESSAGE.text).split()) >= 45  # ≥ 12 s at a brisk 220 words/min
    assert "bye" not in normalize(LONG_MESSAGE.text)


def test_default_voices_are_four_debian_voices_the_bot_does_not_use() -> None:
    assert DEFAULT_VOICES == ("festival-slt-hts", "flite-kal", "flite-awb", "flite-rms")
    assert set(VOICES) >= {"flite-slt", "espeak-en-us+m3", "espeak-en-gb+f2"}


def _speech_seconds(ulaw: bytes) -> float:
    """Seconds from the first to the last loud 20 ms of a µ-law recording."""
    levels = packet_levels([ulaw[i:i + 160] for i in range(0, len(ulaw), 160)])
    loud = [i for i, level in enumerate(levels) if level > SILENT_RMS]
    return (loud[-1] - loud[0] + 1) * 0.02


@pytest.mark.parametrize("voice", DEFAULT_VOICES)
def test_make_clip_speaks_mu_law_with_silence_around(voice: str, tmp_path: Path) -> None:
    path = make_clip(voice, FAREWELL.text, tmp_path, lead=1.0, tail=0.5)
    ulaw = path.read_bytes()
    assert 2.0 < clip_seconds(path) < 5.0, clip_seconds(path)
    assert set(ulaw[:8000]) == {0xFF}  # one second of µ-law silence first
    assert set(ulaw[-4000:]) == {0xFF}  # and half a second last
    assert 0.6 < _speech_seconds(ulaw) < 3.5
    assert speech_end(ulaw) < clip_seconds(path) - 0.4
    made = path.stat().st_mtime_ns
    assert make_clip(voice, FAREWELL.text, tmp_path, lead=1.0, tail=0.5) == path
    assert path.stat().st_mtime_ns == made  # cached, not made again


def test_human_clips_are_sentences_of_two_to_six_seconds(tmp_path: Path) -> None:
    clips = human_clips()
    assert len(clips) >= 6
    assert len({clip.name for clip in clips}) == len(clips)
    assert all(2.0 <= clip.seconds <= 6.0 for clip in clips), clips
    assert all(a.end <= b.start for a, b in itertools.pairwise(clips))
    for clip in clips[:2]:
        path = cut_clip(clip, tmp_path, lead=0.5, tail=0.5)
        ulaw = path.read_bytes()
        assert clip_seconds(path) == pytest.approx(clip.seconds + 1.0, abs=0.01)
        assert 1.5 < _speech_seconds(ulaw) <= clip.seconds


def test_noise_is_quiet_and_then_silence(tmp_path: Path) -> None:
    path = noise_clip(tmp_path, seconds=2.0)
    pcm = PCMU.decode(path.read_bytes()).astype(np.float64)
    assert len(pcm) == 16000
    level = 20 * np.log10(np.sqrt(np.mean(pcm ** 2)) / 32768)
    assert -52 < level < -47, level
    assert max(packet_levels([path.read_bytes()[i:i + 160] for i in range(0, 16000, 160)])) \
        < SILENT_RMS
    both = noise_then_silence(tmp_path, noise=2.0, silence=1.0).read_bytes()
    assert both[:16000] == path.read_bytes() and set(both[16000:]) == {0xFF}
    assert len(both) == 24000
