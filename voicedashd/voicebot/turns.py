"""Timing of one call's turns: caller stops speaking -> transcript -> answer -> first audio."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .host import CallEvents

HISTORY_MESSAGES = 12


@dataclass
class TurnClock:
    """Marks of the turn in progress (monotonic seconds), read once each by the latency metrics."""

    speech_ended: float | None = None
    transcribed: float | None = None
    answered: float | None = None

    def caller_stopped(self, stop_secs: float) -> None:
        """The VAD reported the end of speech, stop_secs after the caller actually stopped."""
        self.speech_ended = time.monotonic() - stop_secs
        self.transcribed = self.answered = None

    def transcript(self) -> float | None:
        """A final transcript arrived: seconds since the caller stopped (None if unknown)."""
        self.transcribed = time.monotonic()
        return None if self.speech_ended is None else self.transcribed - self.speech_ended

    def answer(self) -> float | None:
        """The answer text is ready: seconds since the transcript (None if no turn is open)."""
        if self.transcribed is None or self.answered is not None:
            return None
        self.answered = time.monotonic()
        return self.answered - self.transcribed

    def first_audio(self) -> float | None:
        """Bot audio goes out: seconds since the caller stopped, once per answered turn."""
        if self.answered is None or self.speech_ended is None:
            return None
        waited = time.monotonic() - self.speech_ended
        self.speech_ended = self.transcribed = self.answered = None
        return waited


@dataclass
class Conversation:
    """Passes a call's events on and keeps the call as chat messages (for an LLM's context)."""

    events: CallEvents
    messages: list[dict[str, str]] = field(default_factory=list)

    def transcript(self, text: str, *, is_final: bool) -> None:
        """The caller said something; finals join the conversation."""
        self.events.transcript(text, is_final=is_final)
        if is_final:
            self._add("user", text)

    def tts_started(self, text: str) -> None:
        """The bot started a sentence; it joins the bot's current message."""
        self.events.tts_started(text)
        self._add("assistant", text)

    def tts_completed(self) -> None:
        """The bot finished its sentence."""
        self.events.tts_completed()

    def recent(self) -> list[dict[str, str]]:
        """The last HISTORY_MESSAGES messages."""
        return [dict(m) for m in self.messages[-HISTORY_MESSAGES:]]

    def _add(self, role: str, text: str) -> None:
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"] += " " + text
        else:
            self.messages.append({"role": role, "content": text})
        del self.messages[:-HISTORY_MESSAGES]
