"""Offline speech: the knowledge language model, PocketSphinx over telephone audio, espeak-ng.

Audio takes the daemon's path: espeak-ng speech -> 8 kHz G.711 µ-law (what a caller sends)
-> decoded and resampled to 16 kHz by the media engine's own codec and resampler.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import numpy as np
import pocketsphinx
import pytest
import trio
import trio_asyncio  # noqa: F401 - before Pipecat, see voicedashd/voicebot/__init__.py
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import InputAudioRawFrame, InterimTranscriptionFrame, TranscriptionFrame
from pipecat.processors.audio.vad_processor import VADProcessor

from tests.pipecat_run import run_frames
from voicedashd.media.g711 import PCMU
from voicedashd.media.resample import Resampler
from voicedashd.voicebot.lm import build_arpa
from voicedashd.voicebot.pipeline import SharedSileroVADAnalyzer, load_vad_model
from voicedashd.voicebot.rag import KnowledgeBase, chunk_markdown
from voicedashd.voicebot.services import PocketsphinxSTTService, parse_wav
from voicedashd.voicebot.sphinx import SphinxModel, build_vocabulary

KNOWLEDGE = """\
# Opening hours

We are open Monday to Friday from 9:00 to 18:00, and on Saturday from 10:00 to 14:00.

# Prices

A haircut costs 25 pounds.
"""


def telephone_audio(text: str, tmp_path: Path) -> bytes:
    """16 kHz 16-bit PCM of espeak-ng saying text, having crossed a G.711 telephone line."""
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    assert espeak and sox, "scripts/test installs espeak-ng and sox"
    wav, ulaw = tmp_path / "said.wav", tmp_path / "said.ul"
    subprocess.run([espeak, "-w", str(wav), text], check=True)
    subprocess.run([sox, "-D", str(wav), "-r", "8000", "-c", "1", "-e", "u-law", "-t", "raw",
                    str(ulaw), "pad", "0.3", "0.4"], check=True)
    pcm8 = PCMU.decode(ulaw.read_bytes())
    resampler = Resampler(8000, 16000)
    chunks = [resampler.process(pcm8[i:i + 160]) for i in range(0, len(pcm8), 160)]
    return np.concatenate([*chunks, resampler.finish()]).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def model() -> SphinxModel:
    base = KnowledgeBase(tuple(chunk_markdown(KNOWLEDGE, "k.md", "k")))
    return SphinxModel(build_vocabulary(base.spoken_sentences()))


def test_the_language_model_is_a_proper_backoff_model() -> None:
    """Every history's continuations, seen ones plus backed-off mass, sum to one."""
    sentences = [s.split() for s in ("what are your opening hours", "what is your address",
                                     "are you open on saturday", "what are your prices")]
    arpa = build_arpa(sentences)
    grams: dict[tuple[str, ...], tuple[float, float]] = {}  # n-gram: (prob, backoff weight)
    order = 0
    for line in arpa.splitlines():
        if section := re.fullmatch(r"\\(\d)-grams:", line):
            order = int(section.group(1))
        elif order and line.strip() and not line.startswith("\\"):
            parts = line.split()
            words = tuple(parts[1:1 + order])
            backoff = float(parts[1 + order]) if len(parts) > 1 + order else 0.0
            grams[words] = (10 ** float(parts[0]), 10 ** backoff)
    vocabulary = [w for (w,) in (g for g in grams if len(g) == 1) if w != "<s>"]

    def prob(history: tuple[str, ...], word: str) -> float:
        if (*history, word) in grams:
            return grams[(*history, word)][0]
        if not history:
            return 0.0
        return grams.get(history, (0.0, 1.0))[1] * prob(history[1:], word)

    histories = {g[:-1] for g in grams if len(g) > 1} | {()}
    assert len(histories) > 10
    for history in histories:
        assert math.isclose(sum(prob(history, w) for w in vocabulary), 1.0, rel_tol=1e-3), history
    counts = {int(n): int(c) for n, c in re.findall(r"ngram (\d)=(\d+)", arpa)}
    by_order: defaultdict[int, int] = defaultdict(int)
    for gram in grams:
        by_order[len(gram)] += 1
    assert counts == dict(by_order)


