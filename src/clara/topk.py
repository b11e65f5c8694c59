"""Differentiable top-k selection with a straight-through estimator (CLaRa section 5)."""

from __future__ import annotations

import torch


def differentiable_topk(scores: torch.Tensor, k: int, tau: float = 1.0) -> torch.Tensor:
    """Select the top-k items: hard one-hots forward, masked-softmax gradients backward.

    Args:
        scores: (B, N) retrieval scores (clara.score: cosine or max-sim, both in [-1, 1]).
        k: number of items to select, 1 <= k <= N.
        tau: softmax temperature of the soft path (1.0 in training, small at inference).

    Returns:
        Z: (B, k, N). Forward, ``Z[b, j]`` is the one-hot of the j-th highest score. Backward,
        gradients flow through ``K_soft[b, j] = softmax(scores / tau)`` restricted to the
        items not taken by steps 0..j-1 (taken items get -inf, i.e. exactly zero weight).
        ``torch.einsum('bkn,bnd->bkd', Z, doc_states)`` then gives the selected states in
        rank order, differentiable w.r.t. the scores.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, N), got shape {tuple(scores.shape)}")
    n = scores.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")

    logits = scores / tau  # (B, N)
    idx = logits.topk(k, dim=-1).indices  # (B, k), descending
    k_hard = torch.nn.functional.one_hot(idx, n).to(scores.dtype)  # (B, k, N)

    # taken[b, j] marks the items chosen by the hard steps before j
    taken = torch.cumsum(k_hard, dim=1) - k_hard  # (B, k, N), exclusive prefix sum
    masked = logits.unsqueeze(1).masked_fill(taken.bool(), float("-inf"))  # (B, k, N)
    k_soft = torch.softmax(masked, dim=-1)

    # (k_soft - k_soft.detach()) is exactly zero forward, so Z equals the one-hots bit for bit
    return k_hard + (k_soft - k_soft.detach())
