"""The bridge in-process: a real asyncio loop under Trio, a real RTP session, a real pipeline."""

from __future__ import annotations

import math
import struct
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio_asyncio
from structlog.testing import capture_logs

from tests.config_text import MINIMAL
from tests.harness import free_even_port_range
from voicedashd.bus import EventBus
from voicedashd.config import parse_config
from voicedashd.events import CallEvent, CallInfo, utc_now
from voicedashd.livecfg import LiveConfig
from voicedashd.media.ports import RtpPortPool
from voicedashd.media.sender import MediaClock
from voicedashd.media.session import MediaSession, SessionSettings
from voicedashd.metrics import Metrics
from voicedashd.sip.sdp import Answer
from voicedashd.store import open_store
from voicedashd.voicebot.bridge import Voicebot, VoicebotFailed, open_voicebot
from voicedashd.voicebot.echo import EchoReference
from voicedashd.voicebot.pipeline import (
    CallHooks,
    Models,
    build_models,
    build_pipeline,
    load_vad_model,
)

CONFIG = MINIMAL + """
[voicebot]
greeting = "Hello, this is a test of the greeting."
"""


@dataclass
class Harness:
    """A voicebot on its loop, an event bus with a recorder, and a way to open a call."""

    voicebot: Voicebot
    bus: EventBus
    metrics: Metrics
    pool: RtpPortPool
    clock: MediaClock
    nursery: trio.Nursery
    events: list[CallEvent] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def record(self, _: CallInfo, event: CallEvent) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, name: str, count: int = 1) -> None:
        while sum(e.name == name for e in self.events) < count:
            await self.changed.wait()

    def sample(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name)
        assert value is not None, name
        return value

    @asynccontextmanager
    async def call(self, name: str) -> AsyncIterator[tuple[CallInfo, MediaSession]]:
        """A registered call with a media session sending to a UDP socket of the test."""
        peer = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await peer.bind(("127.0.0.1", 0))
        info = CallInfo(call_id=name, tenant="acme", caller="555", caller_name=None,
                        callee="1001", callee_extension="1001", is_ai_handled=True,
                        created_at=utc_now())
        self.bus.register(info)
        media = self.pool.allocate()
        answer = Answer(body=b"", codec="PCMU", payload_type=0, clock_rate=8000,
                        dtmf_payload_type=None, ptime=20, direction="sendrecv",
                        remote_address="127.0.0.1", remote_port=peer.getsockname()[1],
                        on_hold=False)
        try:
            async with MediaSession(media, lambda: answer, SessionSettings(timeout=60),
                                    clock=self.clock, clock_nursery=self.nursery,
                                    call_id=name, on_dtmf=lambda _: None,
                                    may_send_to=lambda _: True,
                                    metrics=self.metrics) as session, \
                    trio.open_nursery() as caller:
                caller.start_soon(_send_silence, peer, media.port)
                yield info, session
                caller.cancel_scope.cancel()
        finally:
            self.pool.release(media)
            peer.close()


async def _send_silence(peer: trio.socket.SocketType, port: int) -> None:
    """The caller's RTP: PCMU silence every 20 ms (the bot starts with the caller's media)."""
    start = trio.current_time()
    for n in range(1_000_000):
        await trio.sleep_until(start + n * 0.02)
        header = struct.pack("!BBHII", 0x80, 0, n & 0xFFFF, (n * 160) & 0xFFFFFFFF, 1234)
        await peer.sendto(header + b"\xff" * 160, ("127.0.0.1", port))


@asynccontextmanager
async def harness(tmp_path: Path, voicebot: str = "") -> AsyncIterator[Harness]:
    path = tmp_path / "voicedashd.toml"
    config = parse_config(CONFIG + voicebot, path=path,
                          environ={"VOICEDASHD_JWT_SECRET": "s" * 48})
    live, metrics = LiveConfig(config), Metrics()
    async with open_store(tmp_path / "store.sqlite3", metrics) as store, \
            open_voicebot(live, metrics, {}) as bot, trio.open_nursery() as nursery:
        await nursery.start(store.run_writer)
        bus = EventBus(store, metrics)
        h = Harness(bot, bus, metrics, RtpPortPool("127.0.0.1", *free_even_port_range()),
                    MediaClock(), nursery)
        bus.subscribe(h.record)
        yield h
        nursery.cancel_scope.cancel()


