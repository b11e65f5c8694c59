"""Stage 2, compression instruction tuning: question + k compressed documents -> answer.

Loss CE + lambda * MSE (+ optional bag-of-words anchoring, clara/train/bow.py) over all read documents; compressor and generator adapters train.
Each question reads its gold documents plus negatives from its own candidates, shuffled
with a seeded RNG, so the generator learns to find the answer among distractors.

``TrainConfig.recon_mix`` (not in the paper): that share of questions also trains stage 1's
reconstruction of one of the documents it read, from the states already computed (stage 3
does the same with one of its cached candidates). QA alone
teaches the generator to pick a few answer words out of memory and it unlearns reading memory
word by word (small backbones: docs/training.md); the rehearsal keeps that skill.

``TrainConfig.retrieval_weight`` (not in the paper): the compressor also encodes the question,
scores the k documents it reads under ``retrieval_score`` and learns, by a multi-positive
InfoNCE on the gold ones (:func:`retrieval_nce`), to rank them first. ``retrieval_docs`` adds
more of the question's own candidates, compressed for the ranking only, so it sees the
distractors stage 3 and evaluation rank; ``retrieval_in_batch`` adds the batch's other
questions' documents as negatives, so NQ's single-passage questions learn too. Stage 3 copies
the compressor into the query reasoner, so this is where its ranking starts; unlike stage 3,
where the compressor is frozen and only the question side can move, both sides learn here
(the shipped default then keeps that ranking: ``train_query_reasoner=false``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.corpus import Document
from ..data.qa import QAExample
from ..model import ClaraModel
from ..score import score, score_candidates
from .batch import Batch
from .config import TrainConfig
from .reader_distill import ReaderTeacher, answer_losses
from .rows import row_rng
from .scp import with_memory_losses


def read_docs(ex: QAExample, k: int, seed: int, epoch: int, index: int) -> list[Document]:
    """The k documents a question reads: gold first, then negatives, shuffled."""
    rng = row_rng(seed, epoch, index)
    gold = [d for d in ex.docs if d.id in ex.gold_ids]
    rest = [d for d in ex.docs if d.id not in ex.gold_ids]
    rng.shuffle(rest)
    chosen = (gold + rest)[:k]
    rng.shuffle(chosen)
    return chosen


def ranked_docs(ex: QAExample, read: list[Document], n: int, seed: int, epoch: int, index: int) -> list[Document]:
    """The documents a question ranks in the retrieval loss: the ones it reads, then up to
    n in all with more of its own candidates, in a seeded order (n <= len(read): just those read)."""
    ids = {d.id for d in read}
    rest = [d for d in ex.docs if d.id not in ids]
    row_rng(seed + 3, epoch, index).shuffle(rest)
    return read + rest[: max(0, n - len(read))]


def read_set(ex: QAExample, k: int, seed: int, epoch: int, index: int) -> list[str]:
    """The texts of :func:`read_docs`."""
    return [d.full_text() for d in read_docs(ex, k, seed, epoch, index)]


def learnable(gold: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, n) bool gold and valid -> (B,): the questions with a gold and a non-gold real candidate."""
    return (gold & valid).any(-1) & (valid & ~gold).any(-1)


