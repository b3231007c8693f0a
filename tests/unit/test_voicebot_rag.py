"""Knowledge: chunking, BM25 retrieval, extractive answers, spoken forms."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicedashd.voicebot.rag import CHUNK_WORDS, KnowledgeBase, chunk_markdown, load_folder
from voicedashd.voicebot.text import Terms, split_sentences, spoken_words

SALON = """\
# Bella Hair Salon

Bella Hair Salon is a family-run hairdresser in the town centre.

## Opening hours

We are open Monday to Friday from 9:00 to 18:00, and on Saturday from 10:00 to 14:00.
We are closed on Sundays and public holidays.

## Prices

A haircut costs 25 pounds. Colouring starts at 60 pounds.
Children under 12 pay half price.

## Location

The salon is at 12 High Street, next to the **post office**. See [the map](https://x.example).
"""


@pytest.fixture
def salon() -> KnowledgeBase:
    return KnowledgeBase(tuple(chunk_markdown(SALON, "salon.md", "salon")))


def test_markdown_is_chunked_under_its_headings() -> None:
    passages = chunk_markdown(SALON, "salon.md", "salon")
    assert [p.title for p in passages] == [
        "Bella Hair Salon", "Bella Hair Salon - Opening hours", "Bella Hair Salon - Prices",
        "Bella Hair Salon - Location"]
    assert passages[3].text == ("The salon is at 12 High Street, next to the post office. "
                                "See the map.")
    assert all(p.source == "salon.md" for p in passages)


def test_long_sections_are_split_at_paragraphs() -> None:
    paragraph = " ".join(["word"] * 50) + "."
    text = "# Topic\n\n" + "\n\n".join([paragraph] * 5)
    passages = chunk_markdown(text, "t.md", "t")
    assert len(passages) == 3  # 2 paragraphs of 50 words fit CHUNK_WORDS, a third does not
    assert all(len(p.text.split()) <= CHUNK_WORDS for p in passages)
    assert {p.title for p in passages} == {"Topic"}


def test_plain_text_takes_the_file_name_as_title() -> None:
    passages = chunk_markdown("Deliveries arrive on Tuesdays.", "deliveries.txt", "deliveries")
    assert [(p.title, p.text) for p in passages] == [
        ("deliveries", "Deliveries arrive on Tuesdays.")]


def test_folder_loading_skips_what_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.md").write_text("# A\n\nAlpha.")
    (tmp_path / "sub" / "b.txt").write_text("Bravo.")
    (tmp_path / "c.pdf").write_bytes(b"%PDF")
    (tmp_path / "d.md").write_bytes(b"\xff\xfe not utf-8 \xff")
    assert [(p.source, p.text) for p in load_folder(tmp_path)] == [
        ("a.md", "Alpha."), ("sub/b.txt", "Bravo.")]


@pytest.mark.parametrize(("question", "expected"), [
    ("what are your opening hours", "We are open Monday to Friday"),
    ("when are you open on saturday", "We are open Monday to Friday"),
    ("are you closed on sunday", "We are closed on Sundays"),
    ("how much does a haircut cost", "A haircut costs 25 pounds."),
    ("do children pay less", "Children under 12 pay half price."),
])
def test_the_answer_is_the_passages_most_relevant_sentences(
        salon: KnowledgeBase, question: str, expected: str) -> None:
    answer = salon.answer(question, sentences=1)
    assert answer is not None and answer.startswith(expected), answer


def test_sentences_keep_their_order(salon: KnowledgeBase) -> None:
    answer = salon.answer("opening hours sunday", sentences=2)
    assert answer == ("We are open Monday to Friday from 9:00 to 18:00, and on Saturday from "
                      "10:00 to 14:00. We are closed on Sundays and public holidays.")


@pytest.mark.parametrize("question", ["what are the odds", "do you sell bicycles", "hello",
                                      "", "uh"])
def test_no_answer_when_nothing_matches(salon: KnowledgeBase, question: str) -> None:
    assert salon.answer(question) is None


@pytest.mark.parametrize("question", [
    "How much does the hair cut cost?",  # the knowledge writes it as one word
    "Hi, how much is a haircut?",  # "much" is unknown to the knowledge: no evidence against
])
def test_open_vocabulary_questions_find_their_passage(salon: KnowledgeBase,
                                                      question: str) -> None:
    assert (salon.answer(question) or "").startswith("A haircut costs 25 pounds.")


def test_search_ranks_and_reports_matched_terms(salon: KnowledgeBase) -> None:
    hits = salon.search("opening hours and prices", k=3)
    assert {h.passage.title.split(" - ")[-1] for h in hits[:2]} == {"Opening hours", "Prices"}
    assert hits == sorted(hits, key=lambda h: -h.score)
    assert hits[0].matched <= {"open", "hour", "price"}


def test_an_empty_knowledge_base_answers_nothing() -> None:
    empty = KnowledgeBase(())
    assert empty.search("opening hours") == []
    assert empty.answer("opening hours") is None
    assert list(empty.spoken_sentences()) == []


def test_spoken_words_spell_out_numbers_and_times() -> None:
    assert spoken_words("Open 9:30 to 18:00, £25!") == [
        "open", "nine", "thirty", "to", "eighteen", "twenty", "five"]
    assert spoken_words("**Bold** and `code`") == ["bold", "and", "code"]


def test_terms_drop_stopwords_and_stem() -> None:
    assert Terms()("What are your opening hours?") == ["open", "hour"]


def test_sentences_split_on_punctuation_and_lines() -> None:
    assert split_sentences("One. Two? Three!\nFour") == ["One.", "Two?", "Three!", "Four"]
    assert split_sentences("Dr. no split before lower case.") == [
        "Dr. no split before lower case."]


def test_the_knowledge_feeds_the_speech_vocabulary(salon: KnowledgeBase) -> None:
    sentences = list(salon.spoken_sentences())
    assert ["opening", "hours"] in sentences
    assert ["a", "haircut", "costs", "twenty", "five", "pounds"] in sentences
