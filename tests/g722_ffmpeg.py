"""ffmpeg's G.722 (libavcodec, written apart from libg722): the independent reference codec."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

RATE = 16000


def _ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise AssertionError("ffmpeg not found: install the Debian package ffmpeg "
                             "(scripts/test does)")
    return path


def ffmpeg_encode(pcm: np.ndarray | bytes) -> bytes:
    """16 kHz 16-bit PCM (array, or little-endian bytes) to raw G.722 by ffmpeg."""
    data = pcm if isinstance(pcm, bytes) else np.asarray(pcm).astype("<i2").tobytes()
    return subprocess.run([_ffmpeg(), "-v", "error", "-f", "s16le", "-ar", str(RATE), "-ac", "1",
                           "-i", "-", "-c:a", "g722", "-f", "g722", "-"],
                          input=data, capture_output=True, check=True, timeout=60).stdout


def ffmpeg_decode(g722: bytes) -> np.ndarray:
    """Raw G.722 to 16 kHz 16-bit PCM by ffmpeg."""
    out = subprocess.run([_ffmpeg(), "-v", "error", "-f", "g722", "-i", "-", "-f", "s16le",
                          "-ar", str(RATE), "-ac", "1", "-"],
                         input=g722, capture_output=True, check=True, timeout=60).stdout
    return np.frombuffer(out, dtype="<i2")
