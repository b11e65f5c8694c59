"""QA examples: a question, its gold answers and candidate documents (gold ones marked).

Loaders for the native formats of HotpotQA, 2WikiMultihopQA, MuSiQue, NQ-open, SQuAD and
FlashRAG JSONL produce :class:`QAExample` (see ``load_qa``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .corpus import Document


@dataclass
class QAExample:
    """One question with everything the paper's protocol needs."""

    id: str
    question: str
    answers: list[str]
    docs: list[Document] = field(default_factory=list)  # candidates (oracle setting), gold included
    gold_ids: list[str] = field(default_factory=list)  # ids (within docs) of the supporting documents
    meta: dict[str, Any] = field(default_factory=dict)  # type, level, hops, ...
