"""QA examples: a question, its gold answers and candidate documents (gold ones marked).

Loaders for the native formats of HotpotQA, 2WikiMultihopQA, MuSiQue, NQ-open, SQuAD and
FlashRAG JSONL produce :class:`QAExample`; :func:`load_qa` picks the format from the
content. Gold documents come from each format's own supporting-fact fields:

=============  ==============================================  =================================
format         candidates (``docs``)                           gold (``gold_ids``)
=============  ==============================================  =================================
hotpotqa       the 10 ``context`` paragraphs                   titles in ``supporting_facts``
2wiki          the 10 ``context`` paragraphs                   titles in ``supporting_facts``
2wiki-corpus   gold passages from the corpus (+ negatives)     subjects of the ``evidence`` triples
musique        the 20 ``paragraphs``                           ``is_supporting``
nq             ``ctxs`` (may be absent: no candidates)         ``isgold``, else ``hasanswer``
squad          the question's paragraph                        that paragraph
flashrag       none                                            none
=============  ==============================================  =================================

Malformed records raise :class:`~clara.io.DataError` naming the file and line (JSONL) or
item (JSON lists).
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..io import DataError, open_text, read_jsonl, require
from .corpus import Document

log = logging.getLogger(__name__)

FORMATS = ("hotpotqa", "2wiki", "2wiki-corpus", "musique", "nq", "squad", "flashrag")
_2WIKI_TYPES = {"compositional", "comparison", "inference", "bridge_comparison"}


@dataclass
class QAExample:
    """One question with everything the paper's protocol needs."""

    id: str
    question: str
    answers: list[str]
    docs: list[Document] = field(default_factory=list)  # candidates (oracle setting), gold included
    gold_ids: list[str] = field(default_factory=list)  # ids (within docs) of the supporting documents
    meta: dict[str, Any] = field(default_factory=dict)  # type, level, hops, ...


# ---------------------------------------------------------------------- reading records
def _is_jsonl(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".jsonl"):
        return True
    if name.endswith(".json"):
        return False
    # unknown suffix: JSONL if the first non-blank line is a whole JSON value on its own
    with open_text(path) as f:
        for line in f:
            if line.strip():
                try:
                    json.loads(line)
                    return True
                except json.JSONDecodeError:
                    return False
    return False


def _load_json(path: Path) -> Any:
    try:
        with open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None


def iter_records(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where, record) from JSONL (``file:line``) or a JSON list (``file: item i``), gzip or not."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if _is_jsonl(path):
        for lineno, obj in read_jsonl(path):
            yield f"{path}:{lineno}", obj
        return
    data = _load_json(path)
    if isinstance(data, dict) and isinstance(data.get("data"), list):  # SQuAD-style wrapper
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of records or JSON lines")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(f"{path}: item {i}: expected a JSON object, got {type(obj).__name__}")
        yield f"{path}: item {i}", obj


# ---------------------------------------------------------------------- format detection
def detect_format(path: str | Path) -> str:
    """Name the format of a QA file from its first record (one of :data:`FORMATS`)."""
    path = Path(path)
    if not _is_jsonl(path):
        data = _load_json(path)
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            return "squad"
    where, first = next(iter_records(path), (str(path), None))
    if first is None:
        raise DataError(f"{path}: no records")
    keys = set(first)
    if "paragraphs" in keys and "title" in keys:
        return "squad"  # the inner list of a SQuAD file
    if {"context", "supporting_facts"} <= keys:
        is_2wiki = "evidences" in keys or first.get("type") in _2WIKI_TYPES
        return "2wiki" if is_2wiki else "hotpotqa"
    if "paragraphs" in keys:
        return "musique"
    if "evidence" in keys and "question_type" in keys:
        return "2wiki-corpus"
    if "golden_answers" in keys:
        return "flashrag"
    if "answers" in keys and "question" in keys:
        return "nq"
    raise DataError(f"{where}: cannot tell the QA format from fields {sorted(keys)}; pass fmt= one of {FORMATS}")


