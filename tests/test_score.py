"""The retrieval scores (clara.score) against hand computations, and the config option."""

from __future__ import annotations

import math

import pytest
import torch

from clara import ClaraConfig
from clara.score import SCORES, score, score_candidates


@pytest.fixture()
def states() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 6, generator=g), torch.randn(5, 4, 6, generator=g)  # q (B, M, H), docs (N, M, H)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


def test_cosine_is_the_flattened_cosine(states):
    q, d = states
    got = score(q, d, "cosine")
    want = torch.tensor([[_cos(q[i], d[j]) for j in range(len(d))] for i in range(len(q))], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)


def test_maxsim_is_the_mean_best_slot_cosine(states):
    q, d = states
    got = score(q, d, "maxsim")
    m = q.shape[1]
    want = torch.tensor(
        [[sum(max(_cos(q[i, a], d[j, b]) for b in range(m)) for a in range(m)) / m for j in range(len(d))] for i in range(len(q))],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)


def test_maxsim_ignores_slot_order_and_cosine_does_not(states):
    q, d = states
    shuffled = d[:, torch.tensor([2, 0, 3, 1])]
    torch.testing.assert_close(score(q, shuffled, "maxsim"), score(q, d, "maxsim"))
    assert not torch.allclose(score(q, shuffled, "cosine"), score(q, d, "cosine"))
    # a document holding the question's own slots, in any order, is the perfect max-sim match
    assert math.isclose(float(score(q[:1], q[:1, torch.tensor([3, 2, 1, 0])], "maxsim")), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("kind", SCORES)
def test_scores_in_range_and_candidates_agree(states, kind):
    q, d = states
    s = score(q, d, kind)
    assert s.shape == (3, 5) and s.dtype == torch.float32
    assert torch.all(s.abs() <= 1 + 1e-5)
    cand = torch.stack([d.roll(i, 0) for i in range(len(q))])  # (B, n, M, H): each question its own candidates
    want = torch.stack([score(q[i : i + 1], cand[i], kind)[0] for i in range(len(q))])
    torch.testing.assert_close(score_candidates(q, cand, kind), want)


@pytest.mark.parametrize("kind", SCORES)
def test_candidate_scores_carry_gradients_to_the_query(states, kind):
    q, d = states
    q = q.clone().requires_grad_(True)
    score_candidates(q, d.unsqueeze(0).expand(3, -1, -1, -1), kind).max(-1).values.sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_bad_kind_and_shapes_are_refused(states):
    q, d = states
    with pytest.raises(ValueError, match="retrieval score must be one of"):
        score(q, d, "dot")
    with pytest.raises(ValueError, match="equal n_mem and H"):
        score(q, d[:, :2], "maxsim")
    with pytest.raises(ValueError, match="retrieval_score must be one of"):
        ClaraConfig(retrieval_score="bm25")
    assert ClaraConfig.from_dict({"retrieval_score": "maxsim"}).retrieval_score == "maxsim"
    assert ClaraConfig().retrieval_score == "cosine"  # the paper's, and what older checkpoints mean
