"""Run Pipecat processors on frames under trio-asyncio and collect what comes out (tests).

Pipecat objects must be created on the asyncio side (inside the coroutine given to
aio_as_trio): some make asyncio primitives when constructed. trio_asyncio must be imported
before Pipecat (see voicedashd/voicebot/__init__.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import trio
import trio_asyncio
from pipecat.frames.frames import EndFrame, Frame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

Offload = Callable[..., Any]


class Collect(FrameProcessor):
    """Keeps every frame that reaches it (downstream), passing them on."""

    def __init__(self, wanted: tuple[type[Frame], ...]) -> None:
        super().__init__(name="collect")
        self.wanted = wanted
        self.frames: list[Frame] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Keep wanted frames, pass everything on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, self.wanted):
            self.frames.append(frame)
        await self.push_frame(frame, direction)


async def run_frames(build: Callable[[Offload], Sequence[FrameProcessor]],
                     frames: Sequence[Frame], wanted: tuple[type[Frame], ...],
                     timeout: float = 60) -> list[Frame]:
    """Queue frames (then an EndFrame) into build(offload)'s processors; the wanted output."""
    async with trio_asyncio.open_loop() as loop:
        def offload(fn: Callable[..., Any], *args: Any) -> Any:
            return trio_asyncio.trio_as_aio(trio.to_thread.run_sync, loop=loop)(fn, *args)

        collected: list[Frame] = []

        async def run() -> None:
            collect = Collect(wanted)  # Pipecat objects are made on the asyncio side
            collect.frames = collected
            worker = PipelineWorker(Pipeline([*build(offload), collect]),
                                    params=PipelineParams(audio_in_sample_rate=16000,
                                                          audio_out_sample_rate=16000),
                                    enable_rtvi=False, idle_timeout_secs=None,
                                    check_dangling_tasks=False)
            await worker.queue_frames([*frames, EndFrame()])
            runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
            await runner.add_workers(worker)
            await runner.run()

        with trio.fail_after(timeout):
            await trio_asyncio.aio_as_trio(run, loop=loop)()
    return collected
