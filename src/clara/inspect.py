"""Logit lens over memory states: which vocabulary tokens each state points at.

A memory state is a final-layer hidden state after the final norm, the same vector the
backbone's output head reads when it predicts a next token. Projecting it through that head
(``lm_head``) shows which words the state encodes, the paper's analysis of query states
(words absent from the question but present in its supporting documents).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from .model import ClaraModel

KINDS = ("query", "doc")


@dataclass
class SlotTokens:
    """The top tokens of one memory state under the output head."""

    slot: int
    tokens: list[str]
    probs: list[float]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@torch.no_grad()
def lens_logits(model: "ClaraModel", states: torch.Tensor) -> torch.Tensor:
    """Memory states (N, n_mem, H) -> output-head logits (N, n_mem, V), float32."""
    if states.dim() != 3 or states.shape[-1] != model.hidden_size:
        raise ValueError(f"states must be (N, n_mem, {model.hidden_size}), got {tuple(states.shape)}")
    head = model.lm.get_output_embeddings()
    return model.logits(states.to(model.device, head.weight.dtype))  # with Gemma's soft-capping: what the model sees


@torch.no_grad()
def logit_lens(model: "ClaraModel", states: torch.Tensor, top_k: int = 5) -> list[list[SlotTokens]]:
    """For each text and each memory state, the ``top_k`` tokens with their probabilities."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    probs = lens_logits(model, states).softmax(-1)  # (N, n_mem, V)
    p, idx = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    out = []
    for text_p, text_idx in zip(p.tolist(), idx.tolist()):
        out.append([
            SlotTokens(slot, [model.tokenizer.decode([i]) for i in ids], [round(v, 6) for v in ps])
            for slot, (ps, ids) in enumerate(zip(text_p, text_idx))
        ])
    return out


def encode(model: "ClaraModel", texts: Sequence[str], kind: str) -> torch.Tensor:
    """Questions through the query reasoner (``query``) or documents through the compressor (``doc``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    with torch.no_grad():
        return model.encode_query(texts) if kind == "query" else model.compress(texts)


def inspect_texts(model: "ClaraModel", texts: Sequence[str], kind: str, top_k: int = 5) -> list[list[SlotTokens]]:
    """Encode ``texts`` as ``kind`` and return the logit lens of their memory states."""
    return logit_lens(model, encode(model, texts, kind), top_k)


def surfaced_words(slots: Sequence[SlotTokens], min_len: int = 3) -> set[str]:
    """Lower-cased alphabetic words among the lens tokens (sub-word pieces of ``min_len``+ letters)."""
    words = set()
    for s in slots:
        for t in s.tokens:
            w = t.strip().lower()
            if len(w) >= min_len and w.isalpha():
                words.add(w)
    return words
