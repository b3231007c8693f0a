"""The bot's turn-taking: greet, answer each final caller utterance, yield to barge-in."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    EndWorkerFrame,
    Frame,
    InterimTranscriptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    StartFrame,
    TranscriptionFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from .farewell import is_farewell
from .host import Observe, Prompts
from .prompt import Line, Prompt
from .rag import KnowledgeBase
from .transport import PlayedMarkFrame
from .turns import Conversation, TurnClock


@dataclass(frozen=True, slots=True)
class Wording:
    """What the bot says in one call, placeholders already filled in."""

    greeting: str
    fallback: str
    farewell: str
    system_prompt: str
    transfer: str = ""
    transfer_failed: str = ""
    notice: str = ""  # a recording tenant's record_notice: said first, never interrupted

    def line(self, line: Line) -> str:
        """The text of a line the call task asks for."""
        return self.transfer if line is Line.TRANSFER else self.transfer_failed


@dataclass(frozen=True, slots=True)
class AnswerPolicy:
    """How answers are found: passages retrieved, sentences spoken, whether an LLM phrases it."""

    top_k: int = 3
    sentences: int = 2
    use_llm: bool = False
    barge_in: bool = True


class Responder(FrameProcessor):
    """Greets the caller and answers each final transcript from the knowledge base.

    Without an LLM the answer is extractive (the best passage's most relevant sentences, or
    the fallback); with one, the retrieved passages and the conversation go to the LLM as
    its context. The answer goes downstream as an LLM-style response so the TTS service
    speaks it sentence by sentence. Words from the caller while the bot talks interrupt it
    (recognised words, not mere sound: the bot's own echo or a cough does not); a final line
    that only says goodbye gets the farewell, and the bot hangs up. Lines the call task asks
    for (prompts) are said as they come, after what the bot is saying.
    """

    def __init__(self, *, knowledge: KnowledgeBase, wording: Wording, policy: AnswerPolicy,
                 conversation: Conversation, turns: TurnClock, observe: Observe,
                 prompts: Prompts | None = None) -> None:
        super().__init__(name="responder")
        self._knowledge = knowledge
        self._wording = wording
        self._policy = policy
        self._conversation = conversation
        self._turns = turns
        self._observe = observe
        self._bot_speaking = False
        self._hanging_up = False
        self._prompts = prompts
        self._prompt_reader: Any = None
        self._notice_until = 0.0  # monotonic time the notice has played (inf: not yet queued)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Route one frame: transcripts are answered here, the rest passes on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            if self._wording.notice:
                await self._say_notice()
            await self._say(self._wording.greeting)
            if self._prompts is not None and self._prompt_reader is None:
                self._prompt_reader = self.create_task(self._read_prompts(), "prompts")
        elif isinstance(frame, EndFrame | CancelFrame):
            await self._stop_prompts()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterimTranscriptionFrame):
            if self._conversation.transcript(frame.text, is_final=False):
                await self._barge_in()
        elif isinstance(frame, TranscriptionFrame):
            await self._on_final(frame.text)
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._turns.caller_stopped(frame.stop_secs)
            await self.push_frame(frame, direction)
        else:
            if isinstance(frame, BotStartedSpeakingFrame | BotStoppedSpeakingFrame):
                self._bot_speaking = isinstance(frame, BotStartedSpeakingFrame)
            await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        """Stop reading prompts (if the end of the pipeline did not)."""
        await self._stop_prompts()
        await super().cleanup()

    async def _stop_prompts(self) -> None:
        reader, self._prompt_reader = self._prompt_reader, None
        if reader is not None:
            await self.cancel_task(reader)

    async def _read_prompts(self) -> None:
        assert self._prompts is not None
        while True:
            await self._say_prompt(await self._prompts.get())

    async def _say_prompt(self, prompt: Prompt) -> None:
        if self._hanging_up:
            return
        await self._say(self._wording.line(prompt.line))
        if prompt.played is not None:  # follows the words through TTS to the output
            await self.push_frame(PlayedMarkFrame(played=prompt.played))

    async def _say_notice(self) -> None:
        """Say the recording notice; words from the caller do not cut it short."""
        self._notice_until = math.inf

        def played(queued: float) -> None:
            self._notice_until = time.monotonic() + queued

        await self._say(self._wording.notice)
        await self.push_frame(PlayedMarkFrame(played=played))

    async def _barge_in(self) -> None:
        if time.monotonic() < self._notice_until:
            return  # the caller is told the call is recorded, whatever they say meanwhile
        if self._policy.barge_in and self._bot_speaking and not self._hanging_up:
            await self.broadcast_interruption()

    async def _on_final(self, text: str) -> None:
        if not self._conversation.transcript(text, is_final=True):
            return  # the bot heard itself
        await self._barge_in()
        latency = self._turns.transcript()
        if latency is not None:
            self._observe("stt", latency)
        if self._hanging_up:
            return
        if self._wording.farewell and is_farewell(text):
            self._hanging_up = True
            await self._say(self._wording.farewell)
            # Ends the pipeline once everything before it, the farewell included, is played.
            await self.push_frame(EndWorkerFrame(reason="caller said goodbye"),
                                  FrameDirection.UPSTREAM)
            return
        if self._policy.use_llm:
            await self._ask_llm()
            return
        answer = self._knowledge.answer(text, sentences=self._policy.sentences)
        await self._say(answer or self._wording.fallback)

    async def _ask_llm(self) -> None:
        question = self._conversation.messages[-1]["content"]
        hits = self._knowledge.search(question, k=self._policy.top_k)
        passages = "\n\n".join(f"[{h.passage.title}] {h.passage.text}" for h in hits)
        system = (f"{self._wording.system_prompt}\n\nKnowledge passages:\n"
                  f"{passages or '(none matched the question)'}\n\nIf the passages do not "
                  f"answer the question, say: {self._wording.fallback}")
        context = LLMContext([{"role": "system", "content": system},
                              *self._conversation.recent()])  # type: ignore[list-item]
        self._answered()
        await self.push_frame(LLMContextFrame(context))

    async def _say(self, text: str) -> None:
        if not text.strip():
            return
        self._answered()
        await self.push_frame(LLMFullResponseStartFrame())
        await self.push_frame(LLMTextFrame(text))
        await self.push_frame(LLMFullResponseEndFrame())

    def _answered(self) -> None:
        latency = self._turns.answer()
        if latency is not None:
            self._observe("answer", latency)
