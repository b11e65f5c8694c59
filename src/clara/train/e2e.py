"""Stage 3, end-to-end: the answer's loss trains the query reasoner through differentiable top-k.

The compressor is frozen here, so candidate document states are computed once and cached
on disk (``output_dir/doc_states.safetensors``, keyed by document id), unlike the
reference code that recomputes them every step. No relevance labels are used: gradients
reach the query reasoner only through the selection Z and the scores.
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..data.qa import QAExample
from ..model import ClaraModel
from ..score import score_candidates
from ..tokens import TASK_INSTRUCTIONS, chat
from ..topk import differentiable_topk
from .batch import Batch
from .config import TEACHERS, TrainConfig
from .instruct import rehearsal_ce
from .reader_distill import ReaderTeacher, answer_losses

log = logging.getLogger(__name__)

UPR_SYSTEM = "You are a helpful assistant."


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
    """Compress every candidate once (frozen compressor); reuse the file when it covers them all
    and was written by this compressor (its weights and ``doc_max_len``) from the same texts."""
    ids = sorted({d.id for ex in examples for d in ex.docs})
    texts = {d.id: d.full_text() for ex in examples for d in ex.docs}
    key = _cache_key(model, [(i, texts[i]) for i in ids])
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            written_by = (f.metadata() or {}).get("key")
        cached = load_file(str(path)) if written_by == key else {}
        if cached and all(i in cached for i in ids):
            log.info("using cached document states from %s", path)
            return cached
        log.info("%s holds other states (another compressor, length or texts); compressing again", path)
    was_training = model.training
    model.eval()
    states = model.compress([texts[i] for i in ids], batch_size=batch_size, progress=True)
    model.train(was_training)
    cache = {i: s.contiguous().cpu() for i, s in zip(ids, states)}
    tmp = path.with_suffix(".tmp")
    save_file(cache, str(tmp), metadata={"key": key})
    tmp.replace(path)
    return cache


def _cache_key(model: ClaraModel, docs: list[tuple[str, str]]) -> str:
    """What the cached states depend on: the compressor's weights and memory rows, the length
    documents are cut to, and every (id, text) compressed."""
    from ..index.fingerprint import adapter_hash  # the index's hash of the same weights

    digest = hashlib.sha256(adapter_hash(model, ("compressor",)).encode())
    digest.update(str(model.config.doc_max_len).encode())
    for doc_id, text in docs:
        digest.update(f"{doc_id}\0{text}\0".encode())
    return digest.hexdigest()


def cached_candidates(cache: dict[str, torch.Tensor], exs: list[QAExample]) -> torch.Tensor:
    """Each question's first n candidates' cached states, n the fewest any question has: (B, n, n_mem, H)."""
    n = min(len(ex.docs) for ex in exs)
    return torch.stack([torch.stack([cache[d.id] for d in ex.docs[:n]]) for ex in exs])


def answer_loss_through_topk(
    model: ClaraModel, exs: list[QAExample], cand: torch.Tensor, k: int, tau: float, max_target_len: int | None = None,
    teacher: ReaderTeacher | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Stage 3's forward: the query reasoner scores each question's candidates ``cand``
    (B, n, n_mem, H), differentiable top-k picks k, the generator reads them in rank order.

    Returns each question's answer loss (B,), the scores (B, n) the loss is differentiable in,
    the selection Z (B, k, n), and with a ``teacher`` each question's KL towards it (B,), the
    teacher reading the text of the k picked candidates in the same order (else None).
    """
    questions = [ex.question for ex in exs]
    q = model.encode_query(questions)  # (B, n_mem, H)
    scores = score_candidates(q, cand, model.config.retrieval_score)  # (B, n), as ClaraModel.score
    z = differentiable_topk(scores, k, tau)  # (B, k, n)
    selected = torch.einsum("bkn,bnmh->bkmh", z.to(cand.dtype), cand)  # (B, k, n_mem, H), rank order
    prompts = model.answer_prompts(questions, [k] * len(exs))
    texts = []  # with a teacher: the text of the hard picks (B, k), which the forward reads
    if teacher is not None:
        texts = [[ex.docs[i].full_text() for i in row] for ex, row in zip(exs, z.argmax(-1).tolist())]
    per_q, kl = answer_losses(model, prompts, [ex.answers[0] for ex in exs], list(selected), max_target_len, teacher,
                              questions, texts)
    return per_q, scores, z, kl