def test_the_vocabulary_comes_from_the_knowledge_and_the_dictionary() -> None:
    vocabulary = build_vocabulary([["opening", "hours", "zorblaxian"], ["haircut"]])
    words = {line.split()[0] for line in vocabulary.dictionary.splitlines()}
    assert {"opening", "hours", "haircut", "what", "goodbye"} <= words  # caller phrasing too
    assert vocabulary.missing == ("zorblaxian",)
    assert "zorblaxian" not in vocabulary.arpa


def test_the_general_model_mishears_what_the_knowledge_model_gets(
        model: SphinxModel, tmp_path: Path) -> None:
    """The bundled general LM hears no "opening hours"; the knowledge LM does."""
    audio = telephone_audio("what are your opening hours", tmp_path)
    general = pocketsphinx.Decoder(loglevel="FATAL")
    general.start_utt()
    general.process_raw(audio, False, True)
    general.end_utt()
    heard = general.hyp().hypstr if general.hyp() else ""
    assert "opening hours" not in heard, heard

    recognizer = model.acquire()
    try:
        partials = [recognizer.begin(audio[:9600])]
        partials += [recognizer.feed(audio[i:i + 9600]) for i in range(9600, len(audio), 9600)]
        final = recognizer.finish()
    finally:
        model.release(recognizer)
    assert final == "what are your opening hours"
    assert any(partials) and all(p in final or p for p in partials)


def test_decoders_are_pooled_and_start_from_the_initial_cepstral_mean(
        model: SphinxModel) -> None:
    first = model.acquire()
    initial = first.decoder.get_cmn()
    first.decoder.set_cmn("33,-22,10,3,0,0,0,0,0,0,0,0,0")  # as adapted to a previous caller
    model.release(first)
    again = model.acquire()
    assert again.decoder is first.decoder
    assert again.decoder.get_cmn() == initial
    assert again.finish() == ""  # nothing fed, nothing heard
    model.release(again)


def test_quiet_before_and_after_speech_is_not_decoded(model: SphinxModel,
                                                      tmp_path: Path) -> None:
    audio = telephone_audio("what are your opening hours", tmp_path)
    silence = bytes(16000 * 2)  # a second of digital silence either side
    recognizer = model.acquire()
    try:
        recognizer.begin(silence + audio[:3200])
        recognizer.feed(audio[3200:] + silence)
        assert recognizer.finish() == "what are your opening hours"
        recognizer.begin(silence)
        assert recognizer.finish() == ""
    finally:
        model.release(recognizer)


def test_espeak_output_parses_as_16_bit_mono_wav() -> None:
    wav = subprocess.run(["espeak-ng", "--stdout", "hello"], check=True,
                         capture_output=True).stdout
    rate, pcm = parse_wav(wav)
    assert rate == 22050 and len(pcm) > 0.2 * rate * 2 and len(pcm) % 2 == 0
    with pytest.raises(ValueError, match="WAV"):
        parse_wav(b"not a wav stream at all")


async def test_the_stt_service_transcribes_in_a_pipeline(model: SphinxModel,
                                                        tmp_path: Path) -> None:
    """VAD + PocketsphinxSTTService in a real Pipecat pipeline: interim, then final words."""
    audio = telephone_audio("what are your opening hours", tmp_path) + bytes(32000)
    vad_model = await trio.to_thread.run_sync(load_vad_model)
    heard = await run_frames(
        lambda offload: [
            VADProcessor(vad_analyzer=SharedSileroVADAnalyzer(vad_model, VADParams())),
            PocketsphinxSTTService(model=model, offload=offload)],
        [InputAudioRawFrame(audio[i:i + 640], 16000, 1) for i in range(0, len(audio), 640)],
        (InterimTranscriptionFrame, TranscriptionFrame))
    finals = [f.text for f in heard if isinstance(f, TranscriptionFrame)]
    assert finals == ["what are your opening hours"], heard
    assert any(isinstance(f, InterimTranscriptionFrame) for f in heard)
