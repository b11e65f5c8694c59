"""The memory index: a corpus compressed once into memory states, searched by the model's retrieval score.

    MemoryIndex   storage (fp16 or int8 shards, manifest, documents)   store.py
    add_documents resumable, batched compression into an index         build.py
    Searcher      exact blockwise top-k, or FAISS IVF + exact re-score  search.py
"""

from .build import BuildReport, add_documents, open_or_create
from .fingerprint import model_fingerprint
from .search import AnnConfig, Searcher, build_ann, exact_search, recall_at_k
from .store import DuplicateIdError, MemoryIndex, MemoryIndexError

__all__ = [
    "AnnConfig",
    "BuildReport",
    "DuplicateIdError",
    "MemoryIndex",
    "MemoryIndexError",
    "Searcher",
    "add_documents",
    "build_ann",
    "exact_search",
    "model_fingerprint",
    "open_or_create",
    "recall_at_k",
]
