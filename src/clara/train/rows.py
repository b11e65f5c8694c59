"""Training rows for the three stages, read from files and turned into (prompt, target) pairs.

SCP rows (stage 1) follow ``clara_pretrain_qa_1k.jsonl``::

    {"data_type": "qa" | "complex_qa" | "paraphrase", "question": [...], "answers": [...], "docs": [doc]}

plus ``reconstruct`` rows made from plain corpus passages. Each SCP row supports some
tasks; the task of a row in a given epoch is drawn from ``task_weights`` with a seeded RNG,
so a resumed run sees exactly the same tasks.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.corpus import read_corpus
from ..io import DataError, read_jsonl, require

#: SCP tasks each data type supports (the generator prompt of each is in clara.tokens).
ROW_TASKS = {
    "qa": ("qa", "qa_single", "reconstruct"),
    "complex_qa": ("qa", "qa_single", "reconstruct"),
    "paraphrase": ("paraphrase", "reconstruct"),
    "reconstruct": ("reconstruct",),
}


@dataclass
class ScpRow:
    """One document with what the teacher wrote about it."""

    doc: str
    data_type: str
    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    doc_id: str = ""


def read_scp(path: str | Path) -> list[ScpRow]:
    """Read SCP JSONL; malformed rows raise DataError naming file and line."""
    rows = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        dtype = require(obj, "data_type", str, where)
        if dtype not in ROW_TASKS:
            raise DataError(f"{where}: unknown data_type {dtype!r}; expected one of {sorted(ROW_TASKS)}")
        docs = require(obj, "docs", list, where)
        if len(docs) != 1 or not isinstance(docs[0], str) or not docs[0].strip():
            raise DataError(f"{where}: 'docs' must hold exactly one non-empty document string")
        questions = obj.get("question", []) or []
        answers = require(obj, "answers", list, where) if dtype != "reconstruct" else []
        if dtype in ("qa", "complex_qa") and (not questions or len(questions) != len(answers)):
            raise DataError(f"{where}: 'question' and 'answers' must be non-empty lists of equal length")
        if dtype == "paraphrase" and (not answers or not isinstance(answers[0], str)):
            raise DataError(f"{where}: a paraphrase row needs the paraphrase text as answers[0]")
        doc_id = str(obj.get("doc_id") or f"{Path(path).stem}:{lineno}")  # line ids: stable for dev splits
        rows.append(ScpRow(docs[0], dtype, [str(q) for q in questions], [str(a) for a in answers], doc_id))
    return rows


def read_reconstruction(path: str | Path, exclude: set[str] = frozenset(), max_chars: int = 4000) -> list[ScpRow]:
    """Corpus passages (any format read_corpus takes) as reconstruction-only rows."""
    rows = []
    for doc in read_corpus(path):
        if doc.id in exclude or doc.title in exclude:
            continue
        rows.append(ScpRow(doc.full_text()[:max_chars], "reconstruct", doc_id=doc.id))
    return rows


def load_exclusions(path: str | Path | None) -> set[str]:
    """Ids and titles listed in a dev-split file ({dataset: {"ids": [...], "titles": [...]}})."""
    if not path:
        return set()
    data = json.loads(Path(path).read_text())
    out: set[str] = set()
    for entry in data.values():
        out.update(entry.get("ids", []))
        out.update(entry.get("titles", []))
    return out


def pick_task(row: ScpRow, weights: dict[str, float], rng: random.Random) -> str:
    options = [t for t in ROW_TASKS[row.data_type] if weights.get(t, 0) > 0]
    if not options:
        raise ValueError(f"no task with positive weight for a {row.data_type!r} row: weights {weights}")
    return rng.choices(options, [weights[t] for t in options])[0]


def scp_example(row: ScpRow, task: str, rng: random.Random) -> tuple[str, str | None, str]:
    """(prompt task, question or None, target text) of a row under a task."""
    if task == "qa":
        text = "\n".join(f"Question: {q}\nAnswer: {a}" for q, a in zip(row.questions, row.answers))
        return "qa", None, text
    if task == "qa_single":
        i = rng.randrange(len(row.questions))
        return "answer", row.questions[i], row.answers[i]
    if task == "paraphrase":
        return "paraphrase", None, row.answers[0]
    if task == "reconstruct":
        return "reconstruct", None, row.doc
    raise ValueError(f"unknown SCP task {task!r}")


def row_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The RNG of one row in one epoch: independent of batch size and process count."""
    return random.Random(f"{seed}/{epoch}/{index}")


def describe(rows: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        key = getattr(r, "data_type", type(r).__name__)
        counts[key] = counts.get(key, 0) + 1
    return counts
