"""Readers: turn a question and its selected documents into an answer.

    ClaraReader  the generator adapter reads the documents' memory states (CLaRa)
    TextReader   the plain backbone (adapters off) reads the documents' raw text through its
                 chat template, or no documents at all (closed-book); with ``adapter="generator"``
                 the generator LoRA of a checkpoint trained by stage ``text`` reads it (the fair
                 full-text baseline)

Both use the same instruction as CLaRa's answer prompt so that only the document
representation differs between systems.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from .. import tokens
from ..data.corpus import Document

if TYPE_CHECKING:
    from ..model import ClaraModel
    from .retrievers import ClaraRetriever


class ClaraReader:
    """Answer from compressed documents (states cached by the CLaRa retriever of the same model)."""

    def __init__(self, retriever: "ClaraRetriever", max_new_tokens: int = 32) -> None:
        self.retriever, self.model, self.max_new_tokens = retriever, retriever.model, max_new_tokens

    @torch.no_grad()
    def answer(self, questions: Sequence[str], docs: Sequence[Sequence[Document]]) -> list[str]:
        n_mem, h = self.model.config.n_mem, self.model.hidden_size
        states = [self.retriever.doc_states(d).to(self.model.device) if d else torch.zeros(0, n_mem, h)
                  for d in docs]  # (k_i, n_mem, H) each
        return self.model.generate(list(questions), states, max_new_tokens=self.max_new_tokens)


class TextReader:
    """Answer from raw document text with the backbone (closed-book when given no documents).

    Each document is cut to ``doc_max_len`` tokens, the same text the compressor sees, so
    full-text and compressed systems read the same information.
    """

    def __init__(
        self, model: "ClaraModel", max_new_tokens: int = 32, doc_max_len: int | None = None, adapter: str | None = None
    ) -> None:
        self.model, self.max_new_tokens, self.adapter = model, max_new_tokens, adapter
        self.doc_max_len = doc_max_len or model.config.doc_max_len

    def prompt(self, question: str, docs: Sequence[Document]) -> str:
        return tokens.text_prompt(self.model.tokenizer, question, [d.full_text() for d in docs], self.doc_max_len)

    @torch.no_grad()
    def answer(self, questions: Sequence[str], docs: Sequence[Sequence[Document]]) -> list[str]:
        n_mem, h = self.model.config.n_mem, self.model.hidden_size
        prompts = [self.prompt(q, d) for q, d in zip(questions, docs)]
        empty = [torch.zeros(0, n_mem, h) for _ in prompts]
        return self.model.generate_from_prompts(prompts, empty, max_new_tokens=self.max_new_tokens, adapter=self.adapter)
