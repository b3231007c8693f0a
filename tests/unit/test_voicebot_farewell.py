"""When a caller's final line ends the call, and when the bot hears only itself."""

from __future__ import annotations

import pytest

from voicedashd.voicebot.farewell import is_farewell
from voicedashd.voicebot.turns import ECHO_WINDOW, Conversation


@pytest.mark.parametrize("line", [
    "Okay, thanks, goodbye.", "Okay thanks goodbye", "Bye.", "Goodbye!", "Thanks, bye bye!",
    "No, that's all, thank you.", "No that's all thanks", "Alright, have a nice day.",
    "See you later.", "Thank you very much. Bye now.",
])
def test_a_line_that_only_takes_leave_is_a_farewell(line: str) -> None:
    assert is_farewell(line)


@pytest.mark.parametrize("line", [
    "", "Thank you.", "Okay.", "No.",
    "I'd like to say goodbye to my old plan and ask about a new one.",
    "And then I said bye.", "Bye, and call me back on five five five.",
    "Goodbye to you too, and tell Sarah hello.",
    "Please tell him bye from me, thanks, bye.",
    "Bye bye bye bye bye bye bye bye bye bye bye bye",  # too long to be a farewell
    "Hi, this is Maria from the bakery, I'm calling about the order, goodbye",
])
def test_other_lines_are_not(line: str) -> None:
    assert not is_farewell(line)


class Events:
    """What the conversation passes on."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bool]] = []

    def transcript(self, text: str, *, is_final: bool) -> None:
        self.lines.append((text, is_final))

    def tts_started(self, text: str) -> None:
        """Not recorded."""

    def tts_completed(self) -> None:
        """Not recorded."""


def test_the_bots_own_words_coming_back_are_not_the_callers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr("voicedashd.voicebot.turns.time.monotonic", lambda: clock[0])
    events = Events()
    conversation = Conversation(events)
    conversation.tts_started("Hello, you have reached extension 1001. How can I help you?")
    assert not conversation.transcript("you have reached extension", is_final=False)
    assert not conversation.transcript("Hello, you have reached extension 1001.", is_final=True)
    assert conversation.transcript("What are your opening hours?", is_final=True)
    conversation.tts_completed()
    clock[0] += ECHO_WINDOW / 2
    assert not conversation.transcript("How can I help you?", is_final=True)  # still its tail
    clock[0] += ECHO_WINDOW
    assert conversation.transcript("How can I help you?", is_final=True)  # long after: real
    assert events.lines == [("What are your opening hours?", True),
                            ("How can I help you?", True)]
    assert [m["role"] for m in conversation.messages] == ["assistant", "user"]
