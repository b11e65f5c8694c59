"""The retrieval score: how a question's memory states are compared with a document's.

Both sides are (n_mem, H) memory states in one space (the query reasoner's and the
compressor's). Two scores, picked by ``ClaraConfig.retrieval_score``:

- ``cosine`` (the paper): cosine of the flattened (n_mem*H) states, so slot i of the
  question meets only slot i of the document.
- ``maxsim`` (late interaction, as in ColBERT): each question slot takes its best cosine
  over the document's slots, averaged over question slots. Nothing makes slot i of a
  question line up with slot i of a document; on the ratio-16 default's states (sessions 6-31) this scores
  Recall@5 74.0 against 60.0 for cosine with no training (benchmarks/retrieval_scoring.py).

Both lie in [-1, 1], so the top-k temperature means the same under either. ``maxsim`` costs
n_mem times the arithmetic of ``cosine`` (n_mem^2 slot pairs instead of n_mem).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SCORES = ("cosine", "maxsim")


def check_kind(kind: str) -> str:
    if kind not in SCORES:
        raise ValueError(f"retrieval score must be one of {SCORES}, got {kind!r}")
    return kind


def unit(states: torch.Tensor, kind: str) -> torch.Tensor:
    """Normalise (..., n_mem, H) states the way ``kind`` compares them, as float32.

    cosine: the flattened (n_mem*H) vector has unit norm; maxsim: every slot has unit norm.
    Either way the score of two normalised inputs is a plain product (see ``score_unit``).
    """
    x = states.float()
    if check_kind(kind) == "maxsim":
        return F.normalize(x, dim=-1)
    return F.normalize(x.flatten(-2), dim=-1).view_as(x)


def score_unit(q: torch.Tensor, docs: torch.Tensor, kind: str) -> torch.Tensor:
    """Scores of normalised states (``unit``): q (B, M, H) x docs (N, M, H) -> (B, N)."""
    if check_kind(kind) == "cosine":
        return q.flatten(1) @ docs.flatten(1).T
    b, m, h = q.shape
    sims = q.reshape(b * m, h) @ docs.reshape(-1, h).T  # (B*M, N*M): every question slot x every document slot
    return sims.view(b, m, len(docs), -1).amax(-1).mean(1)  # best document slot, mean over question slots


def score(q_states: torch.Tensor, doc_states: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Retrieval scores: q_states (B, n_mem, H) x doc_states (N, n_mem, H) -> (B, N) float32."""
    if q_states.dim() != 3 or doc_states.dim() != 3 or q_states.shape[1:] != doc_states.shape[1:]:
        raise ValueError(
            f"score needs (B, n_mem, H) and (N, n_mem, H) with equal n_mem and H, got "
            f"{tuple(q_states.shape)} and {tuple(doc_states.shape)}"
        )
    return score_unit(unit(q_states, kind), unit(doc_states, kind), kind)


def score_candidates(q_states: torch.Tensor, cand_states: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Each question against its own candidates: (B, n_mem, H) x (B, n, n_mem, H) -> (B, n).

    Differentiable in both inputs (stage 3 trains the query reasoner through it).
    """
    q, d = unit(q_states, kind), unit(cand_states, kind)
    if kind == "cosine":
        return torch.einsum("bd,bnd->bn", q.flatten(1), d.flatten(2))
    sims = torch.einsum("bmh,bnkh->bnmk", q, d)  # (B, n, M_q, M_d)
    return sims.amax(-1).mean(-1)
