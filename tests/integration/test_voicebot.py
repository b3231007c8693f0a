"""The voice bot end to end: the real daemon, sipp or a talking UDP caller, the hub, no mocks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.harness import (
    DaemonConfig,
    RunningDaemon,
    User,
    free_even_port_range,
    make_config,
    run_daemon,
)
from tests.integration.test_hub import connect, next_event, token_of
from tests.sipp import run_sipp
from tests.voice_caller import SILENT_RMS, speak, voice_call
from tests.voicebot_plugins import FAILING_EXTENSION

REPO = Path(__file__).resolve().parents[2]
QUESTION = "What are your opening hours on Saturday?"
KNOWLEDGE = """\
# Bella Hair Salon

Bella Hair Salon is a family-run hairdresser in the town centre.

## Opening hours

We are open Monday to Friday from 9:00 to 18:00, and on Saturday from 10:00 to 14:00.
We are closed on Sundays and public holidays.

## Prices

A haircut costs 25 pounds. Colouring starts at 60 pounds.

## Location

The salon is at 12 High Street, next to the post office.
"""
GREETING = "Hello, how can I help?"


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The caller's lines as PCMU: silence while the bot greets, the line, silence after."""
    directory = tmp_path_factory.mktemp("voice")
    return {
        "question": speak(QUESTION, directory / "question.ul", lead=3.0, tail=4.0),
        "goodbye": speak("thank you goodbye", directory / "goodbye.ul", lead=3.0, tail=4.0),
        "hello": speak("hello", directory / "hello.ul", lead=3.0, tail=2.0),
    }


def bot_config(tmp_path: Path, *, voicebot: str = "", users: list[User] | None = None,
               ) -> DaemonConfig:
    """A daemon config whose [voicebot] answers from a small salon knowledge folder."""
    config = make_config(tmp_path, users=users or [User("1001"), User(FAILING_EXTENSION)])
    config.rtp_ports = free_even_port_range(120)
    (tmp_path / "knowledge").mkdir(exist_ok=True)
    (tmp_path / "knowledge" / "salon.md").write_text(KNOWLEDGE)
    config.extra = (f'[voicebot]\nknowledge = "knowledge"\ngreeting = "{GREETING}"\n'
                    f"{voicebot}")
    config.write()
    return config


def logged(daemon: RunningDaemon, name: str, **fields: Any) -> list[dict[str, Any]]:
    return [line for line in daemon.logs if line.get("event") == name
            and all(line.get(k) == v for k, v in fields.items())]


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in metrics")


async def metrics(config: DaemonConfig) -> str:
    async with httpx.AsyncClient(base_url=config.api_url) as http:
        return (await http.get("/metrics")).text


async def test_question_over_sipp_is_answered_from_the_knowledge_live(
        tmp_path: Path, audio: dict[str, Path]) -> None:
    """sipp plays the question as RTP; the hub streams transcript, answer and the call's end."""
    alice = User("1001")
    config = bot_config(tmp_path, users=[alice])
    shutil.copy(audio["question"], tmp_path / "question.ul")
    media_port = free_even_port_range(4)[0]
    with trio.fail_after(90):
        async with run_daemon(config.path) as daemon:
            token = await token_of(config, alice)
            async with connect(config, token) as hub, trio.open_nursery() as nursery:
                async def place_call() -> None:
                    result = await run_sipp(config.sip_port, tmp_path, scenario="voicebot_call",
                                            extra=("-d", "16000", "-mp", str(media_port)))
                    assert result.ok, result.errors

                nursery.start_soon(place_call)
                started = await next_event(hub, "call_started")
                call_id = started["call_id"]
                subscribed = await hub.subscribe(call_id, since_seq=0)
                events = [e for e in subscribed.events if e["event"] != "call_started"]
                while not events or events[-1]["event"] != "call_ended":
                    events.append(await next_event(hub, timeout=30))

    names = [e["event"] for e in events]
    transcripts = [e["data"] for e in events if e["event"] == "stt_transcript"]
    said = [e["data"]["text"] for e in events if e["event"] == "tts_started"]
    assert said[0] == GREETING, said
    interim = [t for t in transcripts if not t["is_final"]]
    final = [t for t in transcripts if t["is_final"]]
    assert interim and all(t["speaker"] == "caller" for t in transcripts), transcripts
    assert len(final) == 1 and "opening hours" in final[0]["text"], final
    answer_at = names.index("tts_started", names.index("stt_transcript"))
    answer = events[answer_at]["data"]["text"]
    assert "Monday to Friday" in answer, answer  # the knowledge passage, read out
    assert "tts_completed" in names[answer_at:], names
    assert events[-1]["data"]["reason"] == "caller_hangup"
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    session = logged(daemon, "media_session_ended", call_id=call_id)
    assert session and session[0]["rtp_out_audio"] > 50, session  # the bot's speech went out


