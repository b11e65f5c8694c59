"""Stage 3, end-to-end: the answer's loss trains the query reasoner through differentiable top-k.

The compressor is frozen here, so candidate document states are computed once and cached
on disk (``output_dir/doc_states.safetensors``, keyed by document id), unlike the
reference code that recomputes them every step. No relevance labels are used: gradients
reach the query reasoner only through the selection Z and the scores.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.qa import QAExample
from ..model import ClaraModel
from ..score import score_candidates
from ..topk import differentiable_topk
from .batch import Batch
from .config import TrainConfig
from .instruct import rehearsal_ce

log = logging.getLogger(__name__)


def add_candidates(examples: list[QAExample], n: int, seed: int) -> list[QAExample]:
    """Pad each question's candidates to ``n`` with documents of other questions (easy negatives)."""
    pool = [d for ex in examples for d in ex.docs]
    rng = random.Random(seed)
    for ex in examples:
        have = {d.id for d in ex.docs}
        while len(ex.docs) < n and len(pool) > len(have):
            d = rng.choice(pool)
            if d.id not in have:
                ex.docs.append(d)
                have.add(d.id)
        ex.docs = ex.docs[:n] if len(ex.docs) > n else ex.docs
    return examples


@torch.no_grad()
def cache_doc_states(model: ClaraModel, examples: list[QAExample], path: Path, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Compress every candidate once (frozen compressor); reuse the file when it covers them all."""
    ids = sorted({d.id for ex in examples for d in ex.docs})
    if path.is_file():
        cached = load_file(str(path))
        if all(i in cached for i in ids):
            log.info("using cached document states from %s", path)
            return cached
    texts = {d.id: d.full_text() for ex in examples for d in ex.docs}
    was_training = model.training
    model.eval()
    states = model.compress([texts[i] for i in ids], batch_size=batch_size, progress=True)
    model.train(was_training)
    cache = {i: s.contiguous().cpu() for i, s in zip(ids, states)}
    tmp = path.with_suffix(".tmp")
    save_file(cache, str(tmp))
    tmp.replace(path)
    return cache


def answer_loss_through_topk(
    model: ClaraModel, exs: list[QAExample], cand: torch.Tensor, k: int, tau: float, max_target_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage 3's forward: the query reasoner scores each question's candidates ``cand``
    (B, n, n_mem, H), differentiable top-k picks k, the generator reads them in rank order.

    Returns each question's answer loss (B,), the scores (B, n) the loss is differentiable in,
    and the selection Z (B, k, n).
    """
    q = model.encode_query([ex.question for ex in exs])  # (B, n_mem, H)
    scores = score_candidates(q, cand, model.config.retrieval_score)  # (B, n), as ClaraModel.score
    z = differentiable_topk(scores, k, tau)  # (B, k, n)
    selected = torch.einsum("bkn,bnmh->bkmh", z.to(cand.dtype), cand)  # (B, k, n_mem, H), rank order
    prompts = model.answer_prompts([ex.question for ex in exs], [k] * len(exs))
    per_q = model.generator_loss(prompts, [ex.answers[0] for ex in exs], list(selected), max_target_len=max_target_len,
                                 per_example=True)
    return per_q, scores, z


def answer_loss_alone(model: ClaraModel, example: QAExample, cand: torch.Tensor) -> torch.Tensor:
    """The generator's loss on ``example``'s first answer reading each candidate alone:
    cand (n, n_mem, H) -> (n,). The zeroth-order version of stage 3's signal: a teacher that
    needs the answer, for measuring (benchmarks/retrieval_scoring.py, stage3_signal.py)."""
    n = cand.shape[0]
    prompts = model.answer_prompts([example.question] * n, [1] * n)
    return model.generator_loss(prompts, [example.answers[0]] * n, list(cand.unsqueeze(1)), per_example=True)


def make_step(cfg: TrainConfig, cache: dict[str, torch.Tensor]):
    def step(model: ClaraModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        exs: list[QAExample] = batch.rows
        n = min(len(ex.docs) for ex in exs)
        cand = torch.stack([torch.stack([cache[d.id] for d in ex.docs[:n]]) for ex in exs]).to(model.device)  # (B, n, n_mem, H)
        k = min(cfg.k_docs, n)
        per_q, _, z = answer_loss_through_topk(model, exs, cand, k, cfg.tau, cfg.max_target_len)
        loss = per_q.mean()
        parts = {"ce": loss.item()}
        if cfg.recon_mix:  # rehearsal of reconstruction from the cached (frozen) candidate states
            recon = rehearsal_ce(model, cfg, batch, [[d.full_text() for d in ex.docs[:n]] for ex in exs], list(cand))
            loss, parts["recon"] = loss + recon, recon.item()
        gold_hit = sum(
            len({ex.docs[i].id for i in z[b].argmax(-1).tolist()} & set(ex.gold_ids)) / max(1, len(ex.gold_ids))
            for b, ex in enumerate(exs)
        ) / len(exs)
        return loss, {**parts, f"recall@{k}": gold_hit}

    return step
