"""Streaming resampling between the RTP clock and the pipeline rate, and per-call settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from voicedashd.config import MediaConfig
from voicedashd.media.resample import Resampler
from voicedashd.media.session import session_settings

UP, DOWN = (8000, 16000), (16000, 8000)
AMPLITUDE = 16000


def tone(rate: int, seconds: float, hz: float = 440.0, amplitude: float = 8000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def stream(resampler: Resampler, pcm: np.ndarray, chunk: float = 0.02) -> np.ndarray:
    """pcm through the resampler in chunks of `chunk` seconds, as RTP and the bot hand it over."""
    size = round(resampler.in_rate * chunk)
    return np.concatenate([resampler.process(pcm[i:i + size]) for i in range(0, len(pcm), size)])


def level_db(samples: np.ndarray, rate: int, hz: float, reference: float = AMPLITUDE) -> float:
    """Amplitude of the hz component, in dB re reference, over 0.5 s past the filter's start.

    The span holds whole cycles of every tone used here, so other tones do not leak into it.
    """
    span = samples[rate // 10: rate // 10 + rate // 2].astype(np.float64)
    t = np.arange(len(span)) / rate
    amplitude = 2 * np.abs(np.dot(span, np.exp(-2j * np.pi * hz * t))) / len(span)
    return float(20 * np.log10(max(amplitude, 1e-12) / reference))


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def purity_db(samples: np.ndarray, rate: int, hz: float = 440.0) -> float:
    """Energy near hz over energy elsewhere: a click at a chunk boundary spreads everywhere."""
    middle = samples[len(samples) // 10: -len(samples) // 10].astype(np.float64)
    power = np.abs(np.fft.rfft(middle * np.blackman(len(middle)))) ** 2
    freqs = np.fft.rfftfreq(len(middle), 1 / rate)
    band = (freqs > hz - 20) & (freqs < hz + 20)
    return float(10 * np.log10(power[band].sum() / power[~band].sum()))


def test_equal_rates_pass_through() -> None:
    pcm = tone(8000, 0.02)
    assert Resampler(8000, 8000).process(pcm) is pcm


# Stepped sine sweeps (every tone lasts 1 s, handed over in 20 ms chunks): the speech band up
# to 3.4 kHz, and from 4.6 kHz, where images and aliases must be 70 dB down, to Nyquist.
SPEECH_BAND = range(100, 3500, 100)  # 1 kHz, 3.3 kHz and 3.4 kHz among them
STOP_BAND = range(4600, 8000, 50)


@pytest.mark.parametrize("rates", [UP, DOWN], ids=["8to16", "16to8"])
@pytest.mark.parametrize("hz", SPEECH_BAND)
def test_the_speech_band_keeps_its_level_within_a_tenth_of_a_db(
        rates: tuple[int, int], hz: int) -> None:
    source = tone(rates[0], 1.0, hz, AMPLITUDE)
    out = stream(Resampler(*rates), source)
    gain = level_db(out, rates[1], hz) - level_db(source, rates[0], hz)
    assert abs(gain) <= 0.1


@pytest.mark.parametrize("hz", [8000 - image for image in STOP_BAND])  # 3 kHz: image at 5 kHz
def test_upsampling_leaves_no_image_above_the_speech_band(hz: int) -> None:
    """A tone at f at 8 kHz has a mirror at 8 kHz - f, which the filter must remove."""
    out = stream(Resampler(*UP), tone(8000, 1.0, hz, AMPLITUDE))
    assert level_db(out, 16000, hz) > -0.1
    assert level_db(out, 16000, 8000 - hz) <= -70


@pytest.mark.parametrize("hz", STOP_BAND)  # 6 kHz among them, which would fold to 2 kHz
def test_downsampling_leaves_nothing_to_alias(hz: int) -> None:
    """A tone at f above 4 kHz would fold to 8 kHz - f; the filter must remove it first."""
    out = stream(Resampler(*DOWN), tone(16000, 1.0, hz, AMPLITUDE))
    assert level_db(out, 8000, 8000 - hz) <= -70
    rms = np.sqrt(np.mean(out[800:].astype(np.float64) ** 2))
    assert rms <= AMPLITUDE / np.sqrt(2) * 10 ** (-70 / 20)  # nor anything else


@pytest.mark.parametrize("rates", [UP, DOWN], ids=["8to16", "16to8"])
def test_chunked_output_is_the_one_shot_output(rates: tuple[int, int]) -> None:
    """The filter's history carries over: chunk boundaries leave no trace, whatever their size."""
    rng = np.random.default_rng(7)
    source = (rng.standard_normal(rates[0]) * 6000).astype(np.int16)
    whole = Resampler(*rates).process(source, last=True)
    resampler = Resampler(*rates)
    assert np.array_equal(np.concatenate([stream(resampler, source), resampler.finish()]), whole)
    resampler = Resampler(*rates)
    cuts = np.cumsum(rng.integers(0, 7, 2000))
    pieces = [resampler.process(piece) for piece in np.split(source, cuts[cuts < len(source)])]
    assert np.array_equal(np.concatenate([*pieces, resampler.finish()]), whole)