async def test_the_answer_comes_back_as_speech(tmp_path: Path, audio: dict[str, Path]) -> None:
    """A UDP caller asks; what comes back over RTP after the question is loud speech."""
    config = bot_config(tmp_path)
    ulaw = audio["question"].read_bytes()
    with trio.fail_after(60):
        async with run_daemon(config.path) as daemon:
            async with voice_call(config.sip_port, ulaw) as call:
                await daemon.wait_for_log("tts_started", timeout=30, start=0,
                                          text=await _answer_text(daemon))
                await call.finished_talking.wait()
            assert call.speech_end is not None
            greeting = call.replies_after(call.started)
            assert max(level for _, level in greeting) > SILENT_RMS  # the greeting was heard
            reply = call.first_loud_after(call.speech_end)
            assert reply is not None, "nothing but silence came back after the question"
            loud = [level for t, level in call.replies_after(reply) if level > SILENT_RMS]
            assert len(loud) > 50  # a second of speech or more, not a click
            ended = await daemon.wait_for_log("call_ended", reason="caller_hangup")
            assert ended["call_id"]


async def _answer_text(daemon: RunningDaemon) -> str:
    """The text of the first tts_started after the caller's final transcript."""
    final = await daemon.wait_for_log("stt_transcript", timeout=30, is_final=True)
    assert "opening hours" in final["text"], final
    index = daemon.logs.index(final)
    answer = await daemon.wait_for_log("tts_started", timeout=10, start=index)
    return str(answer["text"])


async def test_a_failing_pipeline_ends_its_call_only(tmp_path: Path,
                                                     audio: dict[str, Path]) -> None:
    """A plugin processor that raises (calls to 2666 only) ends that call with BYE and reason
    error; a concurrent call is answered as usual and the daemon stays ready."""
    config = bot_config(tmp_path,
                        voicebot='processors = ["tests.voicebot_plugins:fail_for_2666"]\n')
    ulaw = audio["question"].read_bytes()
    with trio.fail_after(90):
        async with run_daemon(config.path, env={"PYTHONPATH": str(REPO)}) as daemon:
            async with voice_call(config.sip_port, ulaw) as good, \
                    voice_call(config.sip_port, ulaw, extension=FAILING_EXTENSION) as bad:
                await bad.bye_from_daemon.wait()
                failed = await daemon.wait_for_log("call_ended", reason="error")
                answer = await _answer_text(daemon)
                assert "Monday" in answer
                await good.finished_talking.wait()
                assert not good.bye_from_daemon.is_set()
                assert good.speech_end is not None
                assert good.first_loud_after(good.speech_end) is not None
            # Logged once, by the call task, with the traceback down to the plugin's raise.
            [error] = logged(daemon, "call_failed", call_id=failed["call_id"])
            assert "VoicebotFailed" in error["exception"]
            assert "RuntimeError: plugin bug" in error["exception"]
            assert "in process_frame" in error["exception"]
            assert not [line for line in daemon.logs if line.get("level") == "error"
                        and line.get("event") != "call_failed"]
            ended = await daemon.wait_for_log("call_ended", reason="caller_hangup")
            assert ended["call_id"] != failed["call_id"]
            async with httpx.AsyncClient(base_url=config.api_url) as http:
                assert (await http.get("/readyz")).status_code == 200
            text = await metrics(config)
            assert metric(text, "voicedashd_voicebot_pipeline_errors_total") == 1.0
            assert metric(text, "voicedashd_voicebot_pipelines") == 0.0


