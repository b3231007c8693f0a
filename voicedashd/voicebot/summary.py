"""A call's message card from its final transcript: offline rules, and the LLM's JSON checked.

Sans-IO: no sockets, no clock. The rules read what recognisers write (Whisper's punctuation
and numerals, Pocketsphinx's bare lower-case words) and know their limits: a name is taken
only after a phrase that introduces one, a number only when it has at least MIN_DIGITS digits.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..events import HandledBy, MessageCard, Speaker

MIN_DIGITS = 6          # fewer is a time, an amount or a date, not a phone number
MAX_DIGITS = 15         # E.164's longest
MAX_REASON = 200        # characters of the reason line
NO_WORDS_REASON = "The caller did not say anything."


@dataclass(frozen=True, slots=True)
class Line:
    """One final line of a transcript: who said it and what."""

    speaker: Speaker
    text: str


@dataclass(frozen=True, slots=True)
class Wording:
    """What the bot says that is not an answer: its greeting, fallback and farewell."""

    greeting: str = ""
    fallback: str = ""
    farewell: str = ""


# -- words and digits ------------------------------------------------------------------------

_TOKEN = re.compile(r"\+?\d+|[A-Za-z]+(?:'[A-Za-z]+)?|[.,;:!?()\-/]")
_UNITS = {"zero": 0, "oh": 0, "o": 0, "nought": 0, "naught": 0, "one": 1, "two": 2,
          "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
# What recognisers write for a spoken digit they mishear as a word; counted only inside a
# run of digits ("to", "for" are left out: "call me on 555 1234 for the quote").
_MISHEARD = {"won": "1", "too": "2", "ate": "8", "niner": "9", "tree": "3", "fife": "5"}
_TEENS = {"ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
          "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19}
_TENS = {"twenty": 2, "thirty": 3, "forty": 4, "fifty": 5, "sixty": 6, "seventy": 7,
         "eighty": 8, "ninety": 9}
_REPEAT = {"double": 2, "triple": 3, "treble": 3}
_SEPARATORS = frozenset({",", "-", ".", "(", ")", "/"})
# Words before a number that say it is the one to call.
_NUMBER_CUES = frozenset({"number", "on", "at", "me", "is", "reach", "call", "ring", "phone",
                          "mobile", "cell", "landline"})


@dataclass(frozen=True, slots=True)
class _Run:
    """Consecutive spoken or written digits: their digits and the token index they start at."""

    digits: str
    start: int


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def _digit_runs(tokens: Sequence[str]) -> list[_Run]:
    """Every run of digits in the tokens (number words, numerals, "double five", "plus")."""
    runs: list[_Run] = []
    digits, start, i = "", 0, 0
    pending_repeat = 1

    def close() -> None:
        nonlocal digits
        if digits.strip("+"):
            runs.append(_Run(digits, start))
        digits = ""

    while i < len(tokens):
        token = tokens[i]
        word = token.lower()
        nxt = tokens[i + 1].lower() if i + 1 < len(tokens) else ""
        piece: str | None = None
        consumed = 1
        if token[0] in "+0123456789":
            piece = token if not digits or not token.startswith("+") else None
        elif word == "plus" and not digits and _starts_number(nxt):
            piece = "+"
        elif word in _REPEAT and _starts_number(nxt) and nxt not in _REPEAT:
            pending_repeat = _REPEAT[word]
            if not digits:
                start = i
            i += 1
            continue
        elif word in ("oh", "o"):
            # "Oh, hi": an interjection, unless a digit is next to it.
            if digits or (nxt and (_is_digit_word(nxt) or nxt in _REPEAT)):
                piece = "0"
        elif word in _UNITS:
            piece = str(_UNITS[word])
        elif word in _TEENS:
            piece = str(_TEENS[word])
        elif word in _TENS:
            unit = _UNITS.get(nxt)
            if unit is not None and unit > 0 and nxt not in ("oh", "o"):
                piece, consumed = f"{_TENS[word]}{unit}", 2
            else:
                piece = f"{_TENS[word]}0"
        elif word == "hundred" and digits:
            piece = "00"
        elif word == "thousand" and digits:
            piece = "000"
        elif digits and word in _MISHEARD:
            piece = _MISHEARD[word]
        if piece is not None:
            if not digits:
                start = i
            digits += piece * pending_repeat if piece != "+" else piece
            pending_repeat = 1
            i += consumed
            continue
        pending_repeat = 1
        if token in _SEPARATORS or (word == "and" and digits and _starts_number(nxt)):
            i += 1
            continue
        close()
        i += 1
    close()
    return runs


def _is_digit_word(word: str) -> bool:
    return word in _UNITS or word in _TEENS or word in _TENS or word[:1].isdigit()


def _starts_number(word: str) -> bool:
    return _is_digit_word(word) or word in _REPEAT or word[:1] == "+"


def normalise_number(text: str) -> str | None:
    """The digits of a phone number as written or spoken ("+44 20 …", "five five five …")."""
    runs = [r for r in _digit_runs(_tokens(text)) if _length(r.digits) >= MIN_DIGITS]
    if not runs:
        return None
    return _clip(max(runs, key=lambda r: _length(r.digits)).digits)


def _length(digits: str) -> int:
    return len(digits.lstrip("+"))


def _clip(digits: str) -> str | None:
    return digits if MIN_DIGITS <= _length(digits) <= MAX_DIGITS else None


def find_callback_number(caller_text: str) -> str | None:
    """The phone number the caller spoke, preferring one after "number", "on", "at" …"""
    tokens = _tokens(caller_text)
    runs = [r for r in _digit_runs(tokens) if MIN_DIGITS <= _length(r.digits) <= MAX_DIGITS]
    if not runs:
        return None
    cued = [r for r in runs if any(t.lower() in _NUMBER_CUES for t in tokens[max(0, r.start - 3):
                                                                              r.start])]
    # The last one cued wins: callers correct themselves ("no, sorry, it's …").
    return (cued or runs)[-1].digits


# -- the caller's name -----------------------------------------------------------------------

_NOT_NAME_TEXT = """
a an the about regarding calling call concerning just not so here there it its it's this that
urgent important really very quite only still also again from with for to on in at of my your
our their his her me you him them we they i is was be been being am are calling phoning ringing
trying looking wondering interested sorry afraid glad happy sure after because hoping going
gonna wanting want wanted need needing having back returning following regarding your
message quick question problem customer client patient calling re yes no yeah okay ok hi hello
hey good morning afternoon evening well um uh er erm like actually basically you're we're
available unavailable busy free fine great
"""
_NOT_NAMES = frozenset(_NOT_NAME_TEXT.split())
_INTRO = re.compile(
    r"\b(?:my\s+name\s+is|my\s+name's|name\s+is|the\s+name's|this\s+is|it\s+is|it's|i\s+am|"
    r"i'm|im|speaking\s+to\s+you\s+is|you're\s+speaking\s+with|you're\s+speaking\s+to)\s+"
    r"(?P<name>[A-Za-z][A-Za-z'\-]*)\.?(?:\s+(?P<second>[A-Za-z][A-Za-z'\-]*))?",
    re.IGNORECASE)
_TITLES = frozenset({"dr", "doctor", "mr", "mister", "mrs", "missus", "ms", "miss", "prof",
                     "professor"})
_HERE = re.compile(r"(?:^|[.,!?]\s*|\b(?:hi|hello|hey)[,]?\s+)(?P<name>[A-Z][a-z'\-]+)"
                   r"(?:\s+(?P<second>[A-Z][a-z'\-]+))?\s+(?:here|speaking)\b")
# After "it's"/"i'm" a name is trusted only when something says so: "from", "here", "calling".
_WEAK_INTROS = ("it is", "it's", "i am", "i'm", "im")
_CONFIRMS = frozenset({"from", "here", "calling", "speaking", "again", "with", "at"})


def find_caller_name(caller_lines: Iterable[str]) -> str | None:
    """The name the caller gave ("this is Maria", "my name is …", "it's Tom from …")."""
    for text in caller_lines:
        for match in _INTRO.finditer(text):
            name = _name(match, text)
            if name:
                return name
        match = _HERE.search(text)
        if match and match.group("name").lower() not in _NOT_NAMES:
            return _title(match.group("name"), match.group("second"), text, match.end("name"))
    return None


def _name(match: re.Match[str], text: str) -> str | None:
    first, second = match.group("name"), match.group("second")
    if first.lower() in _TITLES:
        if not second or second.lower() in _NOT_NAMES:
            return None
        return f"{first[:1].upper()}{first[1:].lower()} {second[:1].upper()}{second[1:].lower()}"
    if first.lower() in _NOT_NAMES:
        return None
    intro = " ".join(text[match.start():match.start("name")].lower().split())
    if intro in _WEAK_INTROS:
        rest = text[match.end("name"):]
        after = rest.lstrip(" ,").split(" ", 1)[0].lower().strip(".,!?")
        # A recogniser that capitalises sentences capitalises names too: "Hi, it's Tom."
        ends_clause = rest.lstrip()[:1] in ("", ".", ",", "!", "?")
        capitalised = first[0].isupper() and any(c.islower() for c in text)
        if after not in _CONFIRMS and not (capitalised and ends_clause):
            return None
    return _title(first, second, text, match.end("name"))


def _title(first: str, second: str | None, text: str, first_end: int) -> str:
    """The name title-cased; a second word joins it only if the recogniser capitalised it."""
    parts = [first]
    joined_directly = text[first_end:first_end + 1] == " "
    if (second and joined_directly and second[0].isupper() and first[0].isupper()
            and second.lower() not in _NOT_NAMES and second.lower() not in _CONFIRMS):
        parts.append(second)
    return " ".join(p[:1].upper() + p[1:].lower() for p in parts)


# -- "call me back" --------------------------------------------------------------------------

_CALLBACK = re.compile(
    r"\b(?:call(?:ed)?\s+(?:me|us|him|her|them)\s+back|call\s+back|callback|call-back|"
    r"(?:call|ring|phone|text)\s+me|ring\s+(?:me\s+)?back|get\s+back\s+to\s+(?:me|us)|"
    r"give\s+(?:me|us)\s+a\s+(?:call|ring|buzz|shout)|reach\s+me|contact\s+me|"
    r"return\s+my\s+call|get\s+in\s+touch|(?:call|reach)\s+me\s+(?:on|at)|"
    r"cool\s+me\s+back|called\s+me\s+back)\b", re.IGNORECASE)
_NEGATED = re.compile(
    r"(?:\bno\s+need\s+(?:to|for)|\bdon't|\bdo\s+not|\bdoesn't\s+need|\bnot\s+necessary|"
    r"\bnever|\bno\s+callback|\bnot\s+need|\bneedn't|\bwon't\s+need|\bplease\s+don't)"
    r"(?:\W+\w+){0,4}\W*$", re.IGNORECASE)


def wants_callback(caller_lines: Iterable[str]) -> bool:
    """Whether the caller asked to be called back ("call me back", "ring me", …), not negated."""
    for text in caller_lines:
        for match in _CALLBACK.finditer(text):
            clause = re.split(r"[.!?;]", text[:match.start()])[-1]
            if not _NEGATED.search(clause + " "):
                return True
    return False


# -- the reason ------------------------------------------------------------------------------

_SENTENCE = re.compile(r"[^.!?]+[.!?]*")
_REASON_CUES = re.compile(
    r"\b(?:about|regarding|re|because|calling|wanted|want|wanna|would\s+like|'d\s+like|need|"
    r"needs|question|problem|issue|order|appointment|booking|invoice|delivery|quote|help|"
    r"interested|asking|ask|wondering|message|tell|let\s+(?:him|her|them)\s+know)\b",
    re.IGNORECASE)
_INTRO_SENTENCE = re.compile(
    r"^(?:(?:hi|hello|hey|good\s+\w+)\W+)?(?:this\s+is|my\s+name\s+is|my\s+name's|it's|"
    r"it\s+is|i'm|i\s+am)\s+\w+(?:\s+\w+)?(?:\s+(?:from|at|with)\s+[^,]*)?\W*$"
    r"|^(?:(?:hi|hello|hey)\W+)?\w+\s+here\W*$", re.IGNORECASE)
_EMPTY_SENTENCE = re.compile(
    r"^(?:hi|hello|hey|yes|yeah|no|okay|ok|thanks|thank\s+you|bye|goodbye|good\s+morning|"
    r"good\s+afternoon|good\s+evening|um|uh|oh|right|great|sure)(?:\W+(?:there|again|bye|"
    r"very\s+much|so\s+much))?\W*$", re.IGNORECASE)


def find_reason(caller_lines: Sequence[str]) -> str:
    """One sentence of what the caller wanted: their most telling sentence, tidied."""
    sentences = [s.strip() for text in caller_lines for s in _SENTENCE.findall(text)]
    sentences = [s for s in sentences if s and not _EMPTY_SENTENCE.match(s)]
    if not sentences:
        return NO_WORDS_REASON
    cued = [s for s in sentences if _REASON_CUES.search(s)]
    # "This is Anna from the flower shop." says who, not why: any other sentence says more.
    telling = [s for s in sentences if not _INTRO_SENTENCE.match(s)]
    chosen = (cued or sorted(telling or sentences, key=lambda s: -len(s.split())))[0]
    return _sentence(chosen)


def _sentence(text: str) -> str:
    text = " ".join(text.split()).strip(" ,;:-")
    if len(text) > MAX_REASON:
        text = text[:MAX_REASON].rsplit(" ", 1)[0].rstrip(" ,;:-") + "…"
    text = text[:1].upper() + text[1:]
    return text if text[-1:] in ".!?…" else text + "."


# -- who handled it --------------------------------------------------------------------------

_WORDS = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _words(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


def answered_from_knowledge(lines: Sequence[Line], wording: Wording) -> bool:
    """Whether the bot said anything besides its greeting, fallback and farewell."""
    scripted = [w for w in (_words(wording.greeting), _words(wording.fallback),
                            _words(wording.farewell)) if w]
    for line in lines:
        said = _words(line.text)
        if line.speaker is Speaker.BOT and said and not any(said in s for s in scripted):
            return True
    return False


def handled_by(lines: Sequence[Line], wording: Wording, *, callback: bool) -> HandledBy:
    """Message taken when the caller left something to act on or the bot had no answer."""
    if callback or not answered_from_knowledge(lines, wording):
        return HandledBy.MESSAGE_TAKEN
    return HandledBy.ANSWERED_FROM_KNOWLEDGE


# -- the card --------------------------------------------------------------------------------

def offline_card(lines: Sequence[Line], wording: Wording) -> MessageCard:
    """The message card by rules over the final transcript."""
    said = [line.text for line in lines if line.speaker is Speaker.CALLER and line.text.strip()]
    number = find_callback_number(" . ".join(said))
    requested = wants_callback(said)
    return MessageCard(
        caller_name=find_caller_name(said), callback_number=number,
        callback_requested=requested, reason=find_reason(said),
        handled_by=handled_by(lines, wording, callback=requested or number is not None),
        source="rules")


# -- the LLM's part: its prompt, and its answer checked --------------------------------------

SYSTEM_PROMPT = (
    "You read the transcript of a phone call that an automated assistant answered for the "
    "owner of a telephone extension, and write the owner a message card. Reply with one JSON "
    "object and nothing else, with exactly these keys: caller_name (the name the caller gave "
    "for themselves, or null), callback_number (the phone number the caller gave, digits only "
    "with a leading + if they said one, or null), callback_requested (true if the caller asked "
    "to be called back), reason (one short sentence saying what the caller wanted, in the "
    "third person), handled_by (\"answered_from_knowledge\" if the assistant's answers "
    "settled the caller's question, else \"message_taken\"). Lines marked [scripted] are the "
    "assistant's fixed greeting, fallback and farewell, not answers.")


class LlmCard(BaseModel):
    """The JSON an LLM must return for a card."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    caller_name: str | None = Field(default=None, max_length=80)
    callback_number: str | None = Field(default=None, max_length=40)
    callback_requested: bool
    reason: str = Field(min_length=1, max_length=400)
    handled_by: Literal["answered_from_knowledge", "message_taken"]


