"""Answer and retrieval metrics against hand-computed cases."""

from __future__ import annotations

import pytest

from clara.eval.metrics import accuracy, answer_scores, cover_em, exact_match, f1, mean, normalize_answer, recall_at_k


@pytest.mark.parametrize(
    "raw, norm",
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  an   apple, a pear!  ", "apple pear"),
        ("Theatre", "theatre"),  # 'the' only as a whole word
        ("U.S.A.", "usa"),
        ("«Röntgen»", "röntgen"),  # Unicode punctuation dropped, accents kept
        ("ＰＡＲＩＳ", "paris"),  # full-width letters folded
        ("rock–paper", "rockpaper"),  # the en dash is Unicode punctuation: deleted like ASCII "-"
        ("", ""),
        ("...", ""),
    ],
)
def test_normalize(raw: str, norm: str):
    assert normalize_answer(raw) == norm


def test_exact_match():
    assert exact_match("the Paris.", ["Paris"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    assert exact_match("London", ["Paris", "london"]) == 1.0  # max over gold answers
    assert exact_match("London", ["Paris", "london"], first_only=True) == 0.0
    assert exact_match("", ["Paris"]) == 0.0


def test_f1_hand_computed():
    # pred tokens: [wilhelm, conrad, röntgen, of, germany]; gold: [wilhelm, conrad, röntgen]
    # precision 3/5, recall 3/3 -> F1 = 2 * 0.6 * 1 / 1.6 = 0.75
    assert f1("Wilhelm Conrad Röntgen of Germany", ["Wilhelm Conrad Röntgen"]) == pytest.approx(0.75)
    # the article is dropped: [wilhelm, conrad, röntgen, germany] -> P 3/4, R 1 -> 6/7
    assert f1("Wilhelm Conrad Röntgen the Germany", ["Wilhelm Conrad Röntgen"]) == pytest.approx(6 / 7)
    # a repeated token matches once: pred [paris, paris] vs [paris] -> P 1/2, R 1 -> 2/3
    assert f1("Paris Paris", ["Paris"]) == pytest.approx(2 / 3)
    assert f1("Rome", ["Paris"]) == 0.0
    assert f1("", ["Paris"]) == 0.0
    assert f1("Paris", ["Rome", "in Paris"]) == pytest.approx(2 / 3)  # best: P 1, R 1/2
    assert f1("Paris", ["Rome", "in Paris"], first_only=True) == 0.0


def test_cover_em_and_acc():
    pred = "It was Conrad, Wilhelm Röntgen in 1901"
    assert cover_em(pred, ["Wilhelm Conrad Röntgen"]) == 1.0  # all tokens present, any order
    assert accuracy(pred, ["Wilhelm Conrad Röntgen"]) == 0.0  # not a contiguous substring
    assert accuracy("He was Wilhelm Conrad Röntgen.", ["wilhelm conrad röntgen"]) == 1.0
    assert cover_em("Röntgen", ["Wilhelm Conrad Röntgen"]) == 0.0


def test_yes_no():
    assert exact_match("Yes.", ["yes"]) == 1.0
    assert exact_match("No", ["yes"]) == 0.0
    assert f1("yes, they are", ["yes"]) == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    assert cover_em("no they are not", ["no"]) == 1.0
    # acc is FlashRAG's plain substring test: 'no' is found inside 'not'
    assert accuracy("not sure", ["no"]) == 1.0
    assert cover_em("not sure", ["no"]) == 0.0


def test_no_answer_gold():
    # SQuAD v2 unanswerable: empty gold list, only an empty prediction is right
    assert answer_scores("", []) == {"em": 1.0, "f1": 1.0, "cover_em": 1.0, "acc": 1.0}
    assert answer_scores("Paris", []) == {"em": 0.0, "f1": 0.0, "cover_em": 0.0, "acc": 0.0}


def test_gold_must_be_a_list():
    with pytest.raises(TypeError):
        exact_match("Paris", "Paris")


def test_recall_at_k():
    retrieved = ["d3", "d1", "d7", "d2"]
    assert recall_at_k(retrieved, ["d1", "d2"], 1) == 0.0
    assert recall_at_k(retrieved, ["d1", "d2"], 3) == 0.5
    assert recall_at_k(retrieved, ["d1", "d2"], 5) == 1.0
    assert recall_at_k(retrieved, [], 5) is None
    with pytest.raises(ValueError):
        recall_at_k(retrieved, ["d1"], 0)


def test_mean_skips_none():
    assert mean([1.0, None, 0.0]) == 0.5
    assert mean([None]) is None