async def test_cancelling_the_call_stops_its_pipeline_promptly(tmp_path: Path) -> None:
    """The pipeline is a child of the call task: cancelling the task stops it (Pipecat
    returns normally, the bridge turns that into Cancelled) and leaves no asyncio task."""
    with trio.fail_after(30):
        async with harness(tmp_path) as h, h.call("c1") as (info, session):
            stopped = trio.Event()
            outcome: list[str] = []

            async def call_task(scope: trio.CancelScope) -> None:
                with scope:
                    await h.voicebot.run(info, session, h.bus)
                    outcome.append("returned")
                outcome.append("cancelled" if scope.cancelled_caught else "not cancelled")
                stopped.set()

            scope = trio.CancelScope()
            h.nursery.start_soon(call_task, scope)
            await h.wait_for("tts_started")  # the greeting is being spoken
            assert h.sample("voicedashd_voicebot_pipelines") == 1
            assert h.sample("voicedashd_asyncio_tasks") > 0
            scope.cancel()
            with trio.fail_after(5):  # Pipecat's cancel timeout is 2 s
                await stopped.wait()
            assert outcome == ["cancelled"]
            assert h.sample("voicedashd_voicebot_pipelines") == 0
            assert h.sample("voicedashd_asyncio_tasks") == 0
            # The interrupted sentence is closed, and nothing else is said.
            assert [e.name for e in h.events] == ["tts_started", "tts_completed"]


async def test_a_pipeline_that_raises_fails_its_call_not_the_loop(tmp_path: Path) -> None:
    """A processor raising inside the pipeline makes run() raise VoicebotFailed from that
    very exception, traceback and all, for the call task to log; the bridge logs nothing of
    it. The same loop then runs the next call normally."""
    plugin = 'processors = ["tests.unit.test_voicebot_bridge:raise_on_start"]\n'
    with trio.fail_after(30):
        async with harness(tmp_path, plugin) as h:
            async with h.call("bad") as (info, session):
                with capture_logs() as logs, pytest.raises(VoicebotFailed) as failed:
                    await h.voicebot.run(info, session, h.bus)
            cause = failed.value.__cause__
            assert isinstance(cause, RuntimeError) and str(cause) == "boom at start"
            raised_at = traceback.extract_tb(cause.__traceback__)[-1]
            assert (raised_at.name, raised_at.filename) == ("process_frame", __file__)
            assert "Boom" in "".join(traceback.format_exception(failed.value))
            assert not [e for e in logs if "boom" in str(e)]
            assert h.sample("voicedashd_voicebot_pipeline_errors_total") == 1
            assert h.sample("voicedashd_asyncio_tasks") == 0
            async with h.call("good") as (info, session):
                with trio.move_on_after(20) as scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(h.voicebot.run, info, session, h.bus)
                        await h.wait_for("tts_completed")
                        nursery.cancel_scope.cancel()
                assert not scope.cancelled_caught
            said = [e for e in h.events if e.call_id == "good" and e.name == "tts_started"]
            assert said and said[0].text.startswith("Hello")  # type: ignore[attr-defined]


async def test_an_error_a_processor_gets_past_is_logged_once_with_the_call(
        tmp_path: Path) -> None:
    """A non-fatal error report leaves the call running; it is logged once, as
    voicebot_processor_error with the call's id (not again as Pipecat's own log line)."""
    plugin = 'processors = ["tests.unit.test_voicebot_bridge:glitch_on_start"]\n'
    with trio.fail_after(30):
        async with harness(tmp_path, plugin) as h, h.call("glitchy") as (info, session):
            with capture_logs() as logs, trio.move_on_after(20) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(h.voicebot.run, info, session, h.bus)
                    await h.wait_for("tts_completed")  # the greeting was said all the same
                    nursery.cancel_scope.cancel()
            assert not scope.cancelled_caught
    reports = [e for e in logs if "a passing glitch" in str(e)]
    assert [(e["event"], e["log_level"], e["call_id"]) for e in reports] == [
        ("voicebot_processor_error", "warning", "glitchy")]
    assert h.sample("voicedashd_voicebot_pipeline_errors_total") == 0


