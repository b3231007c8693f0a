"""Knowledge for the bot: a folder of Markdown/text files, chunked, BM25-indexed, searched."""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import structlog

from .text import Terms, split_sentences, spoken_words, strip_markdown

log = structlog.get_logger(__name__)

SUFFIXES = (".md", ".markdown", ".txt")
MAX_FILE_BYTES = 2_000_000
CHUNK_WORDS = 120
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass(frozen=True, slots=True)
class Passage:
    """One chunk of knowledge: where it came from, the heading it sits under, its prose."""

    source: str
    title: str
    text: str

    @property
    def searchable(self) -> str:
        """What the index sees: the innermost heading (twice: it names the topic), the prose."""
        topic = self.title.rsplit(" - ", 1)[-1]
        return f"{topic}. {topic}. {self.text}"


@dataclass(frozen=True, slots=True)
class Hit:
    """A passage that matched a query, its BM25 score and the query terms it contains."""

    passage: Passage
    score: float
    matched: frozenset[str]


def chunk_markdown(text: str, source: str, default_title: str) -> list[Passage]:
    """Split a document into passages of at most ~CHUNK_WORDS words under their heading."""
    passages: list[Passage] = []
    headings: list[str] = []
    paragraph: list[str] = []
    chunk: list[str] = []

    def title() -> str:
        return " - ".join(headings) if headings else default_title

    def end_chunk() -> None:
        if chunk:
            passages.append(Passage(source, title(), " ".join(chunk)))
            chunk.clear()

    def end_paragraph() -> None:
        if not paragraph:
            return
        prose = strip_markdown(" ".join(paragraph)).strip()
        paragraph.clear()
        if not prose:
            return
        if chunk and len(" ".join(chunk).split()) + len(prose.split()) > CHUNK_WORDS:
            end_chunk()
        chunk.append(prose if prose[-1] in ".!?:" else prose + ".")

    for line in text.splitlines():
        heading = _HEADING.match(line)
        if heading:
            end_paragraph()
            end_chunk()
            level = len(heading.group(1))
            del headings[level - 1:]
            headings.extend([""] * (level - 1 - len(headings)))
            headings.append(strip_markdown(heading.group(2)).strip())
            headings[:] = [h for h in headings if h]
        elif not line.strip():
            end_paragraph()
        else:
            paragraph.append(line.strip())
    end_paragraph()
    end_chunk()
    return passages


def load_folder(folder: Path) -> list[Passage]:
    """Read every Markdown/text file under folder (sorted, recursive) into passages."""
    passages: list[Passage] = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES):
        if not path.is_file():
            continue
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                log.warning("knowledge_file_skipped", path=str(path), reason="larger than 2 MB")
                continue
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("knowledge_file_skipped", path=str(path), reason=str(exc))
            continue
        title = path.stem.replace("_", " ").replace("-", " ")
        passages.extend(chunk_markdown(text, str(path.relative_to(folder)), title))
    return passages


BM25_K1 = 1.5  # term-frequency saturation (Lucene's defaults)
BM25_B = 0.75  # length normalisation


@dataclass(eq=False)
class KnowledgeBase:
    """Passages with their BM25 index; built once (per start or reload), shared by calls.

    Lucene's BM25, written out: a folder is a few dozen passages, and the BM25 packages
    bring a JIT compiler (numba, ~80 MB resident) the daemon would carry for nothing.
    """

    passages: tuple[Passage, ...]
    terms: Terms = field(default_factory=Terms)
    _weights: dict[str, np.ndarray] = field(default_factory=dict)  # term -> score per passage
    _vocabulary: frozenset[str] = frozenset()
    _idf: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.passages:
            return
        tokens = [self.terms(p.searchable) for p in self.passages]
        self._vocabulary = frozenset(t for doc in tokens for t in doc)
        df = Counter(t for doc in tokens for t in set(doc))
        n = len(tokens)
        self._idf = {t: math.log(1 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items()}
        lengths = np.array([len(doc) for doc in tokens], dtype=np.float64)
        norm = BM25_K1 * (1 - BM25_B + BM25_B * lengths / max(1.0, float(lengths.mean())))
        counts = [Counter(doc) for doc in tokens]
        for term in self._vocabulary:
            tf = np.array([c[term] for c in counts], dtype=np.float64)
            self._weights[term] = self._idf[term] * tf * (BM25_K1 + 1) / (tf + norm)

    @classmethod
    def from_folder(cls, folder: Path | None) -> KnowledgeBase:
        """Load and index a folder (None: an empty knowledge base)."""
        return cls(tuple(load_folder(folder)) if folder is not None else ())

    def query_terms(self, query: str) -> list[str]:
        """A question's search terms, with split compounds the knowledge writes as one word
        ("hair cut" -> haircut) added."""
        words = spoken_words(query)
        joined = self.terms(" ".join(a + b for a, b in itertools.pairwise(words)))
        return self.terms(query) + [t for t in joined if t in self._vocabulary]

    def search(self, query: str, k: int = 3) -> list[Hit]:
        """The best passages for a query, best first; only those sharing a term with it."""
        terms = [t for t in self.query_terms(query) if t in self._vocabulary]
        if not terms:
            return []
        scores = np.sum([self._weights[t] for t in terms], axis=0)
        ranked = sorted(range(len(self.passages)), key=lambda doc: (-scores[doc], doc))[:k]
        hits = []
        wanted = set(terms)
        for doc in ranked:
            score = float(scores[doc])
            if score <= 0:
                continue
            passage = self.passages[doc]
            matched = wanted & set(self.terms(passage.searchable))
            hits.append(Hit(passage, float(score), frozenset(matched)))
        return hits

    def answer(self, query: str, *, sentences: int = 2) -> str | None:
        """An extractive answer: the best passage's most relevant sentences, or None."""
        query_terms = set(self.query_terms(query))
        if not query_terms:
            return None
        hits = self.search(query, k=1)
        if not hits:
            return None
        best = hits[0]
        # A passage sharing too little of the question is a guess, not an answer. Words the
        # knowledge never uses (a caller's name, a misheard word) are no evidence either way,
        # so half of the known ones must match, and a third of all.
        known = query_terms & self._vocabulary
        if len(best.matched) < max(math.ceil(len(known) / 2), math.ceil(len(query_terms) / 3)):
            return None
        ranked = []
        candidates = split_sentences(best.passage.text)
        for position, sentence in enumerate(candidates):
            found = query_terms & set(self.terms(sentence))
            weight = sum(self._idf.get(t, 0.0) for t in found)
            ranked.append((weight, position, sentence))
        chosen = [r for r in sorted(ranked, key=lambda r: (-r[0], r[1])) if r[0] > 0][:sentences]
        if not chosen:  # the match was the heading: the passage's opening is the answer
            chosen = ranked[:sentences]
        return " ".join(sentence for _, _, sentence in sorted(chosen, key=lambda r: r[1]))

    def spoken_sentences(self) -> Iterable[list[str]]:
        """Every heading and sentence as spoken words (what callers' questions echo)."""
        seen_titles: set[str] = set()
        for passage in self.passages:
            if passage.title not in seen_titles:
                seen_titles.add(passage.title)
                for part in passage.title.split(" - "):
                    yield spoken_words(part)
            for sentence in split_sentences(passage.text):
                yield spoken_words(sentence)

