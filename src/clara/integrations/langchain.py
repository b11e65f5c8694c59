"""LangChain retriever over a CLaRa memory index (needs ``langchain-core``).

    retriever = ClaraRetriever(rag=ClaraRAG(model, index), k=5)
    retriever.invoke("Who wrote Hamlet?")   # list[langchain_core.documents.Document]
"""

from __future__ import annotations

from typing import Any

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document as LCDocument
    from langchain_core.retrievers import BaseRetriever
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("clara.integrations.langchain needs langchain-core: pip install 'clara-rag[langchain]'") from e


class ClaraRetriever(BaseRetriever):
    """Top-k documents by CLaRa's retrieval score over memory states; metadata holds id, title, score and the stored meta."""

    rag: Any  # a clara.ClaraRAG (typed loosely: pydantic need not know torch types)
    k: int = 5

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        return [
            LCDocument(page_content=s.text, id=s.id, metadata={**s.meta, "id": s.id, "title": s.title, "score": s.score})
            for s in self.rag.retrieve([query], k=self.k)[0]
        ]
