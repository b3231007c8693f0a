"""Text as speech sees it: sentences, spoken-form words (numbers spelled out), search terms."""

from __future__ import annotations

import re

from num2words import num2words
from Stemmer import Stemmer

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_TIME = re.compile(r"\b(\d{1,2})[:.](\d{2})\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_MARKDOWN = re.compile(r"(\*\*|__|`|^#+\s*|^\s*[-*+]\s+|^\s*\d+[.)]\s+|\[([^\]]*)\]\([^)]*\))",
                       re.MULTILINE)

# Words that say nothing about what a caller wants (kept out of search terms).
_STOPWORD_TEXT = """
a about above after again against all am an and any are aren't as at be because been before
being below between both but by can can't could couldn't did didn't do does doesn't doing
don't down during each few for from further had hadn't has hasn't have haven't having he he'd
he'll he's her here here's hers herself him himself his how how's i i'd i'll i'm i've if in
into is isn't it it's its itself let's me more most mustn't my myself no nor not of off on once
only or other ought our ours ourselves out over own same shan't she she'd she'll she's should
shouldn't so some such than that that's the their theirs them themselves then there there's
these they they'd they'll they're they've this those through to too under until up very was
wasn't we we'd we'll we're we've were weren't what what's when when's where where's which while
who who's whom why why's with won't would wouldn't you you'd you'll you're you've your yours
yourself yourselves please tell know like want would could hello hi okay ok yes yeah thanks
thank get need
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def strip_markdown(text: str) -> str:
    """Remove Markdown markup (emphasis, headings marks, list bullets, link targets)."""
    return _MARKDOWN.sub(lambda m: m.group(2) or "", text)


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences (a newline also ends one)."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            out.extend(s.strip() for s in _SENTENCE_END.split(line) if s.strip())
    return out


def _number_words(match: re.Match[str]) -> str:
    text = match.group(0)
    try:
        words = num2words(float(text) if "." in text else int(text))
    except (ValueError, OverflowError):
        return " "
    return f" {words} "


def _time_words(match: re.Match[str]) -> str:
    hour, minutes = int(match.group(1)), int(match.group(2))
    if minutes == 0:
        return f" {hour} "
    return f" {hour} {minutes} "


def spoken_words(text: str) -> list[str]:
    """Lower-case words as a person would say the text ("9:30" -> nine thirty)."""
    text = _TIME.sub(_time_words, strip_markdown(text).lower())
    text = _NUMBER.sub(_number_words, text)
    return _WORD.findall(text.replace("-", " "))


class Terms:
    """Turns text into search terms: spoken words, minus stopwords, stemmed."""

    def __init__(self) -> None:
        self._stemmer = Stemmer("english")

    def __call__(self, text: str) -> list[str]:
        """Search terms of a text, in order (repeats kept)."""
        words = [w for w in spoken_words(text) if w not in STOPWORDS and len(w) > 1]
        return self._stemmer.stemWords(words)
