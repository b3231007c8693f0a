"""A recording tenant's call as one stereo track: the caller left, the bot right, per tick."""

from __future__ import annotations

from datetime import datetime
from pathlib import PurePosixPath

import numpy as np

from .g711 import Pcm

# Audio the jitter buffer releases in a burst (a PBX catching up) is kept for the ticks that
# follow, up to this much; beyond it the oldest goes, so the caller never drifts behind.
MAX_INBOUND_AHEAD = 0.2
# The bot's samples may lead what the RTP sender holds by the resampler's few held-back
# samples; more than this is speech the sender no longer has (flushed, or sent while held).
OUTBOUND_SLACK = 0.04
PARTIAL_SUFFIX = ".part"


def recording_name(call_id: str, started: datetime) -> str:
    """A call's recording file, relative to [recordings] dir: a folder per UTC day."""
    if not call_id.isalnum():
        raise ValueError(f"a call id names a file only if it is alphanumeric: {call_id!r}")
    return str(PurePosixPath(f"{started:%Y-%m-%d}") / f"{call_id}.wav")


class StereoMixer:
    """Pairs the caller's and the bot's audio tick by tick (sans-IO).

    The session hands over what it decodes (inbound) and what it queues for sending
    (outbound) as it happens; each 20 ms tick takes one frame of each: the caller's next
    frame (silence if none arrived), and the bot's next frame if the tick sent speech
    (silence if it sent comfort noise, was on hold, or skipped). Both channels thus advance
    with the clock, so the file lasts as long as the call and the two sides stay aligned.
    """

    def __init__(self, rate: int, ptime: float = 0.020) -> None:
        self.rate = rate
        self.frame = round(rate * ptime)
        self._inbound = np.zeros(0, dtype=np.int16)
        self._outbound = np.zeros(0, dtype=np.int16)
        self._max_inbound = round(rate * MAX_INBOUND_AHEAD)
        self._slack = round(rate * OUTBOUND_SLACK)

    def inbound(self, pcm: Pcm) -> None:
        """The caller's decoded audio (at rate)."""
        joined = np.concatenate((self._inbound, pcm.astype(np.int16, copy=False)))
        self._inbound = joined[-self._max_inbound:] if len(joined) > self._max_inbound else joined

    def outbound(self, pcm: Pcm) -> None:
        """The bot's audio as queued for sending (at rate)."""
        self._outbound = np.concatenate((self._outbound, pcm.astype(np.int16, copy=False)))

    def flush_outbound(self) -> None:
        """The bot's queued speech was dropped (barge-in)."""
        self._outbound = self._outbound[:0]

    def tick(self, *, bot_sent: bool, queued: float) -> Pcm:
        """One frame, interleaved left/right; queued: seconds the sender holds after the tick."""
        n = self.frame
        left, self._inbound = _take(self._inbound, n)
        if bot_sent:
            right, self._outbound = _take(self._outbound, n)
        else:
            right = np.zeros(n, dtype=np.int16)
        excess = len(self._outbound) - round(queued * self.rate) - self._slack
        if excess > 0:  # speech the sender no longer holds: it is not going to be heard
            self._outbound = self._outbound[excess:]
        out = np.empty(2 * n, dtype=np.int16)
        out[0::2] = left
        out[1::2] = right
        return out

    def silence(self, ticks: int) -> Pcm:
        """Frames for ticks the clock skipped after a stall: nothing was sent in them."""
        return np.zeros(2 * self.frame * ticks, dtype=np.int16)


def _take(buffer: Pcm, n: int) -> tuple[Pcm, Pcm]:
    """The first n samples of buffer (padded with silence) and the rest."""
    head = buffer[:n]
    if len(head) < n:
        head = np.concatenate((head, np.zeros(n - len(head), dtype=np.int16)))
    return head, buffer[n:]
