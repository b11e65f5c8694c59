"""The full-text baseline stage: the generator LoRA learns to answer from raw document text.

Not a CLaRa stage. Issue 7 asks for a fair full-text RAG baseline: the same backbone, a
LoRA trained on the same QA data by the same recipe as stage 2, reading the documents as
text instead of memory states. So this step is stage 2's step with one change: each
question's k documents (:func:`clara.train.instruct.read_set`, same seeded choice) go into
the prompt as text, cut to ``doc_max_len`` tokens like the compressor's input. Only the
generator adapter trains; evaluate with ``clara eval -s full-text-lora --text-checkpoint``.
"""

from __future__ import annotations

import torch

from .. import tokens
from ..data.qa import QAExample
from ..model import ClaraModel
from .batch import Batch
from .config import TrainConfig
from .instruct import read_set


def make_step(cfg: TrainConfig):
    def step(model: ClaraModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        exs: list[QAExample] = batch.rows
        tok, max_len = model.tokenizer, model.config.doc_max_len
        prompts = [
            tokens.text_prompt(tok, ex.question, read_set(ex, cfg.k_docs, cfg.seed, batch.epoch, i), max_len)
            for ex, i in zip(exs, batch.indices)
        ]
        no_states = [torch.zeros(0, model.config.n_mem, model.hidden_size) for _ in prompts]
        ce = model.generator_loss(
            prompts, [ex.answers[0] for ex in exs], no_states, max_target_len=cfg.max_target_len, per_example=True
        ).mean()
        return ce, {"ce": ce.item()}

    return step
