"""G.722 (ITU-T, 64 kbit/s wideband ADPCM) to and from 16 kHz 16-bit PCM, via libg722.

G.722 carries 16 kHz audio, but its RTP clock is 8,000 Hz (RFC 3551 §4.5.2, a historical
error kept for compatibility): a 20 ms packet holds 320 samples in 160 bytes and its
timestamp advances by 160, the same as G.711's. Unlike G.711 the codec has state (each
sub-band's predictor and step size), so every call gets its own encoder and decoder, and
every byte the encoder makes must reach the peer in order: comfort silence is encoded by
the same encoder when the sender needs it.
"""

from __future__ import annotations

import numpy as np
from G722 import G722 as _Libg722

from .g711 import Pcm

SAMPLE_RATE = 16000
BIT_RATE = 64000
PAYLOAD_TYPE = 9
_EMPTY = np.zeros(0, dtype=np.int16)


class G722:
    """One call's G.722 codec: an encoder for what we send, a decoder for what we receive."""

    name = "G722"
    payload_type = PAYLOAD_TYPE
    sample_rate = SAMPLE_RATE

    def __init__(self) -> None:
        self._encoder = _Libg722(SAMPLE_RATE, BIT_RATE)
        self._decoder = _Libg722(SAMPLE_RATE, BIT_RATE)
        self._odd: Pcm = _EMPTY  # a sample left over: each code byte carries a sample pair

    def encode(self, pcm: Pcm) -> bytes:
        """Encode 16 kHz samples, one byte per pair (an odd last sample waits for the next)."""
        samples = np.ascontiguousarray(pcm, dtype=np.int16)
        if len(self._odd):
            samples = np.concatenate((self._odd, samples))
        usable = len(samples) & ~1
        self._odd = samples[usable:].copy()
        if not usable:
            return b""
        return bytes(self._encoder.encode(samples[:usable]))

    def decode(self, payload: bytes) -> Pcm:
        """Decode code bytes to 16 kHz samples (two per byte)."""
        if not payload:
            return _EMPTY
        return np.frombuffer(self._decoder.decode(payload), dtype=np.int16)

    def restart_decoder(self) -> None:
        """The peer restarted its stream (a new SSRC): its new encoder starts from scratch."""
        self._decoder = _Libg722(SAMPLE_RATE, BIT_RATE)

    def silence_frame(self, samples: int) -> bytes:
        """Digital silence for `samples` RTP clock ticks (twice as many 16 kHz samples),
        encoded now, in stream order (it moves the encoder's state on)."""
        return self.encode(np.zeros(2 * samples, dtype=np.int16))