@pytest.mark.parametrize("rates", [UP, DOWN], ids=["8to16", "16to8"])
def test_every_chunk_comes_out_whole_at_once(rates: tuple[int, int]) -> None:
    """20 ms in gives 20 ms out from the very first chunk: no block buffering."""
    resampler = Resampler(*rates)
    source = tone(rates[0], 0.2)
    size = rates[0] // 50
    sizes = [len(resampler.process(source[i:i + size])) for i in range(0, len(source), size)]
    assert sizes == [rates[1] // 50] * 10
    odd = [len(resampler.process(source[:5])) for _ in range(4)]  # 5 samples: an odd count
    assert sum(odd) == 4 * 5 * rates[1] // rates[0]


@pytest.mark.parametrize("rates", [UP, DOWN], ids=["8to16", "16to8"])
@pytest.mark.parametrize("position", [150, 333])  # even and odd; 150 is near a chunk's end
def test_an_impulse_comes_out_at_most_3_ms_late(rates: tuple[int, int], position: int) -> None:
    impulse = np.zeros(rates[0] // 10, dtype=np.int16)
    impulse[position] = 20000
    out = stream(Resampler(*rates), impulse).astype(np.float64)
    delay = np.argmax(np.abs(out)) / rates[1] - position / rates[0]
    assert 0 <= delay <= 0.003
    assert out.max() > 20000 * min(1, rates[1] / rates[0]) * 0.5  # a peak, not a smear


@pytest.mark.parametrize("rates", [UP, DOWN], ids=["8to16", "16to8"])
def test_the_delay_is_a_whole_number_of_samples_at_both_rates(rates: tuple[int, int]) -> None:
    """The 16 kHz stream lines up with the 8 kHz one sample for sample, not half a sample off."""
    hz = 250  # one period (4 ms) is longer than the delay: its phase gives the delay outright
    source = tone(rates[0], 1.0, hz, AMPLITUDE)
    out = stream(Resampler(*rates), source)

    def phase(samples: np.ndarray, rate: int) -> float:
        t = np.arange(rate // 10, rate // 2) / rate
        return float(np.angle(np.dot(samples[rate // 10: rate // 2], np.exp(-2j * np.pi * hz * t))))

    delay = (phase(source, rates[0]) - phase(out, rates[1])) % (2 * np.pi) / (2 * np.pi * hz)
    assert 0 < delay <= 0.003
    assert abs(delay * 8000 - round(delay * 8000)) < 0.01


def test_the_stream_is_continuous_across_chunks_and_keeps_its_pitch() -> None:
    up, down = Resampler(*UP), Resampler(*DOWN)
    wide = np.concatenate([stream(up, tone(8000, 1.0)), up.finish()])
    assert abs(peak_hz(wide, 16000) - 440) < 5
    assert purity_db(wide, 16000) > 60  # resampling each chunk on its own gives ~30 dB
    back = np.concatenate([stream(down, wide), down.finish()])
    assert abs(peak_hz(back, 8000) - 440) < 5
    assert purity_db(back, 8000) > 60


@pytest.mark.parametrize("rates", [UP, DOWN], ids=["8to16", "16to8"])
def test_loud_input_is_clipped_not_wrapped(rates: tuple[int, int]) -> None:
    """A full-scale square wave overshoots after filtering; the overshoot must saturate."""
    square = np.where(np.sin(2 * np.pi * 300 * np.arange(rates[0] // 5) / rates[0]) >= 0,
                      32767, -32768).astype(np.int16)
    full = stream(Resampler(*rates), square).astype(np.int64)
    half = stream(Resampler(*rates), square // 2).astype(np.int64)
    assert full.max() == 32767 and full.min() == -32768
    assert np.abs(full - np.clip(2 * half, -32768, 32767)).max() <= 2


def test_last_flushes_the_tail_and_starts_over() -> None:
    """An utterance ends by ringing the filter out to silence, not by cutting it off."""
    resampler = Resampler(*DOWN)
    body = resampler.process(tone(16000, 0.1))
    tail = resampler.process(np.zeros(0, np.int16), last=True)
    assert len(body) == 800
    assert 0 < len(tail) <= 8000 * 0.005
    assert np.abs(tail[-4:]).max() <= 1  # it ends in silence: no click at the end
    again = resampler.process(tone(16000, 0.1), last=True)
    assert np.array_equal(again, Resampler(*DOWN).process(tone(16000, 0.1), last=True))
    assert len(again) == len(body) + len(tail)  # a fresh stream


def test_reset_starts_over_as_a_new_resampler_would() -> None:
    """A flush (barge-in) forgets the filter: the next chunk comes out as from a fresh one."""
    used, fresh = Resampler(*DOWN), Resampler(*DOWN)
    used.process(tone(16000, 0.1, hz=1000))
    used.reset()
    chunk = tone(16000, 0.1)
    assert np.array_equal(used.process(chunk), fresh.process(chunk))
    assert len(Resampler(*UP).finish()) == 0  # nothing in, nothing held


def test_other_rates_keep_pitch_and_length() -> None:
    """A TTS voice at another rate (soxr) still arrives whole and in tune."""
    resampler = Resampler(24000, 16000)
    out = np.concatenate([stream(resampler, tone(24000, 1.0, 440)), resampler.finish()])
    assert len(out) == 16000
    assert abs(peak_hz(out, 16000) - 440) < 5
    assert purity_db(out, 16000) > 60


def test_session_settings_come_from_media_config(tmp_path: Path) -> None:
    plain = session_settings(MediaConfig(timeout="5s", jitter_buffer="40ms"), "abc")
    assert (plain.timeout, plain.jitter, plain.rate, plain.record_to) == (5.0, 0.04, 16000, None)
    recorded = session_settings(MediaConfig(record_dir=tmp_path), "abc")
    assert recorded.record_to is not None
    assert recorded.record_to.parent == tmp_path
    assert recorded.record_to.name.endswith("Z-abc.wav")
