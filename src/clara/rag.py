"""ClaraRAG: question -> query states -> top-k documents from a MemoryIndex -> answer.

    rag = ClaraRAG(model, MemoryIndex.open("my-index"))
    result = rag.ask("Who wrote Hamlet?")        # Answer(answer=..., sources=[Source(id, title, score), ...])

Retrieval and generation stay in the latent space: the generator reads the retrieved
documents' stored memory states, never their text.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from .data.corpus import Document
from .index.build import BuildReport, add_documents, stores_readout
from .index.search import DEFAULT_NPROBE, Searcher
from .index.store import DuplicateIdError, MemoryIndex

if TYPE_CHECKING:
    from .model import ClaraModel

log = logging.getLogger(__name__)

#: ``ClaraRAG(premerge=None)`` keeps merged weights for backbones up to this many parameters
#: (two extra copies of the adapted weights: ~0.8 GB for SmolLM2-135M in fp32, ~26 GB at 7B in bf16).
PREMERGE_MAX_PARAMS = 3_000_000_000


@dataclass
class Source:
    """One retrieved document."""

    id: str
    title: str
    score: float
    text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # the record's other fields (source, parent, offset, ...)


@dataclass
class Answer:
    """An answer with the documents it was generated from, best first."""

    question: str
    answer: str
    sources: list[Source]
    timings: dict[str, float] = field(default_factory=dict)  # seconds: encode, search, generate

    def to_dict(self, with_text: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not with_text:
            for s in out["sources"]:
                s.pop("text")
        return out


def _question_list(questions: Sequence[str]) -> list[str]:
    # a bare string is a Sequence too: list() would make one question of every character
    if isinstance(questions, str):
        raise TypeError("questions must be a list of strings; for one question use ask() or pass [question]")
    return list(questions)


class ClaraRAG:
    """Retrieval-augmented generation over a memory index with one CLaRa model.

    The index must have been built by this model (its fingerprint is checked). Calls are
    serialised by a lock, so one instance can be shared by threads (the server does).
    ``premerge`` keeps the query reasoner's and the generator's LoRA folded into copies of
    the weights (:meth:`ClaraModel.premerge`), so a question costs what the plain backbone
    costs; None turns it on for backbones up to ``PREMERGE_MAX_PARAMS`` parameters.
    """

    def __init__(
        self,
        model: "ClaraModel",
        index: MemoryIndex,
        k: int = 5,
        max_new_tokens: int = 32,
        search: str = "exact",
        nprobe: int = DEFAULT_NPROBE,
        premerge: bool | None = None,
    ) -> None:
        index.check_model(model)
        if premerge is None:
            premerge = sum(p.numel() for p in model.lm.parameters()) <= PREMERGE_MAX_PARAMS
        if premerge:
            model.premerge("query_reasoner", "generator")
        self.model, self.index, self.k, self.max_new_tokens = model, index, k, max_new_tokens
        self.searcher = Searcher(index, method=search, nprobe=nprobe, score=model.config.retrieval_score)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ retrieval
    def _retrieve(self, questions: list[str], k: int) -> tuple[list[list[Source]], list[list[int]], dict[str, float]]:
        t0 = time.perf_counter()
        self.index.refresh()  # documents another process added since (one stat when none)
        q = self.model.encode_query(questions)  # (B, n_mem, H)
        t1 = time.perf_counter()
        scores, rows = self.searcher.search(q, k)  # (B, k')
        t2 = time.perf_counter()
        sources, kept_rows = [], []
        for b in range(len(questions)):
            keep = [(int(r), float(s)) for r, s in zip(rows[b], scores[b]) if int(r) >= 0]
            kept_rows.append([r for r, _ in keep])
            docs = [self.index.document(r) for r, _ in keep]
            sources.append([Source(d.id, d.title, round(s, 6), d.text, d.meta) for d, (_, s) in zip(docs, keep)])
        return sources, kept_rows, {"encode": t1 - t0, "search": t2 - t1}

    @torch.no_grad()
    def retrieve(self, questions: Sequence[str], k: int | None = None) -> list[list[Source]]:
        """Top-k documents for each question (a list of strings), best first."""
        questions = _question_list(questions)
        with self._lock:
            return self._retrieve(questions, k or self.k)[0]

    # ------------------------------------------------------------------ answering
    @property
    def _pre_read(self) -> bool:
        """Whether the generator reads the index's stored readout rows (no output-head pass per question)."""
        return self.index.has_readout and stores_readout(self.model)

    def _memory(self, rows: list[int]) -> torch.Tensor:
        """What the generator reads for these documents (k, n_mem, H): the index's stored
        readout rows when they serve this model, else the states."""
        memory = self.index.readout(rows) if self._pre_read else self.index.states(rows)
        return memory.to(self.model.device)

    @torch.no_grad()
    def ask_batch(
        self, questions: Sequence[str], k: int | Sequence[int] | None = None, max_new_tokens: int | None = None
    ) -> list[Answer]:
        """Answer several questions with one query encoding, one search and one generate call.

        ``k`` may differ per question (a list); the search runs at the largest.
        """
        questions = _question_list(questions)
        ks = [k or self.k] * len(questions) if k is None or isinstance(k, int) else [int(x) for x in k]
        if len(ks) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(ks)} values of k")
        if not questions:
            return []
        return self._answer(questions, ks, max_new_tokens)

    @torch.no_grad()
    def ask(
        self, question: str, k: int | None = None, max_new_tokens: int | None = None, streamer: object | None = None
    ) -> Answer:
        """Answer one question; ``streamer`` (a transformers streamer) receives tokens as they come."""
        return self._answer([question], [k or self.k], max_new_tokens, streamer)[0]

    def _answer(
        self, questions: list[str], ks: list[int], max_new_tokens: int | None, streamer: object | None = None
    ) -> list[Answer]:
        """One query encoding, one search at the largest k, one generate call (``streamer``: one question only)."""
        with self._lock:
            sources, rows, timings = self._retrieve(questions, max(ks))
            sources = [s[:kk] for s, kk in zip(sources, ks)]
            states = [self._memory(r[:kk]) for r, kk in zip(rows, ks)]  # (k_i, n_mem, H)
            t0 = time.perf_counter()
            texts = self.model.generate(
                questions, states, max_new_tokens=max_new_tokens or self.max_new_tokens, streamer=streamer,
                pre_read=self._pre_read,
            )
            timings["generate"] = time.perf_counter() - t0
        return [Answer(q, a, s, dict(timings)) for q, a, s in zip(questions, texts, sources)]

    # ------------------------------------------------------------------ growing the index
    def add_documents(self, docs: Iterable[Document], batch_size: int = 32, skip_existing: bool = True) -> BuildReport:
        """Compress and commit new documents; searchable as soon as this returns, and on disk.

        Documents whose id the index already holds are skipped (``BuildReport.skipped``); with
        ``skip_existing=False`` they, or an id repeated among ``docs``, raise DuplicateIdError
        instead and nothing is added (checked under the lock, against what other processes committed).
        """
        with self._lock:
            if not skip_existing:
                docs = list(docs)
                self.index.refresh()
                dup = self.index.duplicate_ids(d.id for d in docs)
                if dup:
                    raise DuplicateIdError(dup, self.index.path)
            return add_documents(self.model, self.index, docs, batch_size=batch_size, progress=False)
