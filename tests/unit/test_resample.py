"""Streaming resampling between the RTP clock and the pipeline rate, and per-call settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voicedashd.config import MediaConfig
from voicedashd.media.resample import Resampler
from voicedashd.media.session import session_settings


def tone(rate: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def test_equal_rates_pass_through() -> None:
    pcm = tone(8000, 0.02)
    assert Resampler(8000, 8000).process(pcm) is pcm


def purity_db(samples: np.ndarray, rate: int, hz: float = 440.0) -> float:
    """Energy near hz over energy elsewhere: a click at a chunk boundary spreads everywhere."""
    middle = samples[len(samples) // 10: -len(samples) // 10].astype(np.float64)
    power = np.abs(np.fft.rfft(middle * np.blackman(len(middle)))) ** 2
    freqs = np.fft.rfftfreq(len(middle), 1 / rate)
    band = (freqs > hz - 20) & (freqs < hz + 20)
    return float(10 * np.log10(power[band].sum() / power[~band].sum()))


def test_20_ms_chunks_come_out_steadily_with_little_delay() -> None:
    resampler = Resampler(8000, 16000)
    source = tone(8000, 1.0)
    sizes = [len(resampler.process(source[i:i + 160])) for i in range(0, 8000, 160)]
    assert set(sizes[2:]) == {320}  # from the third chunk on, 20 ms in gives 20 ms out
    held = len(resampler.finish())
    assert sum(sizes) + held == 16000
    assert held <= 16000 * 0.03  # at most 30 ms of delay


def test_the_stream_is_continuous_across_chunks_and_keeps_its_pitch() -> None:
    up, down = Resampler(8000, 16000), Resampler(16000, 8000)
    source = tone(8000, 1.0)
    wide = np.concatenate([up.process(source[i:i + 160]) for i in range(0, 8000, 160)]
                          + [up.finish()])
    assert abs(peak_hz(wide, 16000) - 440) < 5
    assert purity_db(wide, 16000) > 60  # resampling each chunk on its own gives ~30 dB
    back = np.concatenate([down.process(wide[i:i + 320]) for i in range(0, len(wide), 320)]
                          + [down.finish()])
    assert len(back) == 8000
    assert purity_db(back, 8000) > 60


def test_last_flushes_the_tail_and_starts_over() -> None:
    resampler = Resampler(16000, 8000)
    total = len(resampler.process(tone(16000, 0.1))) + len(resampler.process(
        np.zeros(0, np.int16), last=True))
    assert total == 800
    assert len(resampler.process(tone(16000, 0.1), last=True)) == 800  # a fresh stream


def test_reset_starts_over_as_a_new_resampler_would() -> None:
    """A flush (barge-in) forgets the filter: the next chunk comes out as from a fresh one."""
    used, fresh = Resampler(16000, 8000), Resampler(16000, 8000)
    used.process(tone(16000, 0.1, hz=1000))
    used.reset()
    chunk = tone(16000, 0.1)
    assert np.array_equal(used.process(chunk), fresh.process(chunk))
    assert len(Resampler(8000, 16000).finish()) == 0  # nothing in, nothing held


def test_session_settings_come_from_media_config(tmp_path: Path) -> None:
    plain = session_settings(MediaConfig(timeout="5s", jitter_buffer="40ms"), "abc")
    assert (plain.timeout, plain.jitter, plain.rate, plain.record_to) == (5.0, 0.04, 16000, None)
    recorded = session_settings(MediaConfig(record_dir=tmp_path), "abc")
    assert recorded.record_to is not None
    assert recorded.record_to.parent == tmp_path
    assert recorded.record_to.name.endswith("Z-abc.wav")
