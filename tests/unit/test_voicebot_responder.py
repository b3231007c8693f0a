"""The Responder in a real Pipecat pipeline: greeting, answers, fallback, LLM context, goodbye."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio_asyncio  # noqa: F401 - before Pipecat, see voicedashd/voicebot/__init__.py
from pipecat.frames.frames import (
    EndWorkerFrame,
    Frame,
    InterimTranscriptionFrame,
    LLMContextFrame,
    LLMTextFrame,
    TranscriptionFrame,
    VADUserStoppedSpeakingFrame,
)

from tests.pipecat_run import run_frames
from voicedashd.voicebot.rag import KnowledgeBase, chunk_markdown
from voicedashd.voicebot.responder import AnswerPolicy, Responder, Wording
from voicedashd.voicebot.turns import Conversation, TurnClock

KNOWLEDGE = """\
# Opening hours

We are open Monday to Friday from 9:00 to 18:00. We are closed on Sundays.

# Prices

A haircut costs 25 pounds.
"""
WORDING = Wording(greeting="Hello, how can I help?", fallback="I'll pass your message on.",
                  farewell="Goodbye.", system_prompt="You answer calls for extension 1001.")


@dataclass
class Recorder:
    """Collects a call's events as the bridge would publish them."""

    events: list[tuple[str, str]] = field(default_factory=list)
    latencies: list[str] = field(default_factory=list)

    def transcript(self, text: str, *, is_final: bool) -> None:
        self.events.append(("final" if is_final else "interim", text))

    def tts_started(self, text: str) -> None:
        self.events.append(("tts_started", text))

    def tts_completed(self) -> None:
        self.events.append(("tts_completed", ""))

    def observe(self, name: str, seconds: float) -> None:
        assert seconds >= 0
        self.latencies.append(name)


def said(frames: list[Frame]) -> list[str]:
    return [f.text for f in frames if isinstance(f, LLMTextFrame)]


async def respond(frames: list[Frame], *, use_llm: bool = False,
                  recorder: Recorder | None = None) -> list[Frame]:
    recorder = recorder or Recorder()
    knowledge = KnowledgeBase(tuple(chunk_markdown(KNOWLEDGE, "k.md", "k")))
    return await run_frames(
        lambda _: [Responder(knowledge=knowledge, wording=WORDING,
                             policy=AnswerPolicy(sentences=1, use_llm=use_llm),
                             conversation=Conversation(recorder), turns=TurnClock(),
                             observe=recorder.observe)],
        frames, (LLMTextFrame, LLMContextFrame, TranscriptionFrame, EndWorkerFrame))


def final(text: str) -> TranscriptionFrame:
    return TranscriptionFrame(text, "", "2026-01-01T00:00:00Z", finalized=True)


async def test_greets_then_answers_from_the_knowledge() -> None:
    recorder = Recorder()
    out = await respond([VADUserStoppedSpeakingFrame(stop_secs=0.3),
                         InterimTranscriptionFrame("what are", "", "t"),
                         final("what are your opening hours")], recorder=recorder)
    assert said(out) == ["Hello, how can I help?",
                         "We are open Monday to Friday from 9:00 to 18:00."]
    assert not [f for f in out if isinstance(f, TranscriptionFrame)]  # consumed here
    assert recorder.events == [("interim", "what are"), ("final", "what are your opening hours")]
    assert recorder.latencies == ["stt", "answer"]


async def test_unanswerable_questions_get_the_fallback() -> None:
    out = await respond([final("do you sell bicycles")])
    assert said(out)[-1] == "I'll pass your message on."


async def test_with_an_llm_the_passages_ground_the_conversation() -> None:
    out = await respond([final("how much is a haircut")], use_llm=True)
    contexts = [f for f in out if isinstance(f, LLMContextFrame)]
    assert len(contexts) == 1
    messages = contexts[0].context.get_messages()
    system = messages[0]["content"]
    assert messages[0]["role"] == "system"
    assert system.startswith("You answer calls for extension 1001.")
    assert "[Prices] A haircut costs 25 pounds." in system
    assert "I'll pass your message on." in system
    assert messages[-1] == {"role": "user", "content": "how much is a haircut"}


