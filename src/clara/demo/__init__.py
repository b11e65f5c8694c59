"""A small real corpus shipped with the package, for `clara ask` without an index.

300 passages of 2WikiMultihopQA (Apache-2.0, see NOTICE) and 5 questions answerable from
them. The demo index is built at first use into ``$CLARA_CACHE/demo-index/<model hash>``
and reused afterwards; a different checkpoint gets its own folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..backbone import cache_dir
from ..data.corpus import read_corpus
from ..index.build import add_documents, open_or_create
from ..index.fingerprint import model_fingerprint
from ..index.store import MemoryIndex

if TYPE_CHECKING:
    from ..model import ClaraModel

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
CORPUS = HERE / "corpus.jsonl"
QUESTIONS = HERE / "questions.json"


def demo_questions() -> list[dict[str, Any]]:
    """The demo questions: {"question", "answer", "evidence_titles"}."""
    return json.loads(QUESTIONS.read_text(encoding="utf-8"))


def demo_index_dir(model: "ClaraModel") -> Path:
    return cache_dir() / "demo-index" / model_fingerprint(model)["adapters_sha256"][:16]


def demo_index(model: "ClaraModel", model_path: str | None = None, progress: bool = True) -> MemoryIndex:
    """Open the demo index for ``model``, building (or finishing) it first if needed."""
    out = demo_index_dir(model)
    docs = list(read_corpus(CORPUS))
    index = open_or_create(model, out, model_path=model_path)
    if len(index) < len(docs):
        log.info("building the demo index (%d passages) in %s; later runs reuse it", len(docs), out)
        add_documents(model, index, docs, progress=progress, total=len(docs))
    return index
