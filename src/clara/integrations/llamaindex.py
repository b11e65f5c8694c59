"""LlamaIndex retriever over a CLaRa memory index (needs ``llama-index-core``).

    retriever = ClaraLlamaRetriever(ClaraRAG(model, index), k=5)
    retriever.retrieve("Who wrote Hamlet?")   # list[NodeWithScore]
"""

from __future__ import annotations

from typing import Any

try:
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("clara.integrations.llamaindex needs llama-index-core: pip install 'clara-rag[llamaindex]'") from e


class ClaraLlamaRetriever(BaseRetriever):
    """Top-k documents by CLaRa's retrieval score over memory states, as LlamaIndex nodes with scores."""

    def __init__(self, rag: Any, k: int = 5, **kwargs: Any) -> None:
        self.rag, self.k = rag, k
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        sources = self.rag.retrieve([query_bundle.query_str], k=self.k)[0]
        return [
            NodeWithScore(node=TextNode(id_=s.id, text=s.text, metadata={**s.meta, "title": s.title}), score=s.score)
            for s in sources
        ]
