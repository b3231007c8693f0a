"""Where asyncio meets Trio: the daemon's one asyncio loop and each call's pipeline on it.

The daemon opens one trio-asyncio loop inside its nursery (open_voicebot). A call task runs
its Pipecat pipeline with aio_as_trio, so the pipeline is a child of that task: cancelling
the call (BYE, shutdown) cancels it. Pipecat's runner swallows that cancellation and returns
normally, so after it returns the call task checkpoints: cancelled, it raises Cancelled there.

Both loops share the main thread, so nothing here blocks and nothing crosses threads: the
caller's audio goes to the pipeline with put_nowait on a bounded asyncio queue, and the
pipeline hands audio and events to Trio with send_nowait on bounded Trio channels. Blocking
work the pipeline needs (decoding, a subprocess) is done by Trio (to_thread, run_process)
through trio_as_aio. This is the only module that imports asyncio or trio_asyncio.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
import trio
import trio_asyncio

from ..bus import EventBus
from ..config import DEFAULT_RECORD_NOTICE
from ..events import CallInfo, Speaker, SttTranscript, TtsCompleted, TtsStarted
from ..livecfg import LiveConfig
from ..media.session import MediaSession
from ..metrics import Metrics
from .echo import EchoReference
from .priority import at_speech_priority
from .prompt import Prompt

if TYPE_CHECKING:
    from .pipeline import Models

log = structlog.get_logger(__name__)

T = TypeVar("T")
INBOX_FRAMES = 50  # 1 s of 20 ms frames; a pipeline that far behind loses audio, not memory
OUTBOX_CHUNKS = 64  # ~2.5 s of 40 ms chunks; pacing keeps it to a few
EVENT_QUEUE = 256
PROMPT_QUEUE = 4
PLAYOUT_LEAD = 0.1  # the bot's audio may run this far ahead of real time into the RTP sender
DRAIN_LIMIT = 10.0  # after the bot hangs up, wait at most this long for its last words to play
# Where Pipecat logs an error a processor reports (the processor, then the worker twice).
# run_pipeline is handed every such report and raises or logs it with the call's id; were
# these functions renamed, the only cost is the old duplicate lines.
_PIPECAT_ERROR_REPORTS = frozenset({
    ("pipecat.processors.frame_processor", "push_error_frame"),
    ("pipecat.pipeline.worker", "_source_push_frame"),
    ("pipecat.pipeline.worker", "_handle_unusable_processor"),
})
_FLUSH = object()
_END = object()


class VoicebotFailed(Exception):
    """A call's pipeline failed; the cause is the exception inside it (the call ends, error)."""


class _Inbox:
    """The caller's audio for the pipeline: filled from Trio, read by Pipecat."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(INBOX_FRAMES)
        self.dropped = 0

    def put(self, pcm: bytes) -> None:
        """Called by the Trio side; never blocks (a full inbox drops the frame)."""
        try:
            self._queue.put_nowait(pcm)
        except asyncio.QueueFull:
            self.dropped += 1

    async def get(self) -> bytes:
        """The next chunk of audio."""
        return await self._queue.get()


class _Prompts:
    """Lines the call task asks for, filled from Trio, read by the Responder."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Prompt] = asyncio.Queue(PROMPT_QUEUE)

    def put(self, prompt: Prompt) -> None:
        """Called by the Trio side; never blocks (the call task asks for one at a time)."""
        try:
            self._queue.put_nowait(prompt)
        except asyncio.QueueFull:
            log.warning("voicebot_prompt_dropped", line=prompt.line.value)

    async def get(self) -> Prompt:
        """The next prompt."""
        return await self._queue.get()


class _Mark:
    """In the outbox's stream: everything before it has been handed to the RTP sender."""

    def __init__(self, played: Callable[[float], None]) -> None:
        self.played = played


