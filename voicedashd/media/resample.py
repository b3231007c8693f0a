"""Streaming sample-rate conversion between the 8 kHz RTP clock and the pipeline's rate (soxr)."""

from __future__ import annotations

import numpy as np
import soxr

from .g711 import Pcm

_EMPTY = np.zeros(0, dtype=np.int16)


_TAPS = 64


def _lowpass() -> np.ndarray:
    """A Hamming-windowed sinc cutting at 3.8 kHz of 16 kHz, with a gain of 2 (for upsampling)."""
    cutoff = 3800 / 16000
    n = np.arange(_TAPS) - (_TAPS - 1) / 2
    return 2 * 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(_TAPS)


class _ByTwo:
    """Streaming 8 <-> 16 kHz conversion by a windowed-sinc FIR, 2 ms of delay, output per chunk.

    Pipecat pins soxr ~= 1.0.0, whose ResampleStream has no variable-rate engine (vr, soxr 1.1)
    and releases its high-quality output only in ~100 ms blocks; a live call needs every 20 ms.
    """

    def __init__(self, up: bool) -> None:
        self._up = up
        self._taps = _lowpass() if up else _lowpass() / 2
        self._history = np.zeros(_TAPS - 1)
        self._phase = 0

    def resample_chunk(self, pcm: np.ndarray, last: bool = False) -> np.ndarray:
        """Convert the next chunk (the filter state carries over between chunks)."""
        if not len(pcm):
            return _EMPTY  # output keeps pace with input: there is no tail to release
        x = pcm.astype(np.float64)
        if self._up:
            stuffed = np.zeros(2 * len(x))
            stuffed[::2] = x
            x = stuffed
        joined = np.concatenate([self._history, x])
        filtered = np.convolve(joined, self._taps, mode="valid")
        self._history = joined[len(joined) - (_TAPS - 1):]
        if not self._up:
            filtered = filtered[self._phase::2]
            self._phase = (self._phase + len(x)) % 2
        return np.clip(np.rint(filtered), -32768, 32767).astype(np.int16)


def _open_stream(in_rate: int, out_rate: int) -> soxr.ResampleStream | _ByTwo:
    """The lowest-delay high-quality stream available for this pair of rates."""
    try:
        return soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="HQ", vr=True)
    except TypeError:
        if (in_rate, out_rate) in ((8000, 16000), (16000, 8000)):
            return _ByTwo(up=out_rate > in_rate)
        return soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality="QQ")


class Resampler:
    """Converts a continuous 16-bit mono stream chunk by chunk, keeping the filter state.

    soxr's fixed-ratio engine releases output in blocks of ~100 ms; its variable-rate engine
    (vr=True), run at a fixed ratio, returns output for every 20 ms chunk, holding back at
    most 30 ms (8 -> 16 kHz; 15 ms the other way) with full image rejection, which is what a
    live call needs.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        # Opened by the first chunk, not here: most calls of a SIP flood never carry audio,
        # and opening a soxr stream costs more than the rest of a media session's set-up.
        self._stream: soxr.ResampleStream | _ByTwo | None = None

    def reset(self) -> None:
        """Forget the stream so far (after a flush or a new source)."""
        self._stream = None

    def process(self, pcm: Pcm, *, last: bool = False) -> Pcm:
        """Resample the next chunk; last=True also returns the filter's tail and resets."""
        if self.in_rate == self.out_rate:
            return pcm
        if self._stream is None:
            if last and not len(pcm):
                return _EMPTY  # a fresh filter holds nothing: no need to open one to say so
            self._stream = _open_stream(self.in_rate, self.out_rate)
        out = self._stream.resample_chunk(np.ascontiguousarray(pcm, dtype=np.int16), last=last)
        if last:
            self.reset()
        return out

    def finish(self) -> Pcm:
        """Return what the filter still holds and reset."""
        return self.process(_EMPTY, last=True)
