"""The bot's own voice coming back on the line, told apart from the caller by its waveform.

A phone, trunk or PBX that echoes returns the bot's audio a few hundred milliseconds later,
quieter and twice through G.711: still the same waveform. Recognising that echo's words would
make them the caller's (and, misheard, they differ from what the bot said), so a caller turn
whose audio correlates strongly with what the bot played just before is not transcribed.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

RATE = 16000
KEEP = 8.0  # seconds of the bot's audio remembered
EARLIEST = -0.2  # the echo may lead our playout estimate a little (the sender's queue) ...
LATEST = 1.2  # ... or trail it by a round trip, jitter buffers and the pipeline
ECHO_CORRELATION = 0.7  # pure echo scores ~0.9-1.0; a caller talking over a loud echo ~0.5
QUIET = 100.0  # RMS below which the bot was silent (nothing to echo)


class EchoReference:
    """What the bot played and when (monotonic seconds), for one call.

    Written on the event loop as audio is handed to the RTP sender, read from a speech
    worker thread when a caller turn is recognised; a lock keeps the two apart.
    """

    def __init__(self) -> None:
        self._chunks: deque[tuple[float, np.ndarray]] = deque()
        self._lock = threading.Lock()

    def played(self, pcm: bytes, start: float) -> None:
        """The bot's audio (16 kHz 16-bit mono) starts playing at `start`."""
        samples = np.frombuffer(pcm, dtype=np.int16)
        with self._lock:
            self._chunks.append((start, samples))
            while self._chunks and self._chunks[0][0] < start - KEEP:
                self._chunks.popleft()

    def cut(self, now: float) -> None:
        """Barge-in: audio scheduled after `now` will never play."""
        with self._lock:
            kept = [(t, s[:max(0, int((now - t) * RATE))]) for t, s in self._chunks if t < now]
            self._chunks = deque((t, s) for t, s in kept if len(s))

    def is_echo(self, audio: bytes, end: float) -> bool:
        """Whether caller audio that ended at `end` is mostly the bot's voice coming back."""
        heard = np.frombuffer(audio, dtype=np.int16).astype(np.float64)
        if len(heard) < RATE // 5:
            return False
        start = end - len(heard) / RATE
        reference = self._timeline(start - LATEST, end - EARLIEST)
        if not len(reference) or np.sqrt(np.mean(reference ** 2)) < QUIET:
            return False
        return _best_correlation(heard, reference) >= ECHO_CORRELATION

    def _timeline(self, begin: float, end: float) -> np.ndarray:
        """The bot's audio between two moments, silence where it said nothing."""
        timeline = np.zeros(max(0, int((end - begin) * RATE)))
        with self._lock:
            chunks = list(self._chunks)
        for start, samples in chunks:
            offset = round((start - begin) * RATE)
            first, last = max(0, offset), min(len(timeline), offset + len(samples))
            if first < last:
                timeline[first:last] = samples[first - offset:last - offset]
        return timeline


def _best_correlation(heard: np.ndarray, reference: np.ndarray) -> float:
    """Highest normalised cross-correlation of `heard` against any stretch of `reference`."""
    n = len(heard)
    if len(reference) < n:
        reference = np.pad(reference, (0, n - len(reference)))
    size = 1 << int(np.ceil(np.log2(len(reference) + n)))
    products = np.fft.irfft(np.fft.rfft(reference, size) * np.conj(np.fft.rfft(heard, size)),
                            size)[:len(reference) - n + 1]
    energy = np.concatenate([[0.0], np.cumsum(reference ** 2)])
    windows = energy[n:] - energy[:-n]
    norm = np.sqrt(np.maximum(windows, 1e-9) * float(np.dot(heard, heard)))
    # Windows where the bot was (nearly) silent cannot hold its echo.
    loud = windows > (QUIET ** 2) * n
    if not np.any(loud) or not np.dot(heard, heard):
        return 0.0
    return float(np.max(np.abs(products[loud]) / norm[loud]))
