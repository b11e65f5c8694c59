"""QA loaders: every native format on hand-written fixtures and on the real files in ../shared/data."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from clara.data.qa import detect_format, load_qa
from clara.io import DataError

from .conftest import SHARED

FIX = Path(__file__).parent / "fixtures" / "qa"


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("hotpot_distractor.json", "hotpotqa"),
        ("2wiki_dev.jsonl", "2wiki"),
        ("2wiki_questions.json", "2wiki-corpus"),
        ("musique_ans.jsonl", "musique"),
        ("nq_ctxs.jsonl", "nq"),
        ("nq_open.jsonl", "nq"),
        ("squad_v2.json", "squad"),
        ("flashrag.jsonl", "flashrag"),
    ],
)
def test_detect_format(name: str, fmt: str):
    assert detect_format(FIX / name) == fmt


def test_hotpotqa():
    ex = load_qa(FIX / "hotpot_distractor.json")
    assert [e.id for e in ex] == ["hp1", "hp2"]
    e = ex[0]
    assert e.answers == ["Paris"] and e.meta["type"] == "bridge" and e.meta["hops"] == 2
    assert [d.id for d in e.docs] == ["hp1:0", "hp1:1", "hp1:2"]
    assert e.gold_ids == ["hp1:0", "hp1:1"]
    # sentences that carry their own leading space are joined without doubling it
    assert e.docs[0].text == "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It is named after the engineer Gustave Eiffel."
    assert e.docs[0].full_text().startswith("Eiffel Tower\nThe Eiffel")
    assert ex[1].gold_ids == ["hp2:0", "hp2:1"]


def test_hotpotqa_jsonl_equals_json(tmp_path: Path):
    rows = json.loads((FIX / "hotpot_distractor.json").read_text())
    p = tmp_path / "h.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a, b = load_qa(p), load_qa(FIX / "hotpot_distractor.json")
    assert [(e.id, e.gold_ids, [d.text for d in e.docs]) for e in a] == [(e.id, e.gold_ids, [d.text for d in e.docs]) for e in b]


def test_2wiki_dev_repeated_titles():
    (e,) = load_qa(FIX / "2wiki_dev.jsonl")
    # both paragraphs titled 'Charles Mathew' are gold; ids stay unique by position
    assert e.gold_ids == ["2w1:0", "2w1:1", "2w1:2"]
    assert len({d.id for d in e.docs}) == 4
    assert e.docs[0].text == "Charles Mathew was an Irish judge. His father was James Charles Mathew."
    assert e.meta == {"source": "2wiki", "type": "compositional", "hops": 2}


def test_2wiki_corpus_form():
    ex = load_qa(FIX / "2wiki_questions.json")  # finds 2wiki_corpus.json next to it
    assert ex[0].gold_ids == ["Lothair II", "Ermengarde of Tours"]
    # 'Inherent Vice' matches the title 'Inherent Vice (film)'
    assert ex[1].gold_ids == ["Inherent Vice (film)", "Jonny Greenwood"]
    assert [d.id for d in ex[1].docs] == ex[1].gold_ids
    with_neg = load_qa(FIX / "2wiki_questions.json", negatives=2, seed=3)
    for e in with_neg:
        assert len(e.docs) == 4 and set(e.gold_ids) <= {d.id for d in e.docs}
        assert len({d.id for d in e.docs}) == 4
    assert [d.id for d in with_neg[0].docs] == [d.id for d in load_qa(FIX / "2wiki_questions.json", negatives=2, seed=3)[0].docs]


def test_musique():
    ex = load_qa(FIX / "musique_ans.jsonl")
    assert len(ex) == 1  # the unanswerable one is skipped by default
    e = ex[0]
    assert e.answers == ["Fausto Vitello", "Vitello"]
    assert e.gold_ids == ["2hop__1_2:0", "2hop__1_2:1"] and e.meta["hops"] == 2
    kept = load_qa(FIX / "musique_ans.jsonl", unanswerable="keep")
    assert kept[1].answers == [] and kept[1].meta == {"source": "musique", "hops": 3, "answerable": False}


def test_nq_with_and_without_passages():
    a, b = load_qa(FIX / "nq_ctxs.jsonl")
    assert a.id == "nq-0" and a.answers == ["Wilhelm Conrad Röntgen", "Röntgen"]
    assert a.gold_ids == ["nq-0:0"]  # isgold wins over hasanswer when present
    assert b.gold_ids == ["nq-1:0"] and b.docs[0].meta == {"passage_id": "wiki:17"}  # hasanswer otherwise
    plain = load_qa(FIX / "nq_open.jsonl")
    assert [e.docs for e in plain] == [[], []] and plain[1].answers == ["eight", "8"]


def test_nq_gzip(tmp_path: Path):
    p = tmp_path / "nq.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write((FIX / "nq_ctxs.jsonl").read_text(encoding="utf-8"))
    assert [e.gold_ids for e in load_qa(p)] == [["nq-0:0"], ["nq-1:0"]]


def test_squad_unanswerable_flag():
    (e,) = load_qa(FIX / "squad_v2.json")
    assert e.answers == ["chemical energy", "chemical energy stored in glucose"]  # duplicates dropped
    assert e.gold_ids == [e.docs[0].id] == ["Photosynthesis:0"]
    both = load_qa(FIX / "squad_v2.json", unanswerable="keep")
    assert [x.id for x in both] == ["s1", "s2"] and both[1].answers == [] and not both[1].meta["answerable"]


def test_flashrag():
    ex = load_qa(FIX / "flashrag.jsonl")
    assert ex[0].answers == ["William Shakespeare", "Shakespeare"] and ex[0].meta["type"] == "single"
    assert ex[1].docs == [] and ex[1].answers == ["yes"]


def test_limit():
    assert len(load_qa(FIX / "hotpot_distractor.json", limit=1)) == 1


# ---------------------------------------------------------------------- malformed input
def test_malformed_json_line(tmp_path: Path):
    p = tmp_path / "bad.jsonl"
    good = (FIX / "flashrag.jsonl").read_text().splitlines()[0]
    p.write_text(good + "\n\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON"):
        load_qa(p, "flashrag")


@pytest.mark.parametrize(
    "record, fmt, message",
    [
        ({"id": "x", "question": "q?"}, "flashrag", r":2: missing field 'golden_answers'"),
        ({"id": "x", "question": "q?", "golden_answers": [""]}, "flashrag", r":2: field 'golden_answers' holds no"),
        ({"_id": "x", "question": "q", "answer": "a", "supporting_facts": [], "context": [["t", "not a list"]]},
         "hotpotqa", r":2: context\[0\] must be \[title, \[sentences\]\]"),
        ({"question": "q", "answers": ["a"], "ctxs": [{"title": "t"}]}, "nq", r":2: ctxs\[0\]: missing field 'text'"),
        ({"id": "m", "question": "q", "answer": "a", "paragraphs": [{"idx": 0, "title": "t"}]}, "musique",
         r":2: paragraphs\[0\]: missing field 'paragraph_text'"),
    ],
)
def test_malformed_record_names_file_and_line(tmp_path: Path, record: dict, fmt: str, message: str):
    first = {"flashrag": (FIX / "flashrag.jsonl"), "hotpotqa": None, "nq": FIX / "nq_open.jsonl",
             "musique": FIX / "musique_ans.jsonl"}[fmt]
    line1 = first.read_text().splitlines()[0] if first else json.dumps(json.loads((FIX / "hotpot_distractor.json").read_text())[0])
    p = tmp_path / "data.jsonl"
    p.write_text(line1 + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=r"data\.jsonl" + message):
        load_qa(p, fmt)


def test_malformed_json_list_names_item(tmp_path: Path):
    rows = json.loads((FIX / "hotpot_distractor.json").read_text())
    del rows[1]["question"]
    p = tmp_path / "h.json"
    p.write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"h\.json: item 1: missing field 'question'"):
        load_qa(p)


def test_unknown_format(tmp_path: Path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"foo": 1}\n')
    with pytest.raises(DataError, match="cannot tell the QA format"):
        load_qa(p)


# ---------------------------------------------------------------------- the real public files
REAL = [
    ("hotpotqa/hotpot_dev_distractor_500.jsonl", "hotpotqa", 500),
    ("2wikimultihopqa/dev_500.jsonl", "2wiki", 500),
    ("2wikimultihopqa/questions_1000.json", "2wiki-corpus", 1000),
    ("nq/nq_open_oracle.jsonl.gz", "nq", 2655),
]


@pytest.mark.parametrize("rel, fmt, n", REAL)
def test_real_files(rel: str, fmt: str, n: int):
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} not available")
    assert detect_format(path) == fmt
    ex = load_qa(path)
    assert len(ex) == n and len({e.id for e in ex}) == n
    for e in ex:
        assert e.question and e.answers
        ids = [d.id for d in e.docs]
        assert set(e.gold_ids) <= set(ids)
        assert all(d.full_text().strip() for d in e.docs)
    with_gold = sum(bool(e.gold_ids) for e in ex)
    # every supporting title of HotpotQA/2Wiki/NQ-oracle is found; 2Wiki evidence subjects match >= 99 %
    assert with_gold >= (0.99 * n if fmt == "2wiki-corpus" else n)


def _corpus_question(tmp_path: Path, answer: str) -> Path:
    corpus = [
        {"title": "Harbor Lights", "text": "Harbor Lights is a 1961 film directed by Ann Vale."},
        {"title": "Harbor Lights (song)", "text": "Harbor Lights is a song about a harbor at night, written for a film."},
        {"title": "Harbor Lights (novel)", "text": "Harbor Lights is a novel; its film rights went to Ann Vale."},
        {"title": "Harbor Town", "text": "Harbor Town is a village with a small harbor."},
        {"title": "Quartz", "text": "Quartz is a mineral composed of silicon and oxygen."},
    ]
    question = {"id": "q1", "question_type": "compositional", "question": "Who directed the film Harbor Lights?", "answer": answer,
                "evidence": [["Harbor Lights", "director", answer]]}
    (tmp_path / "corpus.json").write_text(json.dumps(corpus))
    path = tmp_path / "questions.json"
    path.write_text(json.dumps([question]))
    return path


def test_2wiki_corpus_hard_negatives(tmp_path: Path):
    path = _corpus_question(tmp_path, "Ann Vale")
    (ex,) = load_qa(path, negatives=2, hard_negatives=True)
    # BM25's best non-gold passages in order; the novel names the answer, so it is never a negative
    assert [d.id for d in ex.docs] == ["Harbor Lights", "Harbor Lights (song)", "Harbor Town"]
    assert ex.gold_ids == ["Harbor Lights"]
    (one,) = load_qa(path, negatives=1, hard_negatives=True)
    assert [d.id for d in one.docs] == ["Harbor Lights", "Harbor Lights (song)"]
    # a yes/no answer occurs in passages without making them positives: it filters nothing
    (yes_no,) = load_qa(_corpus_question(tmp_path, "no"), negatives=2, hard_negatives=True)
    assert [d.id for d in yes_no.docs][1:] == ["Harbor Lights (song)", "Harbor Lights (novel)"]