class _Outbox:
    """The bot's audio for the RTP sender, paced here so the sender holds ~PLAYOUT_LEAD."""

    def __init__(self, channel: trio.MemorySendChannel[Any], rate: int,
                 echo: EchoReference) -> None:
        self._channel = channel
        self._bytes_per_second = 2 * rate
        self._playout = 0.0  # monotonic time when what was handed over so far has played
        self._echo = echo
        self.dropped = 0

    def _send(self, item: object) -> None:
        try:
            self._channel.send_nowait(item)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1

    async def write(self, pcm: bytes) -> None:
        """Hand speech over, then wait until it is at most PLAYOUT_LEAD ahead of real time."""
        now = time.monotonic()
        start = max(self._playout, now)
        self._playout = start + len(pcm) / self._bytes_per_second
        self._echo.played(pcm, start)
        self._send(pcm)
        ahead = self._playout - now - PLAYOUT_LEAD
        if ahead > 0:
            await asyncio.sleep(ahead)

    def flush(self) -> None:
        """Barge-in: the sender drops what it holds; the next speech starts a new playout."""
        self._playout = 0.0
        self._echo.cut(time.monotonic())
        self._send(_FLUSH)

    def end_of_speech(self) -> None:
        """The utterance is complete (the sender flushes its resampler)."""
        self._send(_END)

    def mark(self, played: Callable[[float], None]) -> None:
        """Call played(seconds queued in the sender) when the audio before it is handed over."""
        self._send(_Mark(played))


class _Events:
    """A call's live events, handed to the Trio side that publishes them."""

    def __init__(self, channel: trio.MemorySendChannel[tuple[str, dict[str, Any]]]) -> None:
        self._channel = channel
        self.dropped = 0

    def _send(self, kind: str, **fields: Any) -> None:
        try:
            self._channel.send_nowait((kind, fields))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1

    def transcript(self, text: str, *, is_final: bool) -> None:
        """The caller said something."""
        self._send("transcript", text=text, is_final=is_final)

    def tts_started(self, text: str) -> None:
        """The bot started a sentence."""
        self._send("tts_started", text=text)

    def tts_completed(self) -> None:
        """The bot finished it."""
        self._send("tts_completed")


def _route_pipecat_logs() -> None:
    """Send Pipecat's loguru output (warnings and up) to our structured log, nothing else."""
    from loguru import logger

    def sink(message: Any) -> None:
        record = message.record
        if (record["name"], record["function"]) in _PIPECAT_ERROR_REPORTS:
            return
        level = record["level"].no
        method = log.error if level >= logging.ERROR else log.warning
        method("pipecat_log", source=record["name"], message=str(record["message"]))

    logger.remove()
    logger.add(sink, level="WARNING", format="{message}")


