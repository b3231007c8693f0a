"""Pipecat processors that only the voice bot tests plug in with [voicebot] processors."""

from __future__ import annotations

import trio_asyncio  # noqa: F401 - before Pipecat, see voicedashd/voicebot/__init__.py
from pipecat.frames.frames import Frame, VADUserStartedSpeakingFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from voicedashd.events import CallInfo

FAILING_EXTENSION = "2666"


class FailsWhenCallerSpeaks(FrameProcessor):
    """Passes frames on until the caller starts speaking, then raises (a genuine bug)."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Raise on the caller's first speech; pass everything else on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, VADUserStartedSpeakingFrame):
            raise RuntimeError("plugin bug: cannot handle speech")
        await self.push_frame(frame, direction)


def fail_for_2666(call: CallInfo) -> FrameProcessor | None:
    """The failing processor, for calls to extension 2666 only."""
    return FailsWhenCallerSpeaks() if call.callee_extension == FAILING_EXTENSION else None
