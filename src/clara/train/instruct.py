"""Stage 2, compression instruction tuning: question + k compressed documents -> answer.

Loss CE + lambda * MSE (+ optional bag-of-words anchoring, clara/train/bow.py) over all read documents; compressor and generator adapters train.
Each question reads its gold documents plus negatives from its own candidates, shuffled
with a seeded RNG, so the generator learns to find the answer among distractors.

``TrainConfig.recon_mix`` (not in the paper): that share of questions also trains stage 1's
reconstruction of one of the documents it read, from the states already computed (stage 3
does the same with one of its cached candidates). QA alone
teaches the generator to pick a few answer words out of memory and it unlearns reading memory
word by word (small backbones: docs/training.md); the rehearsal keeps that skill.
"""

from __future__ import annotations

import torch

from ..data.qa import QAExample
from ..model import ClaraModel
from .batch import Batch
from .config import TrainConfig
from .rows import row_rng
from .scp import with_memory_losses


def read_set(ex: QAExample, k: int, seed: int, epoch: int, index: int) -> list[str]:
    """The k document texts a question reads: gold first, then negatives, shuffled."""
    rng = row_rng(seed, epoch, index)
    gold = [d for d in ex.docs if d.id in ex.gold_ids]
    rest = [d for d in ex.docs if d.id not in ex.gold_ids]
    rng.shuffle(rest)
    chosen = (gold + rest)[:k]
    rng.shuffle(chosen)
    return [d.full_text() for d in chosen]


def make_step(cfg: TrainConfig):
    def step(model: ClaraModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        exs: list[QAExample] = batch.rows
        sets = [read_set(ex, cfg.k_docs, cfg.seed, batch.epoch, i) for ex, i in zip(exs, batch.indices)]
        flat = [t for s in sets for t in s]
        states, text_mean = model.compress_with_text_mean(flat)  # (sum k, n_mem, H), (sum k, H)
        per_q, start = [], 0
        for s in sets:
            per_q.append(states[start : start + len(s)])
            start += len(s)
        prompts = model.answer_prompts([ex.question for ex in exs], [len(s) for s in sets])
        ce = model.generator_loss(prompts, [ex.answers[0] for ex in exs], per_q, max_target_len=cfg.max_target_len, per_example=True
        ).mean()
        recon = rehearsal_ce(model, cfg, batch, sets, per_q) if cfg.recon_mix else None
        loss, parts = with_memory_losses(model, cfg, ce if recon is None else ce + recon, flat, states, text_mean)
        if recon is not None:
            parts["recon"] = recon.item()
        return loss, parts

    return step


def rehearsal_ce(
    model: ClaraModel, cfg: TrainConfig, batch: Batch, sets: list[list[str]], per_q: list[torch.Tensor]
) -> torch.Tensor:
    """Reconstruction loss of one read document for a reproducible ``recon_mix`` share of the
    questions, summed and divided by the batch's question count (0 for the others), so a batch
    split over processes gives the same value. ``per_q[i]``: (k_i, n_mem, H) states of the
    texts ``sets[i]`` (stage 2: the documents read; stage 3: the candidates).
    """
    picks = []  # (question position, document position)
    for pos, (idx, docs) in enumerate(zip(batch.indices, sets)):
        rng = row_rng(cfg.seed + 2, batch.epoch, idx)
        if rng.random() < cfg.recon_mix:
            picks.append((pos, rng.randrange(len(docs))))
    if not picks:
        return per_q[0].new_zeros(())
    prompts = [model.prompt("reconstruct", 1)] * len(picks)
    targets = [sets[q][d] for q, d in picks]
    states = [per_q[q][d : d + 1] for q, d in picks]  # (1, n_mem, H) each
    losses = model.generator_loss(prompts, targets, states, max_target_len=cfg.recon_target_len, per_example=True)
    return losses.sum() / len(sets)
