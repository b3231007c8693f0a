"""[media] record_dir: a call's decoded inbound audio written to a WAV file, off the event loop."""

from __future__ import annotations

import contextlib
import math
import wave
from pathlib import Path

import structlog
import trio

from .g711 import Pcm

log = structlog.get_logger(__name__)

BATCH_SECONDS = 1.0
MAX_PENDING_BATCHES = 30
CLOSE_TIMEOUT = 5.0


class WavRecorder:
    """Collects PCM in ~1 s batches that a worker thread appends to a 16-bit mono WAV file."""

    def __init__(self, path: Path, rate: int, *, call_id: str) -> None:
        self.path = path
        self.rate = rate
        self.call_id = call_id
        self.dropped_batches = 0
        self._batch = bytearray()
        self._batch_bytes = 2 * math.ceil(rate * BATCH_SECONDS)
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
                frames += len(batch) // 2
        except OSError:
            failed = True
            raise
        finally:  # the file is completed even if the call is cancelled
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                if failed:  # the call goes on: do not wait for its end to let the file go
                    await trio.to_thread.run_sync(_abandon, wav)
                else:
                    await self._closed.wait()  # the session hands over its last partial batch
                    rest = b"".join(_drain(self._receive))
                    frames += len(rest) // 2
                    await trio.to_thread.run_sync(_finish, wav, rest)
                    log.info("media_recording_saved", call_id=self.call_id,
                             path=str(self.path), seconds=round(frames / self.rate, 3),
                             dropped_batches=self.dropped_batches)

    def _open(self) -> wave.Wave_write:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        wav = wave.open(str(self.path), "wb")  # noqa: SIM115 - closed by _finish
        wav.setnchannels(1)
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


def _finish(wav: wave.Wave_write, rest: bytes) -> None:
    try:
        if rest:
            wav.writeframesraw(rest)
    finally:
        wav.close()


def _abandon(wav: wave.Wave_write) -> None:
    """Close a file whose writing failed; closing fails the same way (the header, the buffer),
    and that error is the one already being reported."""
    with contextlib.suppress(OSError):
        wav.close()