def load_qa(
    path: str | Path,
    fmt: str | None = None,
    *,
    corpus: str | Path | None = None,
    negatives: int = 0,
    hard_negatives: bool = False,
    unanswerable: str = "skip",
    limit: int | None = None,
    seed: int = 0,
) -> list[QAExample]:
    """Load any supported QA file; ``fmt`` None = detect from the content.

    ``corpus``/``negatives``/``seed``/``hard_negatives`` apply to ``2wiki-corpus`` (the passage
    file; non-gold passages added per question, random or, with ``hard_negatives``, BM25's
    best answer-free ones), ``unanswerable`` ("skip" or "keep") to SQuAD v2
    and MuSiQue-full questions without an answer. ``limit`` keeps the first N examples.
    """
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown QA format {fmt!r}; expected one of {FORMATS}")
    if unanswerable not in ("skip", "keep"):
        raise ValueError(f"unanswerable must be 'skip' or 'keep', got {unanswerable!r}")
    if fmt == "2wiki-corpus":
        examples = load_2wiki_corpus(path, corpus, negatives=negatives, seed=seed, hard_negatives=hard_negatives)
    elif fmt == "squad":
        examples = load_squad(path, unanswerable=unanswerable)
    elif fmt == "musique":
        examples = load_musique(path, unanswerable=unanswerable)
    else:
        examples = _LOADERS[fmt](path)
    log.info("loaded %d %s examples from %s", len(examples), fmt, path)
    return examples[:limit] if limit is not None else examples


# ---------------------------------------------------------------------- field helpers
def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = require(obj, key, (str, int), where)
    text = str(value).strip()
    if not text:
        raise DataError(f"{where}: field {key!r} is empty")
    return text


def _answers(obj: dict[str, Any], key: str, where: str, aliases: str | None = None) -> list[str]:
    """Gold answers as a de-duplicated list (a single string, a list, plus optional aliases)."""
    value = require(obj, key, (str, int, float, list), where)
    answers = value if isinstance(value, list) else [value]
    if aliases and isinstance(obj.get(aliases), list):
        answers = answers + obj[aliases]
    out: list[str] = []
    for i, a in enumerate(answers):
        if not isinstance(a, (str, int, float)):
            raise DataError(f"{where}: field {key!r}[{i}] must be a string, got {type(a).__name__}")
        if str(a).strip() and str(a).strip() not in out:
            out.append(str(a).strip())
    if not out:
        raise DataError(f"{where}: field {key!r} holds no non-empty answer")
    return out


def _join_sentences(sentences: list[Any], where: str) -> str:
    # HotpotQA sentences carry their own leading space; 2Wiki's do not
    parts = []
    for i, s in enumerate(sentences):
        if not isinstance(s, str):
            raise DataError(f"{where}: sentence {i} must be a string, got {type(s).__name__}")
        parts.append(s if (i == 0 or s[:1].isspace()) else " " + s)
    return "".join(parts).strip()