async def test_goodbye_gets_the_farewell_then_ends_the_pipeline() -> None:
    out = await respond([final("thank you goodbye"), final("what are your opening hours")])
    assert said(out) == ["Hello, how can I help?", "Goodbye."]  # nothing after the goodbye


async def test_a_prompt_is_said_with_its_mark_behind_it() -> None:
    import asyncio

    from voicedashd.voicebot.prompt import Line, Prompt
    from voicedashd.voicebot.transport import PlayedMarkFrame

    class OnePrompt:
        def __init__(self) -> None:
            self.given = False

        async def get(self) -> Prompt:
            if self.given:
                await asyncio.Event().wait()  # nothing more is asked
            self.given = True
            return Prompt(Line.TRANSFER_FAILED, played=lambda queued: None)

    wording = Wording(greeting="Hello.", fallback="-", farewell="Bye.", system_prompt="-",
                      transfer="Putting you through.", transfer_failed="That did not work.")
    knowledge = KnowledgeBase(())
    recorder = Recorder()
    out = await run_frames(
        lambda _: [Responder(knowledge=knowledge, wording=wording, policy=AnswerPolicy(),
                             conversation=Conversation(recorder), turns=TurnClock(),
                             observe=recorder.observe, prompts=OnePrompt())],
        [final("hello")] * 3, (LLMTextFrame, PlayedMarkFrame))
    texts = [f.text if isinstance(f, LLMTextFrame) else "mark" for f in out]
    assert texts.count("That did not work.") == 1
    assert texts[texts.index("That did not work.") + 1] == "mark"
    assert "Putting you through." not in texts


async def _barge_in_after_greeting(wording: Wording) -> list[Frame]:
    """The bot is speaking when the caller's words come at once."""
    from pipecat.frames.frames import BotStartedSpeakingFrame, InterruptionFrame

    recorder = Recorder()
    return await run_frames(
        lambda _: [Responder(knowledge=KnowledgeBase(()), wording=wording,
                             policy=AnswerPolicy(), conversation=Conversation(recorder),
                             turns=TurnClock(), observe=recorder.observe)],
        [BotStartedSpeakingFrame(), InterimTranscriptionFrame("wait a second", "", "t"),
         final("wait a second please")], (LLMTextFrame, InterruptionFrame))


async def test_a_recorded_calls_notice_comes_first_and_the_caller_cannot_cut_it_short() -> None:
    from pipecat.frames.frames import InterruptionFrame

    from voicedashd.voicebot.transport import PlayedMarkFrame

    noticed = Wording(greeting="Hello.", fallback="Noted.", farewell="Bye.", system_prompt="-",
                      notice="This call is recorded.")
    out = await _barge_in_after_greeting(noticed)
    assert said(out) == ["This call is recorded.", "Hello.", "Noted."]
    assert not [f for f in out if isinstance(f, InterruptionFrame)]
    # The same words without a notice interrupt the greeting: it is the notice that holds.
    plain = await _barge_in_after_greeting(Wording(greeting="Hello.", fallback="Noted.",
                                                   farewell="Bye.", system_prompt="-"))
    assert said(plain)[0] == "Hello."
    assert [f for f in plain if isinstance(f, InterruptionFrame)]
    # The mark behind the notice is what lets barge-in back in once it has played.
    marks = await run_frames(
        lambda _: [Responder(knowledge=KnowledgeBase(()), wording=noticed,
                             policy=AnswerPolicy(), conversation=Conversation(Recorder()),
                             turns=TurnClock(), observe=lambda *_: None)],
        [], (LLMTextFrame, PlayedMarkFrame))
    kinds = [f.text if isinstance(f, LLMTextFrame) else "mark" for f in marks]
    assert kinds == ["This call is recorded.", "mark", "Hello."]
