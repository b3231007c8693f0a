"""A call's audio written to a 16-bit WAV file off the event loop: [media] record_dir's
inbound mono debugging file, and a recording tenant's stereo call (media/callrecord.py)."""

from __future__ import annotations

import contextlib
import math
import os
import wave
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio

from .g711 import Pcm

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SavedWav:
    """A completed recording: where it is, how long it plays, how many bytes."""

    path: Path
    seconds: float
    bytes: int

BATCH_SECONDS = 1.0
MAX_PENDING_BATCHES = 30
CLOSE_TIMEOUT = 5.0


class WavRecorder:
    """Collects PCM in ~1 s batches that a worker thread appends to a 16-bit WAV file.

    With channels=2 the samples written are interleaved (left, right). With publish_as the
    file is written under path and renamed to publish_as once complete, so a file under
    that name is always whole; `saved` then holds its length and size.
    """

    def __init__(self, path: Path, rate: int, *, call_id: str, channels: int = 1,
                 publish_as: Path | None = None) -> None:
        self.path = path
        self.rate = rate
        self.call_id = call_id
        self.channels = channels
        self.publish_as = publish_as
        self.dropped_batches = 0
        self.saved: SavedWav | None = None
        self._frame_bytes = 2 * channels
        self._batch = bytearray()
        self._batch_bytes = self._frame_bytes * math.ceil(rate * BATCH_SECONDS)
        self._send, self._receive = trio.open_memory_channel[bytes](MAX_PENDING_BATCHES)
        self._closed = trio.Event()

    def write(self, pcm: Pcm) -> None:
        """Append samples; never blocks (a disk too slow to keep up loses whole batches)."""
        self._batch += pcm.astype("<i2", copy=False).tobytes()
        if len(self._batch) >= self._batch_bytes:
            self._hand_over()

    def _hand_over(self) -> None:
        if not self._batch:
            return
        try:
            self._send.send_nowait(bytes(self._batch))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped_batches += 1
        self._batch.clear()

    def close(self) -> None:
        """No more audio: the writer finishes the file and returns."""
        self._hand_over()
        self._send.close()
        self._closed.set()

    async def run(self) -> None:
        """Write batches until closed; a disk error ends the recording, never the call."""
        try:
            await self._record()
        except OSError:
            log.exception("media_recording_failed", call_id=self.call_id, path=str(self.path))
        finally:
            self._receive.close()  # from now on the session's batches are dropped at once

    async def _record(self) -> None:
        wav = await trio.to_thread.run_sync(self._open)
        frames = 0
        failed = False
        try:
            async for batch in self._receive:
                await trio.to_thread.run_sync(wav.writeframesraw, batch)
                frames += len(batch) // self._frame_bytes
        except OSError:
            failed = True
            raise
        finally:  # the file is completed even if the call is cancelled
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                if failed:  # the call goes on: do not wait for its end to let the file go
                    await trio.to_thread.run_sync(
                        _abandon, wav, self.path if self.publish_as is not None else None)
                else:
                    await self._closed.wait()  # the session hands over its last partial batch
                    rest = b"".join(_drain(self._receive))
                    frames += len(rest) // self._frame_bytes
                    size = await trio.to_thread.run_sync(_finish, wav, rest, self.path,
                                                         self.publish_as)
                    self.saved = SavedWav(self.publish_as or self.path,
                                          round(frames / self.rate, 3), size)
                    log.info("media_recording_saved", call_id=self.call_id,
                             path=str(self.saved.path), seconds=self.saved.seconds,
                             channels=self.channels, dropped_batches=self.dropped_batches)

    def _open(self) -> wave.Wave_write:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wav = wave.open(str(self.path), "wb")  # noqa: SIM115 - closed by _finish
        wav.setnchannels(self.channels)
        wav.setsampwidth(2)
        wav.setframerate(self.rate)
        return wav


def _drain(channel: trio.MemoryReceiveChannel[bytes]) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return out


def _finish(wav: wave.Wave_write, rest: bytes, path: Path, publish_as: Path | None) -> int:
    """Write the rest, complete the header, give the file its name; its size in bytes."""
    try:
        if rest:
            wav.writeframesraw(rest)
    finally:
        wav.close()
    if publish_as is not None:
        os.replace(path, publish_as)
        path = publish_as
    return path.stat().st_size


def _abandon(wav: wave.Wave_write, partial: Path | None) -> None:
    """Close a file whose writing failed; closing fails the same way (the header, the buffer),
    and that error is the one already being reported. A partial file never to be published
    is removed (if the disk lets us)."""
    with contextlib.suppress(OSError):
        wav.close()
    if partial is not None:
        with contextlib.suppress(OSError):
            partial.unlink()