class InvalidLlmCard(ValueError):
    """The LLM's reply is not a card (not JSON, wrong keys or types, a number without digits)."""


def llm_messages(lines: Sequence[Line], wording: Wording) -> list[dict[str, str]]:
    """The chat messages that ask an LLM for a call's card."""
    scripted = [w for w in (_words(wording.greeting), _words(wording.fallback),
                            _words(wording.farewell)) if w]
    shown = []
    for line in lines:
        if line.speaker is Speaker.CALLER:
            shown.append(f"Caller: {line.text}")
        else:
            said = _words(line.text)
            mark = " [scripted]" if said and any(said in s for s in scripted) else ""
            shown.append(f"Assistant{mark}: {line.text}")
    transcript = "\n".join(shown) or "(nobody said anything)"
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Transcript:\n{transcript}"}]


def parse_llm_card(reply: str | None) -> MessageCard:
    """The card in an LLM's reply (a JSON object, possibly fenced); InvalidLlmCard if none."""
    text = (reply or "").strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1)
    try:
        card = LlmCard.model_validate(json.loads(text))
    except (ValueError, ValidationError) as exc:  # json's JSONDecodeError is a ValueError
        raise InvalidLlmCard(f"not a card: {str(exc).splitlines()[0]}") from None
    number = None
    if card.callback_number and card.callback_number.strip():
        number = normalise_number(card.callback_number)
        if number is None:
            raise InvalidLlmCard(f"callback_number {card.callback_number!r} is not a number")
    name = card.caller_name.strip() if card.caller_name else None
    return MessageCard(caller_name=name or None, callback_number=number,
                       callback_requested=card.callback_requested,
                       reason=_sentence(card.reason.strip()),
                       handled_by=HandledBy(card.handled_by), source="llm")
