"""A small back-off n-gram language model (ARPA text) from example sentences."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable

BOS, EOS = "<s>", "</s>"
Gram = tuple[str, ...]


def build_arpa(sentences: Iterable[list[str]], *, order: int = 3, discount: float = 0.5,
               unigram_floor: float = 0.1) -> str:
    """ARPA text of an absolute-discounting back-off model trained on word lists.

    Every word seen gets a unigram (add-`unigram_floor` smoothed), so any sequence of known
    words stays possible; seen bigrams and trigrams keep their counts minus `discount`, and
    the mass taken off goes to the lower order through back-off weights.
    """
    counts: list[Counter[Gram]] = [Counter() for _ in range(order + 1)]
    for words in sentences:
        if not words:
            continue
        tokens = [BOS, *words, EOS]
        for n in range(1, order + 1):
            for i in range(len(tokens) - n + 1):
                gram = tuple(tokens[i:i + n])
                if gram != (BOS,):
                    counts[n][gram] += 1
    vocabulary = sorted({g[0] for g in counts[1]} | {EOS})
    total = sum(counts[1].values())
    denominator = total + unigram_floor * len(vocabulary)
    probs: dict[Gram, float | None] = {
        (w,): (counts[1][(w,)] + unigram_floor) / denominator for w in vocabulary}
    probs[(BOS,)] = None  # a sentence start is never predicted
    backoffs: dict[Gram, float] = {}

    def prob(gram: Gram) -> float:
        p = probs.get(gram)
        if p is not None:
            return p
        if len(gram) == 1:
            return 0.0
        return backoffs.get(gram[:-1], 1.0) * prob(gram[1:])

    for n in range(2, order + 1):
        history_counts: Counter[Gram] = Counter()
        by_history: defaultdict[Gram, list[Gram]] = defaultdict(list)
        for gram, count in counts[n].items():
            history_counts[gram[:-1]] += count
            by_history[gram[:-1]].append(gram)
        for gram, count in counts[n].items():
            probs[gram] = (count - discount) / history_counts[gram[:-1]]
        for history, grams in by_history.items():
            left = 1.0 - sum(probs[g] or 0.0 for g in grams)
            lower = 1.0 - sum(prob(g[1:]) for g in grams)
            backoffs[history] = left / lower if lower > 1e-9 else 1.0

    lines = ["\\data\\"]
    by_order = [sorted(g for g in probs if len(g) == n) for n in range(1, order + 1)]
    lines += [f"ngram {n}={len(grams)}" for n, grams in enumerate(by_order, start=1)]
    for n, grams in enumerate(by_order, start=1):
        lines += ["", f"\\{n}-grams:"]
        for gram in grams:
            p = probs[gram]
            line = f"{-99.0 if p is None else math.log10(p):.5f} {' '.join(gram)}"
            if n < order:
                line += f" {math.log10(backoffs.get(gram, 1.0)):.5f}"
            lines.append(line)
    lines += ["", "\\end\\", ""]
    return "\n".join(lines)
