"""Timing of one call's turns: caller stops speaking -> transcript -> answer -> first audio."""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field

from .host import CallEvents

HISTORY_MESSAGES = 12
ECHO_WINDOW = 2.0  # seconds after the bot finished a sentence in which it may still come back
ECHO_SHARE = 0.6  # a line whose words are mostly the bot's recent words is its echo
_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


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
    """Passes a call's events on and keeps the call as chat messages (for an LLM's context).

    It also remembers what the bot said lately: a line or phone that echoes lets the bot's
    own voice come back as "caller" speech, which must not become the caller's words.
    """

    events: CallEvents
    messages: list[dict[str, str]] = field(default_factory=list)
    # (monotonic time the sentence finished playing, or None while it plays; its words)
    _spoken: deque[tuple[float | None, frozenset[str]]] = field(
        default_factory=lambda: deque(maxlen=8))

    def transcript(self, text: str, *, is_final: bool) -> bool:
        """The caller said something (finals join the conversation); False for the bot's echo."""
        if self.is_echo(text):
            return False
        self.events.transcript(text, is_final=is_final)
        if is_final:
            self._add("user", text)
        return True

    def tts_started(self, text: str) -> None:
        """The bot started a sentence; it joins the bot's current message."""
        self._sentence_ended()
        self._spoken.append((None, frozenset(_words(text))))
        self.events.tts_started(text)
        self._add("assistant", text)

    def tts_completed(self) -> None:
        """The bot finished its sentence."""
        self._sentence_ended()
        self.events.tts_completed()

    def is_echo(self, text: str) -> bool:
        """Whether a recognised line is mostly what the bot is saying or just said."""
        words = _words(text)
        if not words:
            return False
        now = time.monotonic()
        recent = frozenset().union(*(spoken for ended, spoken in self._spoken
                                     if ended is None or now - ended <= ECHO_WINDOW))
        return sum(word in recent for word in words) >= ECHO_SHARE * len(words)

    def _sentence_ended(self) -> None:
        now = time.monotonic()
        for index, (ended, spoken) in enumerate(self._spoken):
            if ended is None:
                self._spoken[index] = (now, spoken)

    def recent(self) -> list[dict[str, str]]:
        """The last HISTORY_MESSAGES messages."""
        return [dict(m) for m in self.messages[-HISTORY_MESSAGES:]]

    def _add(self, role: str, text: str) -> None:
        if self.messages and self.messages[-1]["role"] == role:
            self.messages[-1]["content"] += " " + text
        else:
            self.messages.append({"role": role, "content": text})
        del self.messages[:-HISTORY_MESSAGES]
