"""Whether a caller's final line is a goodbye, and nothing but a goodbye."""

from __future__ import annotations

import re

MAX_WORDS = 10  # a farewell is short; a longer line that ends in "bye" is a message

# Clauses that may come with a goodbye but do not make one on their own.
_COURTESY = frozenset({
    "okay", "ok", "alright", "all right", "right", "well", "great", "perfect", "lovely",
    "cheers", "thanks", "thank you", "thanks a lot", "thank you very much", "many thanks",
    "thanks so much", "thank you so much", "no", "yes", "fine", "good", "oh", "so",
})
# Clauses that say the caller is leaving.
_LEAVING = frozenset({
    "bye", "goodbye", "good bye", "bye bye", "bye now", "bye for now", "goodbye now",
    "see you", "see you later", "see ya", "take care", "talk to you later", "talk soon",
    "have a nice day", "have a good day", "have a great day", "that's all", "that is all",
    "that's it", "that's everything", "that's all for now", "that's all i needed",
})
_CLAUSE = re.compile(r"[,.!?;:]+|\s+-\s+")
_WORD = re.compile(r"[a-z']+")


def _phrases(text: str) -> list[str]:
    """The line's clauses as plain lower-case word strings."""
    return [" ".join(_WORD.findall(clause)) for clause in _CLAUSE.split(text.lower())]


def _segments(phrase: str) -> list[str] | None:
    """Cut a clause into known courtesy/leaving phrases, longest first; None if it has others."""
    words, parts = phrase.split(), []
    while words:
        for cut in range(len(words), 0, -1):
            head = " ".join(words[:cut])
            if head in _COURTESY or head in _LEAVING:
                parts.append(head)
                words = words[cut:]
                break
        else:
            return None
    return parts


def is_farewell(text: str) -> bool:
    """True when the line only takes leave ("okay, thanks, goodbye"; "that's all, bye").

    A line that merely contains "bye" among other words ("I'd like to say goodbye to my old
    plan"), or thanks alone, is not one.
    """
    if len(_WORD.findall(text.lower())) > MAX_WORDS:
        return False
    parts: list[str] = []
    for phrase in _phrases(text):
        segments = _segments(phrase)
        if segments is None:
            return False
        parts += segments
    return any(p in _LEAVING for p in parts)
