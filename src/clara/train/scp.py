"""Stage 1, Salient Compressor Pretraining: CE of the generator from memory states + lambda * MSE.

MSE reduction (stated, as CLARA.md asks): ``F.mse_loss(mean_text_state, mean_mem_state)``,
i.e. the squared difference averaged over the hidden dimension and the batch, as in the
reference code (the paper's squared L2 norm is H times larger).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import ClaraModel
from .batch import Batch
from .bow import bow_loss, require_one_row_per_slot, span_loss, span_means
from .config import TrainConfig
from .rows import ScpRow, pick_task, row_rng, scp_example


def scp_prompts(model: ClaraModel, rows: list[ScpRow], cfg: TrainConfig, epoch: int, indices: list[int]) -> tuple[list[str], list[str]]:
    """Prompt and target of each row, with its task drawn reproducibly."""
    prompts, targets = [], []
    for row, idx in zip(rows, indices):
        rng = row_rng(cfg.seed, epoch, idx)
        task, question, target = scp_example(row, pick_task(row, cfg.task_weights, rng), rng)
        prompts.append(model.prompt(task, 1, question=question))
        targets.append(target)
    return prompts, targets


def make_step(cfg: TrainConfig):
    def step(model: ClaraModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        rows: list[ScpRow] = batch.rows
        states, text_mean = model.compress_with_text_mean([r.doc for r in rows])  # (B, n_mem, H), (B, H)
        prompts, targets = scp_prompts(model, rows, cfg, batch.epoch, batch.indices)
        read = model.read_rows(states)  # (B, n_read, H) generator input rows
        if cfg.oracle_mix:
            read = with_oracle_rows(model, cfg, batch, read)
        if cfg.memory_dropout:
            read = with_dropped_rows(model, cfg, batch, read)
        ce = model.generator_loss(
            prompts, targets, [r.unsqueeze(0) for r in read], max_target_len=cfg.max_target_len, per_example=True,
            adapter="generator" if cfg.train_generator else None, pre_read=True,
        ).mean()  # mean of per-example means: equal across any split of the batch over processes
        return with_memory_losses(model, cfg, ce, [r.doc for r in rows], states, text_mean)

    return step


def with_oracle_rows(model: ClaraModel, cfg: TrainConfig, batch: Batch, read: torch.Tensor) -> torch.Tensor:
    """``read`` (B, n_read, H) with the rows of a reproducible ``oracle_mix`` share of examples
    replaced by their documents' span means (bow.span_means).

    Small backbones: the generator learns to read clean bag-of-words memory far faster than
    the compressor's early, blurred version of it (docs/training.md), and the compressor,
    pulled towards the same rows by the anchoring, is then read by a generator that already
    knows what they mean.
    """
    require_one_row_per_slot(model)  # refused whether or not this batch draws an oracle example
    use = drawn(cfg.seed + 1, batch, cfg.oracle_mix)
    if not any(use):
        return read
    oracle = span_means(model, [r.doc for r in batch.rows]).to(read.dtype)  # (B, n_spans, H)
    return torch.where(torch.tensor(use, device=read.device)[:, None, None], oracle, read)


def with_dropped_rows(model: ClaraModel, cfg: TrainConfig, batch: Batch, read: torch.Tensor) -> torch.Tensor:
    """``read`` (B, n_mem, H) with the rows of a reproducible ``memory_dropout`` share of
    examples replaced by what zeroed memory states read as (``read_memory(0)``).

    Why: information flow's condition (b) reads zeroed states. Without this, no training
    example ever shows the generator those rows, so (b) measures a generator confused by an
    unseen input rather than one answering without the document, and another document's
    states (real words, however wrong) look better than "nothing". With it the generator
    learns a calibrated no-document prior, and real/zeroed measures what memory adds.
    Dropped examples train the generator only: their CE does not reach the compressor.
    """
    use = drawn(cfg.seed + 2, batch, cfg.memory_dropout)
    if not any(use):
        return read
    zero = model.read_rows(read.new_zeros(1, model.config.n_mem, read.shape[-1])).to(read.dtype)  # (1, n_read, H)
    return torch.where(torch.tensor(use, device=read.device)[:, None, None], zero, read)


def drawn(salt_seed: int, batch: Batch, share: float) -> list[bool]:
    """Which examples of ``batch`` fall in a ``share`` drawn per (seed, epoch, row): the same
    rows whatever the batch size, process count or resume point. Each option passes its own
    ``salt_seed`` so the draws of two options are independent."""
    return [row_rng(salt_seed, batch.epoch, i).random() < share for i in batch.indices]


def with_memory_losses(
    model: ClaraModel, cfg: TrainConfig, ce: torch.Tensor, texts: list[str], states: torch.Tensor, text_mean: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """CE + lambda * MSE (+ bow_weight * bag-of-words anchoring + span_weight * span-mean loss):
    the loss of stages 1 and 2, with its parts.

    ``states``: (N, n_mem, H) memory states of ``texts``; ``text_mean``: (N, H) their mean text-token states.
    """
    mse = F.mse_loss(states.mean(1).float(), text_mean.float())
    loss, parts = ce + cfg.mse_weight * mse, {"ce": ce.item(), "mse": mse.item()}
    if cfg.bow_weight:
        bow = bow_loss(model, texts, states)
        loss, parts["bow"] = loss + cfg.bow_weight * bow, bow.item()
    if cfg.span_weight:
        span = span_loss(model, texts, states)
        loss, parts["span"] = loss + cfg.span_weight * span, span.item()
    return loss, parts


def trainable(cfg: TrainConfig) -> tuple[tuple[str, ...], bool]:
    """Adapters (and whether the memory rows) that stage 1 trains."""
    return (("compressor", "generator") if cfg.train_generator else ("compressor",)), True