async def test_goodbye_makes_the_bot_say_farewell_and_hang_up(
        tmp_path: Path, audio: dict[str, Path]) -> None:
    config = bot_config(tmp_path)
    with trio.fail_after(60):
        async with run_daemon(config.path) as daemon:
            async with voice_call(config.sip_port, audio["goodbye"].read_bytes()) as call:
                await call.bye_from_daemon.wait()
            ended = await daemon.wait_for_log("call_ended", reason="bot_hangup")
            said = [e["text"] for e in logged(daemon, "tts_started", call_id=ended["call_id"])]
            assert said[-2:] == ["Thank you for calling.", "Goodbye."], said
            assert call.speech_end is not None
            assert call.first_loud_after(call.speech_end) is not None  # the farewell was heard


@pytest.mark.slow
async def test_hang_up_while_the_bot_speaks_frees_everything(
        tmp_path: Path, audio: dict[str, Path]) -> None:
    """BYE during speech stops the pipeline at once; after 50 such calls no task, pipeline or
    RTP port is left over (operator-visible: /metrics, media_session_ended logs)."""
    config = bot_config(tmp_path)
    shutil.copy(audio["hello"], tmp_path / "question.ul")
    with trio.fail_after(240):
        async with run_daemon(config.path) as daemon:
            baseline = await metrics(config)

            # One call hung up in the middle of the greeting: the pipeline stops quickly.
            async with voice_call(config.sip_port, audio["hello"].read_bytes()) as call:
                start = len(daemon.logs)
                await daemon.wait_for_log("tts_started", timeout=20, start=start)
            hung_up = trio.current_time()
            ended = await daemon.wait_for_log("call_ended", timeout=10, start=start)
            assert ended["reason"] == "caller_hangup"
            assert trio.current_time() - hung_up < 3.0
            assert call.replies_after(call.started)  # it was talking

            # 50 calls hung up while the bot greets (1 s in), 10 at a time.
            total = len(logged(daemon, "call_ended")) + 50
            media_port = free_even_port_range(4)[0]
            result = await run_sipp(config.sip_port, tmp_path, scenario="voicebot_call",
                                    calls=50, rate=5, timeout=120,
                                    extra=("-d", "1000", "-l", "10", "-mp", str(media_port)))
            assert result.ok, result.errors
            with trio.fail_after(30):
                while len(logged(daemon, "call_ended")) < total:
                    await daemon._changed.wait()
            with trio.fail_after(10):
                while len(logged(daemon, "media_session_ended")) < total:
                    await daemon._changed.wait()
            # SIP transactions outlive their calls by up to 32 s (timer J): poll until the
            # task count is back at the baseline (no event says "timers are done").
            baseline_tasks = metric(baseline, "voicedashd_trio_tasks")
            with trio.fail_after(45):
                while True:
                    after = await metrics(config)
                    if metric(after, "voicedashd_trio_tasks") <= baseline_tasks:
                        break
                    await trio.sleep(1)
    for name in ("voicedashd_voicebot_pipelines", "voicedashd_active_calls"):
        assert metric(after, name) == 0.0, name
    assert metric(after, "voicedashd_asyncio_tasks") <= metric(baseline, "voicedashd_asyncio_tasks")
    reasons = {line["reason"] for line in logged(daemon, "call_ended")}
    assert reasons == {"caller_hangup"}, reasons
    assert not logged(daemon, "call_failed")

