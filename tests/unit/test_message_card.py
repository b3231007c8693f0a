"""The message card's offline rules over realistic transcripts, and the LLM reply's checks."""

from __future__ import annotations

import json

import pytest

from voicedashd.events import HandledBy, Speaker
from voicedashd.voicebot.summary import (
    NO_WORDS_REASON,
    InvalidLlmCard,
    Line,
    Wording,
    find_callback_number,
    find_caller_name,
    find_reason,
    llm_messages,
    normalise_number,
    offline_card,
    parse_llm_card,
    wants_callback,
)

WORDING = Wording(
    greeting="Hello, you have reached extension 1001. I am an automated assistant. "
             "How can I help you?",
    fallback="Sorry, I don't know the answer to that. I'll pass your message on to "
             "extension 1001.",
    farewell="Thank you for calling. Goodbye.")


def caller(text: str) -> Line:
    return Line(Speaker.CALLER, text)


def bot(text: str) -> Line:
    return Line(Speaker.BOT, text)


@pytest.mark.parametrize(("lines", "name"), [
    (["Hi, this is Maria. Please call me back."], "Maria"),
    (["hello my name is john smith i'm calling about my order"], "John"),
    (["Hello, my name is Sarah Connor and I have a question."], "Sarah Connor"),
    (["Hi, it's Tom from Acme Plumbing."], "Tom"),
    (["it's tom from acme"], "Tom"),
    (["Yeah, hi. Priya here, just returning your call."], "Priya"),
    (["Good morning.", "My name's Kevin, K-E-V-I-N."], "Kevin"),
    (["Hi there, I'm Anna, I'd like to book a table."], "Anna"),
    (["Hello, my name is Dr. Smith."], "Dr Smith"),
    (["this is mrs patel from the school"], "Mrs Patel"),
    (["Hi this is Mariah please call me back"], "Mariah"),
    (["This is Maria. Please call me back."], "Maria"),
    (["This is about the invoice you sent."], None),
    (["Hi, I'm calling about the delivery."], None),
    (["It's urgent, please call back."], None),
    (["i'm just wondering when you open"], None),
    (["What are your opening hours?"], None),
    (["this is a message for Dave"], None),
])
def test_caller_name(lines: list[str], name: str | None) -> None:
    assert find_caller_name(lines) == name


@pytest.mark.parametrize(("text", "number"), [
    ("five five five, one two three four", "5551234"),
    ("My number is 555-1234.", "5551234"),
    ("You can reach me on 07700 900123.", "07700900123"),
    ("oh seven seven double oh nine hundred one two three", "07700900123"),
    ("call me back at +44 20 7946 0958 please", "+442079460958"),
    ("plus four four two oh seven nine four six oh nine five eight", "+442079460958"),
    ("It's 555 867 5309.", "5558675309"),
    ("Five five five. One, two, three, four.", "5551234"),
    ("my number is 5 5 5 1 2 3 4", "5551234"),
    ("double five five, twelve thirty four", "5551234"),
    ("(415) 555-2671", "4155552671"),
    ("triple three, four five six seven", "3334567"),
    ("oh double seven, double oh nine hundred one two three", "07700900123"),
    ("5-5-5, 1-2-3-4.", "5551234"),
    ("five-five-five one-two-three-four", "5551234"),
    ("my number is 555 12 34.", "5551234"),
    ("Call me back on 555, won two three four.", "5551234"),
    ("It is 0 7 7 0 0, 9 0 0, 1 2 3.", "07700900123"),
    ("I need 3 boxes at 5 o'clock", None),
    ("Oh, hi, I called at 9:30 about the order.", None),
    ("Oh, five five five one two three four.", "5551234"),
    ("My order number is 12. My phone number is 555 2368.", "5552368"),
])
def test_callback_number(text: str, number: str | None) -> None:
    assert find_callback_number(text) == number


def test_the_cued_number_wins_over_an_order_number() -> None:
    text = "About order 123456789. You can call me on 555 0199 88."
    assert find_callback_number(text) == "555019988"


def test_a_corrected_number_wins() -> None:
    text = "My number is 555 1234, no sorry, my number is 555 4321."
    assert find_callback_number(text) == "5554321"


@pytest.mark.parametrize(("text", "number"), [
    ("555-1234", "5551234"), ("+1 (415) 555-2671", "+14155552671"), ("12", None),
    ("no number", None), ("1234567890123456789", None)])
def test_normalise_number(text: str, number: str | None) -> None:
    assert normalise_number(text) == number


@pytest.mark.parametrize(("lines", "wanted"), [
    (["Could you please call me back?"], True),
    (["ring me when you can"], True),
    (["Can he get back to me today?"], True),
    (["Give me a call on 555 1234."], True),
    (["Please have him return my call."], True),
    (["You can reach me at 555 1234."], True),
    (["Could you ask her to call back this afternoon?"], True),
    (["No need to call me back, just letting you know."], False),
    (["Don't call me back, I'll try again tomorrow."], False),
    (["What time do you close?"], False),
    (["I called yesterday about the quote."], False),
])
def test_callback_requested(lines: list[str], wanted: bool) -> None:
    assert wants_callback(lines) is wanted


@pytest.mark.parametrize(("lines", "reason"), [
    (["Hi.", "This is Maria, I'm calling about the invoice from March."],
     "This is Maria, I'm calling about the invoice from March."),
    (["hello", "i wanted to ask whether my order has shipped"],
     "I wanted to ask whether my order has shipped."),
    (["Yes.", "What are your opening hours on Saturday?"],
     "What are your opening hours on Saturday?"),
    (["This is Anna from the flower shop.", "Can you call me back on 555-4401?"],
     "Can you call me back on 555-4401?"),
    (["Hi, this is Maria.", "Please ring me."], "Please ring me."),
    (["Hi, this is Maria."], "Hi, this is Maria."),
    (["Hello?", "Bye."], NO_WORDS_REASON),
    ([], NO_WORDS_REASON),
])
def test_reason(lines: list[str], reason: str) -> None:
    assert find_reason(lines) == reason