# ---------------------------------------------------------------------- HotpotQA / 2Wiki (context form)
def _context_example(obj: dict[str, Any], where: str, source: str) -> QAExample:
    qid = _str(obj, "_id" if "_id" in obj else "id", where)
    context = require(obj, "context", list, where)
    facts = require(obj, "supporting_facts", list, where)
    gold_titles = set()
    for j, fact in enumerate(facts):
        if not (isinstance(fact, list) and fact and isinstance(fact[0], str)):
            raise DataError(f"{where}: supporting_facts[{j}] must be [title, sentence_id]")
        gold_titles.add(fact[0])
    docs, gold = [], []
    for i, para in enumerate(context):
        if not (isinstance(para, list) and len(para) == 2 and isinstance(para[0], str) and isinstance(para[1], list)):
            raise DataError(f"{where}: context[{i}] must be [title, [sentences]]")
        title, sentences = para
        # ids by position: 2Wiki repeats titles inside one question
        doc = Document(id=f"{qid}:{i}", text=_join_sentences(sentences, f"{where}: context[{i}]"), title=title)
        docs.append(doc)
        if title in gold_titles:
            gold.append(doc.id)
    missing = gold_titles - {d.title for d in docs}
    if missing:
        log.debug("%s: supporting titles not in context: %s", where, sorted(missing))
    meta: dict[str, Any] = {"source": source}
    for key in ("type", "level"):
        if key in obj:
            meta[key] = obj[key]
    if isinstance(obj.get("evidences"), list) and obj["evidences"]:
        meta["hops"] = _hops(obj["evidences"])
    elif source == "hotpotqa":
        meta["hops"] = 2
    return QAExample(qid, _str(obj, "question", where), _answers(obj, "answer", where, "answer_aliases"), docs, gold, meta)


def load_hotpotqa(path: str | Path) -> list[QAExample]:
    """HotpotQA (distractor or fullwiki dev/train), JSON list or JSONL."""
    return [_context_example(obj, where, "hotpotqa") for where, obj in iter_records(path)]


def load_2wiki(path: str | Path) -> list[QAExample]:
    """2WikiMultihopQA dev/train records (``context`` + ``supporting_facts`` + ``evidences``)."""
    return [_context_example(obj, where, "2wiki") for where, obj in iter_records(path)]


# ---------------------------------------------------------------------- 2Wiki corpus + questions
def _hops(evidence: list[Any]) -> int:
    """Hop count of a 2Wiki question: the distinct entities its evidence triples start from."""
    return len({t[0] for t in evidence if isinstance(t, list) and t})


def title_key(title: str) -> str:
    """Loose title key: case, quotes and a trailing '(film)'-style qualifier ignored."""
    t = re.sub(r"\s*\([^)]*\)\s*$", "", title.strip().strip('"').strip())
    return t.casefold()


def find_sibling_corpus(questions: Path) -> Path:
    candidates = sorted(p for p in questions.parent.glob("*corpus*.json*") if p != questions)
    if len(candidates) != 1:
        raise DataError(
            f"{questions}: 2wiki questions need their passage corpus; pass corpus= "
            f"(found {len(candidates)} '*corpus*.json' files next to it)"
        )
    return candidates[0]


def load_2wiki_corpus(
    questions: str | Path,
    corpus: str | Path | None = None,
    negatives: int = 0,
    seed: int = 0,
    hard_negatives: bool = False,
) -> list[QAExample]:
    """2Wiki questions (``evidence`` triples) over a ``[{title, text}]`` passage corpus.

    Gold passages are the corpus passages whose title is an evidence triple's subject
    (exact title first, else case/quote/qualifier-insensitive). Document ids are the titles,
    which are unique in the corpus, so the same passage has the same id in every question.
    ``negatives`` non-gold passages are added to each question's candidates: random ones, or
    with ``hard_negatives`` BM25's best for the question (``bm25_negatives``).
    """
    questions = Path(questions)
    corpus_path = Path(corpus) if corpus is not None else find_sibling_corpus(questions)
    passages: dict[str, Document] = {}
    for where, obj in iter_records(corpus_path):
        title = _str(obj, "title", where)
        if title in passages:
            raise DataError(f"{where}: duplicate corpus title {title!r}")
        passages[title] = Document(id=title, text=_str(obj, "text", where), title=title)
    by_key: dict[str, list[str]] = {}
    for title in passages:
        by_key.setdefault(title_key(title), []).append(title)
    rng = random.Random(seed)
    titles = list(passages)
    examples, no_gold = [], 0
    for where, obj in iter_records(questions):
        evidence = require(obj, "evidence", list, where)
        gold: list[str] = []
        for j, triple in enumerate(evidence):
            if not (isinstance(triple, list) and len(triple) == 3 and isinstance(triple[0], str)):
                raise DataError(f"{where}: evidence[{j}] must be [subject, relation, object]")
            subject = triple[0]
            matches = [subject] if subject in passages else by_key.get(title_key(subject), [])
            gold += [t for t in matches if t not in gold]
        no_gold += not gold
        docs = [passages[t] for t in gold]
        if negatives and not hard_negatives:
            pool = [t for t in rng.sample(titles, min(len(titles), negatives + len(gold))) if t not in gold]
            docs += [passages[t] for t in pool[:negatives]]
        meta = {"source": "2wiki", "type": obj.get("question_type"), "hops": _hops(evidence)}
        examples.append(QAExample(_str(obj, "id", where), _str(obj, "question", where),
                                  _answers(obj, "answer", where, "answer_aliases"), docs, gold, meta))
    if no_gold:
        log.warning("%s: %d of %d questions have no evidence subject in %s", questions, no_gold, len(examples),
                    corpus_path)
    if negatives and hard_negatives:
        bm25_negatives(examples, list(passages.values()), negatives)
    return examples