def candidate_losses(
    model: ClaraModel, example: QAExample, cand: torch.Tensor, teacher: str = "answer", texts: Sequence[str] | None = None
) -> torch.Tensor:
    """A teacher's loss for each candidate, read alone: cand (n, n_mem, H) -> (n,), lower = more useful.

    ``answer``: the generator writing the first answer after the RAG prompt (stage 3's own
    signal, zeroth order). ``question``: the generator writing the question under stage 1's
    question-writing prompt ("Write questions about the background"), i.e. how well the document
    predicts the question (UPR, Sachan et al. 2022, read from memory); needs no answer.
    ``question_answer``: that task's full target, question then answer. ``question_text``: the
    plain backbone (no adapter) writing the question after the candidate's text ``texts[i]``, cut
    where the compressor cuts it: UPR itself, a teacher that reads more than the memory holds.
    None uses a relevance label.
    """
    if teacher not in TEACHERS:
        raise ValueError(f"teacher must be one of {TEACHERS}, got {teacher!r}")
    n = cand.shape[0]
    question = f"Question: {example.question}"  # the layout of stage 1's qa targets (rows.scp_example)
    if teacher == "question_text":
        if texts is None or len(texts) != n:
            raise ValueError(f"teacher 'question_text' needs the {n} candidates' texts")
        ids = model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        cut = model.tokenizer.batch_decode([i[: model.config.doc_max_len] for i in ids])
        prompts = [chat(model.tokenizer, UPR_SYSTEM, f"Passage: {t}\n\n{TASK_INSTRUCTIONS['qa']}") for t in cut]
        no_docs = [cand.new_zeros((0, *cand.shape[1:]))] * n
        return model.generator_loss(prompts, [question] * n, no_docs, per_example=True, adapter=None)
    if teacher == "answer":
        prompts = model.answer_prompts([example.question] * n, [1] * n)
        target = example.answers[0]
    else:
        prompts = [model.prompt("qa", 1)] * n
        target = question if teacher == "question" else f"{question}\nAnswer: {example.answers[0]}"
    return model.generator_loss(prompts, [target] * n, list(cand.unsqueeze(1)), per_example=True)


def distillation_kl(scores: torch.Tensor, teacher_losses: torch.Tensor, score_temperature: float,
                    teacher_temperature: float) -> torch.Tensor:
    """Perplexity distillation (Atlas, Izacard et al. 2023): KL(teacher || query reasoner) per question.

    scores (B, n): retrieval scores, differentiable; teacher_losses (B, n): the generator's loss
    reading each candidate alone (``candidate_losses``), a constant here. The teacher's
    distribution is softmax(-losses / teacher_temperature), the query reasoner's
    softmax(scores / score_temperature). Returns (B,).

    Unlike the straight-through top-k gradient, which only reaches the candidates near the
    selection boundary through a product of soft weights, this moves every candidate's score
    towards how much that candidate alone helps the generator.
    """
    target = torch.softmax(-teacher_losses.detach().float() / teacher_temperature, dim=-1)
    log_student = torch.log_softmax(scores.float() / score_temperature, dim=-1)
    return F.kl_div(log_student, target, reduction="none").sum(-1)


def gold_recall(exs: list[QAExample], picked: torch.Tensor) -> float:
    """Mean share of each question's gold documents among its picked candidates (B, k) (a log, never a loss)."""
    return sum(
        len({ex.docs[i].id for i in picked[b].tolist()} & set(ex.gold_ids)) / max(1, len(ex.gold_ids))
        for b, ex in enumerate(exs)
    ) / len(exs)


def make_step(cfg: TrainConfig, cache: dict[str, torch.Tensor], teacher: ReaderTeacher | None = None):
    def step(model: ClaraModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        exs: list[QAExample] = batch.rows
        cand = cached_candidates(cache, exs).to(model.device)  # (B, n, n_mem, H)
        n = cand.shape[1]
        k = min(cfg.k_docs, n)
        per_q, scores, z, kl = answer_loss_through_topk(model, exs, cand, k, cfg.tau, cfg.max_target_len, teacher)
        loss = per_q.mean()
        parts = {"ce": loss.item(), f"recall@{k}": gold_recall(exs, z.argmax(-1))}
        if kl is not None:
            loss = loss + cfg.reader_distill_weight * kl.mean()
            parts["reader_kl"] = kl.mean().item()
        if cfg.distill_weight:
            # the candidates distilled over: all, or each question's current top m (m, k <= m <= n)
            m = max(k, min(cfg.distill_top or n, n))
            top = scores.detach().topk(m, dim=-1).indices  # (B, m)
            with torch.no_grad():  # the teacher reads each of them alone
                teacher_losses = torch.stack([
                    candidate_losses(model, ex, cand[b, top[b]], cfg.distill_teacher, [ex.docs[i].full_text() for i in top[b].tolist()])
                    for b, ex in enumerate(exs)
                ])  # (B, m)
            rank_kl = distillation_kl(scores.gather(1, top), teacher_losses, cfg.distill_score_temperature,
                                      cfg.distill_teacher_temperature).mean()
            loss = loss + cfg.distill_weight * rank_kl
            parts["distill"] = rank_kl.item()
            parts[f"teacher_recall@{k}"] = gold_recall(exs, top.gather(1, (-teacher_losses).topk(k, dim=-1).indices))
        if cfg.recon_mix:  # rehearsal of reconstruction from the cached (frozen) candidate states
            recon = rehearsal_ce(model, cfg, batch, [[d.full_text() for d in ex.docs[:n]] for ex in exs], list(cand))
            loss, parts["recon"] = loss + recon, recon.item()
        return loss, parts

    return step