def test_a_long_reason_is_cut_at_a_word() -> None:
    reason = find_reason(["I am calling about " + "the very long story " * 30])
    assert len(reason) <= 201 and reason.endswith("…") and " the very long" in reason


def test_message_left_after_the_fallback() -> None:
    card = offline_card([
        bot(WORDING.greeting),
        caller("Hi, this is Maria from Contoso. I'm calling about tomorrow's delivery."),
        bot("Sorry, I don't know the answer to that."),
        bot("I'll pass your message on to extension 1001."),
        caller("Could you have him call me back on five five five, one two three four?"),
        bot("Thank you for calling."), bot("Goodbye."),
    ], WORDING)
    assert card.caller_name == "Maria"
    assert card.callback_number == "5551234"
    assert card.callback_requested is True
    assert card.reason == "I'm calling about tomorrow's delivery."
    assert card.handled_by is HandledBy.MESSAGE_TAKEN
    assert card.source == "rules"


def test_question_answered_from_knowledge() -> None:
    card = offline_card([
        bot("Hello, you have reached extension 1001."),
        caller("What are your opening hours?"),
        bot("We are open Monday to Friday from nine to five."),
        caller("Thanks, bye."), bot("Thank you for calling."), bot("Goodbye."),
    ], WORDING)
    assert card.handled_by is HandledBy.ANSWERED_FROM_KNOWLEDGE
    assert card.callback_requested is False and card.callback_number is None
    assert card.caller_name is None
    assert card.reason == "What are your opening hours?"


def test_an_answer_then_a_callback_request_is_a_message() -> None:
    card = offline_card([
        caller("what are your opening hours"),
        bot("We are open Monday to Friday from nine to five."),
        caller("ok thanks can you ring me back anyway on oh one two three four five six seven"),
    ], WORDING)
    assert card.handled_by is HandledBy.MESSAGE_TAKEN
    assert card.callback_number == "01234567"


def test_only_the_fallback_is_a_message() -> None:
    card = offline_card([caller("Do you sell bicycles?"),
                         bot("Sorry, I don't know the answer to that.")], WORDING)
    assert card.handled_by is HandledBy.MESSAGE_TAKEN


def test_the_bots_own_numbers_are_not_the_callers() -> None:
    card = offline_card([bot("Call us on 555 000 1111."), caller("Okay, thanks.")], WORDING)
    assert card.callback_number is None


def test_llm_prompt_marks_scripted_lines() -> None:
    messages = llm_messages([bot("Sorry, I don't know the answer to that."),
                             bot("We open at nine."), caller("Ok")], WORDING)
    user = messages[-1]["content"]
    assert "Assistant [scripted]: Sorry, I don't know" in user
    assert "Assistant: We open at nine." in user and "Caller: Ok" in user


VALID = {"caller_name": "Maria", "callback_number": "555-1234", "callback_requested": True,
         "reason": "Maria asked about her delivery", "handled_by": "message_taken"}


def test_llm_reply_is_checked_and_normalised() -> None:
    card = parse_llm_card(json.dumps(VALID))
    assert (card.caller_name, card.callback_number, card.callback_requested) == (
        "Maria", "5551234", True)
    assert card.reason == "Maria asked about her delivery."
    assert card.source == "llm"
    assert parse_llm_card("```json\n" + json.dumps(VALID) + "\n```") == card


@pytest.mark.parametrize("reply", [
    None, "", "not json", "[]", json.dumps({**VALID, "handled_by": "someone"}),
    json.dumps({k: v for k, v in VALID.items() if k != "reason"}),
    json.dumps({**VALID, "callback_requested": "maybe"}),
    json.dumps({**VALID, "callback_number": "call anytime"}),
    json.dumps({**VALID, "reason": ""}),
])
def test_llm_reply_that_is_not_a_card(reply: str | None) -> None:
    with pytest.raises(InvalidLlmCard):
        parse_llm_card(reply)


# The speech corpus's messages, as a recogniser that heard every word would write them.
CORPUS_CARDS = {
    "Hi, this is Maria": ("Maria", "5551234", True),
    "My name is David Miller": ("David Miller", "5552987", False),
    "This is Anna from": ("Anna", "5554401", True),
    "Hello, it is Peter": ("Peter", "5556712", False),
    "This is Laura": ("Laura", "5553030", True),
    "Hi, James here": ("James", "5558162", True),
    "Hello, this is Linda Green": ("Linda Green", "5559246", True),
}


@pytest.mark.parametrize("start", sorted(CORPUS_CARDS))
def test_speech_corpus_messages(start: str) -> None:
    from tests.speech_corpus import CORPUS

    [line] = [line for line in CORPUS if line.text.startswith(start)]
    card = offline_card([bot(WORDING.greeting), caller(line.text)], WORDING)
    assert (card.caller_name, card.callback_number, card.callback_requested) == (
        CORPUS_CARDS[start])
    assert card.handled_by is HandledBy.MESSAGE_TAKEN


def test_speech_corpus_questions_are_not_messages() -> None:
    from tests.speech_corpus import CORPUS

    for line in CORPUS:
        if line.kind in ("question", "small_talk"):
            card = offline_card([caller(line.text)], WORDING)
            assert (card.caller_name, card.callback_number, card.callback_requested) == (
                None, None, False), line.text