@dataclasses.dataclass(eq=False)
class Voicebot:
    """Runs the AI voice bot of each call on the daemon's asyncio loop."""

    live: LiveConfig
    metrics: Metrics
    loop: trio_asyncio.TrioEventLoop
    environ: Mapping[str, str]
    models: Models
    generation: int
    workers: trio.CapacityLimiter
    _reloading: trio.Lock = dataclasses.field(default_factory=trio.Lock)

    async def reload(self) -> None:
        """Re-index the knowledge and rebuild the recognisers for the config now in force."""
        async with self._reloading:
            generation = self.live.generation
            if generation == self.generation:
                return
            from .pipeline import build_models

            config = self.live.current.voicebot
            self.generation = generation
            try:
                self.models = await trio.to_thread.run_sync(at_speech_priority, build_models,
                                                            config, self.models)
            except Exception as exc:  # a bad plugin or folder: keep answering with the old
                # error: the one line for the operator; the traceback: where it broke.
                log.error("voicebot_reload_failed", generation=generation, error=str(exc),
                          exc_info=True)
                return
            log.info("voicebot_reloaded", generation=generation)

    async def run(self, call: CallInfo, session: MediaSession, bus: EventBus,
                  prompts: trio.MemoryReceiveChannel[Prompt] | None = None) -> None:
        """Run the call's bot until the call ends (cancelled) or the bot hangs up (returns).

        Each prompt that comes is said (after what the bot is saying at the moment).

        The pipeline starts with the caller's first audio. Raises VoicebotFailed (from the
        pipeline's exception) if it failed; the caller ends the call with BYE and reason
        "error", and logs it. Nothing here affects another call.
        """
        # The bot starts with the caller's media: a call whose RTP never flows has nobody to
        # listen (its media timeout ends it), and a SIP flood without media costs no pipeline.
        try:
            first = await session.inbound.receive()
        except trio.EndOfChannel:
            raise VoicebotFailed("the call's audio ended before it started") from None
        if self.live.generation != self.generation:
            await self.reload()
        from .pipeline import CallHooks, run_pipeline

        config = self.live.current.voicebot
        # A recorded call's caller is told first (tenants.record_notice).
        tenant = self.live.current.tenant_named(call.tenant)
        notice = (tenant.record_notice if tenant is not None else DEFAULT_RECORD_NOTICE
                  ) if session.records_call else ""
        out_send, out_receive = trio.open_memory_channel[Any](OUTBOX_CHUNKS)
        event_send, event_receive = trio.open_memory_channel[tuple[str, dict[str, Any]]](
            EVENT_QUEUE)
        echo = EchoReference()
        inbox, outbox = _Inbox(), _Outbox(out_send, session.rate, echo)
        events = _Events(event_send)
        said = _Prompts()
        inbox.put(first.data)
        hooks = CallHooks(inbox=inbox, outbox=outbox, events=events, prompts=said,
                          offload=self._offload,
                          try_offload=self._try_offload, run_process=self._run_process,
                          observe=self._observe, echo=echo, environ=self.environ)
        played = trio.Event()
        failure: Exception | None = None
        self.metrics.voicebot_pipelines.inc()
        try:
            async with trio.open_nursery() as events_nursery:
                events_nursery.start_soon(_publish, bus, call, event_receive)
                try:
                    async with trio.open_nursery() as media:
                        media.start_soon(_feed, session, inbox)
                        media.start_soon(_play, session, out_receive, played)
                        if prompts is not None:
                            media.start_soon(_ask, prompts, said)
                        try:
                            await trio_asyncio.aio_as_trio(
                                run_pipeline, loop=self.loop)(call, config, self.models, hooks,
                                                              notice)
                        except Exception as exc:  # raised inside it, or it could not be built
                            failure = exc
                        # Cancelled while the pipeline ran? Pipecat returned anyway: stop here.
                        await trio.lowlevel.checkpoint()
                        if failure is None:  # the bot hung up: let its last words play out
                            out_send.close()
                            with trio.move_on_after(DRAIN_LIMIT):
                                await played.wait()
                                await trio.sleep(session.queued)
                        media.cancel_scope.cancel()
                finally:
                    event_send.close()
        finally:
            self.metrics.voicebot_pipelines.dec()
            if inbox.dropped or outbox.dropped or events.dropped:
                log.warning("voicebot_dropped", call_id=call.call_id, audio_in=inbox.dropped,
                            audio_out=outbox.dropped, events=events.dropped)
        if failure is not None:
            self.metrics.voicebot_errors.inc()
            # Not logged here: the call task, which ends the call for it, logs it once.
            raise VoicebotFailed(f"the voice bot of call {call.call_id} failed") from failure
        log.info("voicebot_hung_up", call_id=call.call_id)

    # -- what the asyncio side may ask of Trio (see host.py) --------------------------------

    def _offload(self, fn: Callable[..., T], *args: Any) -> Any:
        """An awaitable (asyncio side) running fn(*args) on a speech worker, waiting for one."""
        return trio_asyncio.trio_as_aio(self._in_worker, loop=self.loop)(fn, *args)

    def _try_offload(self, fn: Callable[..., T], *args: Any) -> Any:
        """Like _offload, but resolves to None at once when every speech worker is busy."""
        return trio_asyncio.trio_as_aio(self._in_idle_worker, loop=self.loop)(fn, *args)

    async def _in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        queued = trio.current_time()
        async with self.workers:
            self.metrics.speech_wait.observe(trio.current_time() - queued)
            return await trio.to_thread.run_sync(at_speech_priority, fn, *args)

    async def _in_idle_worker(self, fn: Callable[..., T], *args: Any) -> T | None:
        if not self.workers.available_tokens:
            self.metrics.speech_skipped.inc()
            return None
        return await self._in_worker(fn, *args)

    def _run_process(self, command: list[str], stdin: bytes) -> Any:
        """An awaitable (asyncio side) running a subprocess under Trio; its stdout."""
        return trio_asyncio.trio_as_aio(_run_process, loop=self.loop)(command, stdin)

    def _observe(self, name: str, seconds: float) -> None:
        self.metrics.voicebot_latency.labels(name).observe(seconds)


