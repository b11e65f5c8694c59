"""Stage 2, compression instruction tuning: question + k compressed documents -> answer.

Loss CE + lambda * MSE (+ optional bag-of-words anchoring, clara/train/bow.py) over all read documents; compressor and generator adapters train.
Each question reads its gold documents plus negatives from its own candidates, shuffled
with a seeded RNG, so the generator learns to find the answer among distractors.
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
        return with_memory_losses(model, cfg, ce, flat, states, text_mean)

    return step
