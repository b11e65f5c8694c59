"""differentiable_topk: hard forward, masked-softmax straight-through backward."""

from __future__ import annotations

import pytest
import torch

from clara import differentiable_topk


def soft_path(scores: torch.Tensor, k: int, tau: float, idx: torch.Tensor) -> torch.Tensor:
    """The soft selection with the hard indices held fixed (what the backward pass differentiates)."""
    out = []
    taken = torch.zeros_like(scores, dtype=torch.bool)
    for j in range(k):
        out.append(torch.softmax((scores / tau).masked_fill(taken, float("-inf")), -1))
        taken = taken | torch.nn.functional.one_hot(idx[:, j], scores.shape[1]).bool()
    return torch.stack(out, 1)


def test_forward_is_hard_topk():
    torch.manual_seed(0)
    scores = torch.randn(4, 10)
    z = differentiable_topk(scores, 3, tau=0.5)
    idx = scores.topk(3).indices
    assert torch.equal(z, torch.nn.functional.one_hot(idx, 10).float())


def test_gradient_matches_finite_differences_of_soft_path():
    torch.manual_seed(0)
    scores = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, 6, dtype=torch.float64)  # a fixed linear read-out of Z
    z = differentiable_topk(scores, 3, tau=0.7)
    (z * weights).sum().backward()
    grad = scores.grad
    assert grad.abs().sum() > 0

    idx = scores.detach().topk(3).indices
    eps = 1e-6
    fd = torch.zeros_like(grad)
    base = scores.detach()
    for b in range(2):
        for n in range(6):
            plus, minus = base.clone(), base.clone()
            plus[b, n] += eps
            minus[b, n] -= eps
            f = lambda s: (soft_path(s, 3, 0.7, idx) * weights).sum()  # noqa: E731
            fd[b, n] = (f(plus) - f(minus)) / (2 * eps)
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=1e-5)


def test_taken_items_get_exactly_zero_soft_weight():
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0]], requires_grad=True)
    z = differentiable_topk(scores, 2, tau=1.0)
    # second step's soft distribution excludes item 0 (taken at step 0)
    k_soft = soft_path(scores.detach(), 2, 1.0, torch.tensor([[0, 1]]))
    assert k_soft[0, 1, 0] == 0
    # gradient through selected states
    states = torch.randn(1, 4, 5)
    torch.einsum("bkn,bnd->bkd", z, states).sum().backward()
    assert scores.grad.abs().sum() > 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        differentiable_topk(torch.randn(2, 3), 4)
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        differentiable_topk(torch.randn(3), 1)
    with pytest.raises(ValueError, match="tau"):
        differentiable_topk(torch.randn(2, 3), 1, tau=0)
