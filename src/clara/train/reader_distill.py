"""Answer distillation from a full-text reader (not in the paper; ``TrainConfig.reader_teacher``).

The compressed reader's answers trail a full-text reader's on the same documents, and the gap
is one of reading, not retrieval (docs/training.md, session 20). Gold answers give the
generator one token to aim at per position; a reader that sees the documents' text has a
whole distribution there, which says which other words of the documents were plausible.
So stages 2 and 3 can add, per answer token, ``T^2 * KL(teacher || student)`` at temperature
``T`` (Hinton et al. 2015), the teacher being a ``clara train text`` checkpoint (the fair
full-text baseline) reading, as text cut where the compressor cuts it, the same documents the
student reads compressed, and writing the same gold answer. The teacher is frozen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import tokens
from ..model import ClaraModel, row_means

log = logging.getLogger(__name__)


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N, V) logits each -> (N,): ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``.

    The T^2 keeps the gradient's scale independent of T (Hinton et al. 2015).
    """
    t = temperature
    log_student = torch.log_softmax(student_logits.float() / t, dim=-1)
    log_teacher = torch.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(-1) * t * t


@dataclass
class ReaderTeacher:
    """A frozen full-text reader whose answer distributions a compressed reader learns."""

    model: ClaraModel
    temperature: float = 1.0

    @classmethod
    def load(cls, path: str, temperature: float = 1.0) -> "ReaderTeacher":
        """A ``clara train text`` checkpoint (its generator adapter reads text) as a frozen teacher."""
        model = ClaraModel.from_pretrained(path)
        model.eval()
        model.requires_grad_(False)
        log.info("reader teacher: %s (temperature %g)", path, temperature)
        return cls(model, temperature)

    @torch.no_grad()
    def logits(self, questions: Sequence[str], doc_texts: Sequence[Sequence[str]], answers: Sequence[str],
               max_target_len: int | None, doc_max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The teacher's logits (N, V), labels (N,) and example indices (N,) on each question's
        answer, reading ``doc_texts[i]`` cut to ``doc_max_len`` tokens (default: the teacher's own
        ``doc_max_len``) (as ``ClaraModel.target_logits``)."""
        m = self.model
        cut = doc_max_len or m.config.doc_max_len
        prompts = [tokens.text_prompt(m.tokenizer, q, list(texts), cut) for q, texts in zip(questions, doc_texts)]
        no_states = [torch.zeros(0, m.config.n_mem, m.hidden_size) for _ in prompts]
        return m.target_logits(prompts, answers, no_states, max_target_len=max_target_len)


def answer_losses(
    model: ClaraModel,
    prompts: Sequence[str],
    answers: Sequence[str],
    states: Sequence[torch.Tensor],
    max_target_len: int | None,
    teacher: ReaderTeacher | None = None,
    questions: Sequence[str] = (),
    doc_texts: Sequence[Sequence[str]] = (),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each question's answer loss (B,) reading ``states`` (k_i, n_mem, H) each, and with a
    ``teacher`` each one's mean :func:`token_kl` towards it (B,), the teacher reading the texts
    ``doc_texts[i]`` of the same documents (else None).
    """
    logits, labels, rows = model.target_logits(prompts, answers, states, max_target_len=max_target_len)
    n = len(prompts)
    ce = row_means(F.cross_entropy(logits, labels, reduction="none"), rows, n)
    if teacher is None:
        return ce, None
    if len(questions) != n or len(doc_texts) != n:
        raise ValueError(f"the reader teacher needs the questions and document texts of all {n} prompts")
    if teacher.model.device != model.device:
        teacher.model.to(model.device)
    # the teacher reads the text the student's compressor saw: cut at the student's doc_max_len
    t_logits, t_labels, _ = teacher.logits(questions, doc_texts, answers, max_target_len, model.config.doc_max_len)
    if t_labels.shape != labels.shape or not torch.equal(t_labels, labels) or t_logits.shape[-1] != logits.shape[-1]:
        raise ValueError("the reader teacher tokenizes the answers differently from the model: it must share its backbone")
    return ce, row_means(token_kl(logits, t_logits, teacher.temperature), rows, n)