def retrieval_nce(scores: torch.Tensor, gold: torch.Tensor, temperature: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-positive InfoNCE: scores (B, n), gold (B, n) bool -> (B,) = -log of the softmax mass on gold.

    ``valid`` (B, n) bool marks real candidates (questions read different numbers of documents;
    the rest is padding). A question whose candidates are all gold, or none, has nothing to
    learn and gives 0 (not inf).
    """
    valid = torch.ones_like(gold) if valid is None else valid
    gold = gold & valid
    logp = torch.log_softmax(scores.float().masked_fill(~valid, float("-inf")) / temperature, dim=-1)
    learns = learnable(gold, valid)  # (B,)
    # rows that do not learn count every candidate as gold (loss 0) rather than -logsumexp(-inf) = inf,
    # whose backward would be NaN even when masked out afterwards
    positive = torch.where(learns.unsqueeze(-1), gold, valid)
    nll = -torch.logsumexp(logp.masked_fill(~positive, float("-inf")), dim=-1)
    return nll * learns


def make_step(cfg: TrainConfig, teacher: ReaderTeacher | None = None):
    def step(model: ClaraModel, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        exs: list[QAExample] = batch.rows
        docs = [read_docs(ex, cfg.k_docs, cfg.seed, batch.epoch, i) for ex, i in zip(exs, batch.indices)]
        sets = [[d.full_text() for d in ds] for ds in docs]
        flat = [t for s in sets for t in s]
        states, text_mean = model.compress_with_text_mean(flat)  # (sum k, n_mem, H), (sum k, H)
        per_q = list(states.split([len(s) for s in sets]))  # (k_i, n_mem, H) each
        questions = [ex.question for ex in exs]
        prompts = model.answer_prompts(questions, [len(s) for s in sets])
        ce, kl = answer_losses(model, prompts, [ex.answers[0] for ex in exs], per_q, cfg.max_target_len, teacher, questions, sets)
        answer = ce.mean() if kl is None else ce.mean() + cfg.reader_distill_weight * kl.mean()
        recon = rehearsal_ce(model, cfg, batch, sets, per_q) if cfg.recon_mix else None
        loss, parts = with_memory_losses(model, cfg, answer if recon is None else answer + recon, flat, states, text_mean)
        if kl is not None:  # "ce" stays the cross-entropy (with rehearsal's, as without a teacher)
            parts["ce"] = ce.mean().item() + (recon.item() if recon is not None else 0.0)
            parts["reader_kl"] = kl.mean().item()
        if recon is not None:
            parts["recon"] = recon.item()
        if cfg.retrieval_weight:
            ranked = [ranked_docs(ex, ds, cfg.retrieval_docs, cfg.seed, batch.epoch, i)
                      for ex, ds, i in zip(exs, docs, batch.indices)]
            extra = [d.full_text() for ds, rs in zip(docs, ranked) for d in rs[len(ds):]]
            if extra:  # compressed for the ranking only: no generator, MSE or anchoring loss reads them
                more = model.compress(extra).split([len(rs) - len(ds) for ds, rs in zip(docs, ranked)])
                per_q = [torch.cat([s, m]) for s, m in zip(per_q, more)]
            nce, recall1 = retrieval_loss(model, exs, ranked, per_q, cfg.retrieval_temperature, cfg.retrieval_in_batch)
            loss = loss + cfg.retrieval_weight * nce
            parts["retrieval"], parts["retrieval_top1_gold"] = nce.item(), recall1
        return loss, parts

    return step


def retrieval_loss(
    model: ClaraModel, exs: list[QAExample], docs: list[list[Document]], per_q: list[torch.Tensor], temperature: float,
    in_batch: bool = False,
) -> tuple[torch.Tensor, float]:
    """The compressor encodes each question and ranks its documents ``docs[i]`` (states
    ``per_q[i]``: (n_i, n_mem, H); those it reads, and more with ``retrieval_docs``); with
    ``in_batch``, the batch's other questions' documents too, as negatives (DPR's in-batch
    negatives: a question reading only its gold passage, as NQ's, then learns as well). Returns
    the mean :func:`retrieval_nce` over the batch's questions (0 for those with no gold or no
    negative candidate) and the share of them that rank a gold document first (a log).
    """
    q = model.compress([ex.question for ex in exs])  # (B, n_mem, H): stage 3's query reasoner starts here
    dev = q.device
    if in_batch:
        flat = torch.cat(per_q)  # (N, n_mem, H): every document of the batch
        owner = [i for i, s in enumerate(per_q) for _ in range(len(s))]
        ids = [d.id for ds in docs for d in ds]
        own = [{d.id for d in ds} for ds in docs]
        first = {doc_id: j for j, doc_id in reversed(list(enumerate(ids)))}  # id -> its first position
        # each document once per question: its own copy, else the batch's first
        valid = torch.tensor([[owner[j] == i or (ids[j] not in own[i] and first[ids[j]] == j) for j in range(len(ids))]
                              for i in range(len(exs))], device=dev)
        gold = torch.tensor([[ids[j] in ex.gold_ids for j in range(len(ids))] for ex in exs], device=dev) & valid
        scores = score(q, flat, model.config.retrieval_score)  # (B, N)
    else:
        n = max(len(s) for s in per_q)
        cand = torch.stack([F.pad(s, (0, 0, 0, 0, 0, n - len(s))) for s in per_q])  # (B, n, n_mem, H), zero padded
        valid = torch.tensor([[i < len(s) for i in range(n)] for s in per_q], device=dev)
        gold = torch.tensor([[i < len(ds) and ds[i].id in ex.gold_ids for i in range(n)] for ex, ds in zip(exs, docs)],
                            device=dev)
        scores = score_candidates(q, cand, model.config.retrieval_score)  # (B, n); padding masked in retrieval_nce
    learns = learnable(gold, valid)
    top = scores.masked_fill(~valid, float("-inf")).argmax(-1, keepdim=True)
    top1 = (gold.gather(1, top).squeeze(-1) & learns).float().mean().item()
    return retrieval_nce(scores, gold, temperature, valid).mean(), top1


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