async def _run_process(command: list[str], stdin: bytes) -> bytes:
    result = await trio.run_process(command, stdin=stdin, capture_stdout=True,
                                    capture_stderr=True, check=True)
    return result.stdout


async def _publish(bus: EventBus, call: CallInfo,
                   receive: trio.MemoryReceiveChannel[tuple[str, dict[str, Any]]]) -> None:
    """Publish the pipeline's events on the bus until the channel closes.

    Shielded: a cancelled call still publishes what its pipeline says while stopping (the
    interrupted sentence's tts_completed); the channel closes as soon as the pipeline is
    done, which is bounded by Pipecat's cancel timeout.
    """
    with trio.CancelScope(shield=True):
        async for kind, fields in receive:
            _emit(bus, call, kind, fields)


def _emit(bus: EventBus, call: CallInfo, kind: str, fields: dict[str, Any]) -> None:
    if kind == "transcript":
        bus.emit(SttTranscript, call.call_id, text=fields["text"], is_final=fields["is_final"],
                 speaker=Speaker.CALLER)
    elif kind == "tts_started":
        bus.emit(TtsStarted, call.call_id, text=fields["text"])
    elif kind == "tts_completed":
        bus.emit(TtsCompleted, call.call_id)


async def _feed(session: MediaSession, inbox: _Inbox) -> None:
    """Move the caller's decoded audio into the pipeline's inbox."""
    async for frame in session.inbound:
        inbox.put(frame.data)


async def _ask(prompts: trio.MemoryReceiveChannel[Prompt], said: _Prompts) -> None:
    """Pass the call task's prompts to the pipeline."""
    async for prompt in prompts:
        said.put(prompt)


async def _play(session: MediaSession, receive: trio.MemoryReceiveChannel[Any],
                played: trio.Event) -> None:
    """Send the bot's audio to the caller; a flush drops what the sender still holds."""
    async for item in receive:
        if isinstance(item, _Mark):
            item.played(session.queued)
        elif item is _FLUSH:
            session.flush()
        elif item is _END:
            await session.send_pcm(b"", last=True)
        else:
            await session.send_pcm(item)
    played.set()


@asynccontextmanager
async def open_voicebot(live: LiveConfig, metrics: Metrics,
                        environ: Mapping[str, str] | None = None) -> AsyncIterator[Voicebot]:
    """Load the models and knowledge, open the asyncio loop; the Voicebot using them."""
    _route_pipecat_logs()
    from .pipeline import Models, build_models, load_vad_model

    config = live.current.voicebot
    generation = live.generation
    vad = await trio.to_thread.run_sync(load_vad_model)
    # Models start their thread pools while loading: those threads inherit the low priority.
    models = await trio.to_thread.run_sync(at_speech_priority, build_models, config,
                                           Models(vad=vad))
    async with trio_asyncio.open_loop() as loop:
        metrics.asyncio_tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        log.info("voicebot_ready", stt=config.stt.engine, tts=config.tts.engine,
                 llm=config.llm.engine)
        yield Voicebot(live=live, metrics=metrics, loop=loop,
                       environ=os.environ if environ is None else environ, models=models,
                       generation=generation,
                       workers=trio.CapacityLimiter(config.speech_workers))


async def serve_voicebot(live: LiveConfig, metrics: Metrics,
                         environ: Mapping[str, str] | None = None, *,
                         task_status: trio.TaskStatus[Voicebot] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """Host the voice bot's asyncio loop in the daemon's nursery; reports the Voicebot."""
    async with open_voicebot(live, metrics, environ) as voicebot:
        task_status.started(voicebot)
        await trio.sleep_forever()