def bm25_negatives(examples: list[QAExample], corpus: list[Document], n: int) -> None:
    """Append to each example's docs the ``n`` passages of ``corpus`` BM25 ranks highest for its
    question, skipping its gold passages and any passage that contains one of its answers.

    DPR's hard negatives (Karpukhin et al. 2020): lexically close to the question, so a ranker
    must do better than word overlap, and answer-free, so none is an unlabelled positive.
    """
    import bm25s

    from ..eval.metrics import normalize_answer

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    index = bm25s.BM25()
    index.index(bm25s.tokenize([d.full_text() for d in corpus], show_progress=False), show_progress=False)
    normalized = [f" {normalize_answer(d.full_text())} " for d in corpus]
    for ex in examples:
        tokens = bm25s.tokenize([ex.question], show_progress=False, return_ids=False)[0]
        if not tokens:
            continue
        # a yes/no answer is in most passages without making them positives
        answers = [f" {a} " for a in map(normalize_answer, ex.answers) if a and a not in ("yes", "no")]
        taken = {d.id for d in ex.docs}
        for i in index.get_scores(tokens).argsort()[::-1]:
            if len(ex.docs) - len(ex.gold_ids) >= n:
                break
            doc = corpus[int(i)]
            if doc.id not in taken and not any(a in normalized[int(i)] for a in answers):
                ex.docs.append(doc)
                taken.add(doc.id)


# ---------------------------------------------------------------------- MuSiQue
def load_musique(path: str | Path, unanswerable: str = "skip") -> list[QAExample]:
    """MuSiQue-Ans (or -Full) JSONL: 20 ``paragraphs`` with ``is_supporting``, ``answer_aliases``."""
    examples = []
    for where, obj in iter_records(path):
        qid = _str(obj, "id", where)
        answerable = obj.get("answerable", True)
        if not answerable and unanswerable == "skip":
            continue
        docs, gold = [], []
        for i, p in enumerate(require(obj, "paragraphs", list, where)):
            pw = f"{where}: paragraphs[{i}]"
            if not isinstance(p, dict):
                raise DataError(f"{pw}: expected an object")
            doc = Document(id=f"{qid}:{p.get('idx', i)}", text=_str(p, "paragraph_text", pw), title=p.get("title", ""))
            docs.append(doc)
            if p.get("is_supporting"):
                gold.append(doc.id)
        hops = len(obj["question_decomposition"]) if isinstance(obj.get("question_decomposition"), list) else None
        if hops is None and re.match(r"^\dhop", qid):
            hops = int(qid[0])
        answers = _answers(obj, "answer", where, "answer_aliases") if answerable else []
        meta = {"source": "musique", "hops": hops, "answerable": bool(answerable)}
        examples.append(QAExample(qid, _str(obj, "question", where), answers, docs, gold, meta))
    return examples


