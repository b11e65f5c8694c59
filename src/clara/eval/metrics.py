"""QA and retrieval metrics of the paper's protocol (CLARA.md section 7), as pure functions.

Answer metrics compare a prediction with a list of gold answers and, by default, take the
best score over them (FlashRAG, BERGEN); ``first_only=True`` scores only the first gold
answer, as Apple's reference code does. An empty gold list means "no answer" (SQuAD v2):
the prediction is scored against the empty string.

    em        normalised prediction == normalised gold
    f1        token-overlap F1 (SQuAD)
    cover_em  every gold token occurs among the prediction's tokens (the compression tables)
    acc       normalised gold is a substring of the normalised prediction (FlashRAG / BERGEN)
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Callable, Sequence

ANSWER_METRICS = ("em", "f1", "cover_em", "acc")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation (ASCII and Unicode) and the articles a/an/the, collapse spaces.

    Unicode is NFKC-folded first so full-width letters and ligatures compare equal to their
    plain forms; accents are kept ("Röntgen" stays distinct from "Rontgen", as in SQuAD).
    """
    text = unicodedata.normalize("NFKC", text).lower()
    # punctuation is deleted, not spaced, as in SQuAD ('U.S.A.' -> 'usa'); Unicode punctuation too
    text = "".join(ch for ch in text if ch not in _PUNCT and not unicodedata.category(ch).startswith("P"))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def _em(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _f1(prediction: str, gold: str) -> float:
    pred, ref = _tokens(prediction), _tokens(gold)
    if not pred or not ref:
        return float(pred == ref)  # both empty (no-answer agreed) scores 1
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _cover_em(prediction: str, gold: str) -> float:
    ref = _tokens(gold)
    if not ref:
        return float(not _tokens(prediction))
    pred = set(_tokens(prediction))
    return float(all(t in pred for t in ref))


def _acc(prediction: str, gold: str) -> float:
    ref = normalize_answer(gold)
    if not ref:
        return float(not normalize_answer(prediction))
    # plain substring, exactly as FlashRAG/BERGEN compute it ('no' does match inside 'not')
    return float(ref in normalize_answer(prediction))


def _best(fn: Callable[[str, str], float], prediction: str, golds: Sequence[str], first_only: bool) -> float:
    if isinstance(golds, str):
        raise TypeError("gold answers must be a list of strings, not a single string")
    golds = list(golds) or [""]
    if first_only:
        golds = golds[:1]
    return max(fn(prediction or "", g) for g in golds)


def exact_match(prediction: str, golds: Sequence[str], first_only: bool = False) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer."""
    return _best(_em, prediction, golds, first_only)


def f1(prediction: str, golds: Sequence[str], first_only: bool = False) -> float:
    """Token-overlap F1 between prediction and gold answer (best over gold answers)."""
    return _best(_f1, prediction, golds, first_only)


def cover_em(prediction: str, golds: Sequence[str], first_only: bool = False) -> float:
    """1.0 if every token of a gold answer occurs among the prediction's tokens."""
    return _best(_cover_em, prediction, golds, first_only)


def accuracy(prediction: str, golds: Sequence[str], first_only: bool = False) -> float:
    """1.0 if a normalised gold answer is a substring of the normalised prediction."""
    return _best(_acc, prediction, golds, first_only)


def answer_scores(prediction: str, golds: Sequence[str], first_only: bool = False) -> dict[str, float]:
    """All answer metrics of one prediction: {em, f1, cover_em, acc}."""
    return {
        "em": exact_match(prediction, golds, first_only),
        "f1": f1(prediction, golds, first_only),
        "cover_em": cover_em(prediction, golds, first_only),
        "acc": accuracy(prediction, golds, first_only),
    }


def recall_at_k(retrieved: Sequence[str], gold: Sequence[str], k: int) -> float | None:
    """|gold documents in the first k retrieved| / |gold documents|; None when there is no gold."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    gold_set = set(gold)
    if not gold_set:
        return None
    return len(gold_set & set(retrieved[:k])) / len(gold_set)


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the non-None values (None when there are none)."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