async def test_a_reload_that_fails_keeps_the_models_and_logs_why_once(tmp_path: Path) -> None:
    """A plugin that cannot be loaded: the bot keeps the models it has; the log line says
    what was wrong in one line and carries the traceback."""
    with trio.fail_after(30):
        async with harness(tmp_path) as h:
            before = h.voicebot.models
            h.voicebot.live.replace(parse_config(
                CONFIG + 'processors = ["tests.no_such_module:factory"]\n',
                path=tmp_path / "voicedashd.toml", environ={"VOICEDASHD_JWT_SECRET": "s" * 48}))
            with capture_logs() as logs:
                await h.voicebot.reload()
            assert h.voicebot.models is before
            [failed] = [e for e in logs if e["log_level"] == "error"]
            assert failed["event"] == "voicebot_reload_failed"
            assert "tests.no_such_module:factory" in failed["error"]
            assert failed["exc_info"] is True


def raise_on_start(call: CallInfo) -> object:
    """A plugin whose processor raises as soon as the pipeline starts (calls named bad)."""
    from pipecat.frames.frames import Frame, StartFrame
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    class Boom(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)
            if isinstance(frame, StartFrame):
                raise RuntimeError("boom at start")

    return Boom() if call.call_id == "bad" else None


def glitch_on_start(call: CallInfo) -> object:
    """A plugin whose processor reports an error it gets past as the pipeline starts."""
    from pipecat.frames.frames import Frame, StartFrame
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

    class Glitch(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)
            if isinstance(frame, StartFrame):
                await self.push_error("a passing glitch")

    return Glitch()


def test_trio_task_count_outside_trio_is_not_a_number() -> None:
    assert math.isnan(Metrics().registry.get_sample_value("voicedashd_trio_tasks") or 0.0)


async def test_cloud_and_self_hosted_engines_are_chosen_by_config(tmp_path: Path) -> None:
    """An OpenAI-compatible LLM (and Whisper-style STT, TTS) by base_url/model/key: the
    pipeline gets those services, the LLM between the responder and the TTS."""
    config = parse_config(CONFIG + """
[voicebot.llm]
engine = "openai"
model = "llama3.1"
base_url = "http://127.0.0.1:11434/v1"
api_key_env = "LLM_KEY"
[voicebot.stt]
engine = "openai"
model = "whisper-1"
base_url = "http://127.0.0.1:9000/v1"
[voicebot.tts]
engine = "openai"
voice = "alloy"
""", path=tmp_path / "v.toml", environ={"VOICEDASHD_JWT_SECRET": "s" * 48, "LLM_KEY": "k"})
    info = CallInfo(call_id="c", tenant="acme", caller="555", caller_name=None, callee="1001",
                    callee_extension="1001", is_ai_handled=True, created_at=utc_now())
    async with trio_asyncio.open_loop() as loop:
        vad = await trio.to_thread.run_sync(load_vad_model)
        models = await trio.to_thread.run_sync(build_models, config.voicebot, Models(vad=vad))

        async def build() -> list[str]:
            hooks = CallHooks(inbox=None, outbox=None, events=None, offload=None,  # type: ignore[arg-type]
                              try_offload=None,  # type: ignore[arg-type]
                              echo=EchoReference(), run_process=None, observe=lambda *_: None,  # type: ignore[arg-type]
                              environ={"LLM_KEY": "k"})
            pipeline = build_pipeline(info, config.voicebot, models, hooks)
            return [type(p).__name__ for p in pipeline.processors]

        names = await trio_asyncio.aio_as_trio(build, loop=loop)()
    assert names[2:-1] == ["VADProcessor", "OpenAISTTService", "Responder", "OpenAILLMService",
                           "OpenAITTSService", "RtpOutputTransport"]