# ---------------------------------------------------------------------- NQ-open
def load_nq(path: str | Path) -> list[QAExample]:
    """NQ-open JSONL (``question``, ``answers``), optionally with ``ctxs`` (DPR / lost-in-the-middle)."""
    examples = []
    for n, (where, obj) in enumerate(iter_records(path)):
        qid = str(obj.get("id", obj.get("_id", f"nq-{n}")))
        ctxs = obj.get("ctxs") or []
        if not isinstance(ctxs, list):
            raise DataError(f"{where}: field 'ctxs' must be a list")
        has_isgold = any(isinstance(c, dict) and "isgold" in c for c in ctxs)
        docs, gold = [], []
        for i, c in enumerate(ctxs):
            cw = f"{where}: ctxs[{i}]"
            if not isinstance(c, dict):
                raise DataError(f"{cw}: expected an object")
            doc = Document(id=f"{qid}:{i}", text=_str(c, "text", cw), title=str(c.get("title") or ""),
                           meta={"passage_id": c["id"]} if "id" in c else {})
            docs.append(doc)
            if c.get("isgold") if has_isgold else c.get("hasanswer"):
                gold.append(doc.id)
        examples.append(QAExample(qid, _str(obj, "question", where), _answers(obj, "answers", where), docs, gold,
                                  {"source": "nq", "hops": 1}))
    return examples


# ---------------------------------------------------------------------- SQuAD
def load_squad(path: str | Path, unanswerable: str = "skip") -> list[QAExample]:
    """SQuAD v1.1/v2 (``data[].paragraphs[].qas[]``); v2 unanswerables skipped or kept with no answer."""
    examples = []
    for where, article in iter_records(path):
        title = str(article.get("title", ""))
        for pi, para in enumerate(require(article, "paragraphs", list, where)):
            pw = f"{where}: paragraphs[{pi}]"
            if not isinstance(para, dict):
                raise DataError(f"{pw}: expected an object")
            doc = Document(id=f"{title}:{pi}", text=_str(para, "context", pw), title=title)
            for qi, qa in enumerate(require(para, "qas", list, pw)):
                qw = f"{pw}: qas[{qi}]"
                if not isinstance(qa, dict):
                    raise DataError(f"{qw}: expected an object")
                impossible = bool(qa.get("is_impossible", False))
                if impossible and unanswerable == "skip":
                    continue
                raw = require(qa, "answers", list, qw)
                if any(not isinstance(a, dict) or not isinstance(a.get("text"), str) for a in raw):
                    raise DataError(f"{qw}: every answer must be an object with a 'text' string")
                answers = [] if impossible else list(dict.fromkeys(a["text"].strip() for a in raw))
                if not impossible and not answers:
                    raise DataError(f"{qw}: answerable question without answers")
                examples.append(QAExample(_str(qa, "id", qw), _str(qa, "question", qw), answers, [doc], [doc.id],
                                          {"source": "squad", "answerable": not impossible, "hops": 1}))
    return examples


# ---------------------------------------------------------------------- FlashRAG
def load_flashrag(path: str | Path) -> list[QAExample]:
    """FlashRAG JSONL: ``id``, ``question``, ``golden_answers`` (no documents)."""
    examples = []
    for where, obj in iter_records(path):
        meta = {"source": "flashrag"}
        if isinstance(obj.get("metadata"), dict):
            meta.update({k: v for k, v in obj["metadata"].items() if k in ("type", "level", "hops")})
        examples.append(QAExample(_str(obj, "id", where), _str(obj, "question", where),
                                  _answers(obj, "golden_answers", where), [], [], meta))
    return examples


_LOADERS = {"hotpotqa": load_hotpotqa, "2wiki": load_2wiki, "nq": load_nq, "flashrag": load_flashrag}
