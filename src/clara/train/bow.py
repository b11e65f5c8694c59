"""Bag-of-words anchoring of memory states: an auxiliary compressor loss for small backbones.

Not in the paper. At 135M parameters the paper's CE + MSE objective lets the memory states
collapse to one document-independent vector (docs/training.md): the generator learns to
ignore the memory before the compressor has learned to write anything into it. This loss
gives the compressor a direct, dense signal from the first step: memory slot ``i`` of a
document, read through the backbone's own output head, must predict the tokens of the
``i``-th of ``n_mem`` equal spans of that document::

    bow = mean over document tokens t of  -log softmax(lm_head(state[slot(t)]))[t]

so every slot holds its span's words (document-specific by construction), in the space the
output head (tied to the input embeddings in most small LMs) already reads.

``span_loss`` is the same target seen from the generator's side: under the soft-token readout
the generator reads only the *expected* input embedding of each slot, and a perfect anchoring
makes that the mean embedding of the span (``span_means``). The bag-of-words cross-entropy
asks for the whole distribution; ``span_loss`` asks only for the mean it is read as.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..model import ClaraModel, row_means


def span_targets(
    model: ClaraModel, texts: Sequence[str], n_spans: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every kept document token: (row, slot, token id), each a (T,) tensor.

    Token ``j`` of a document with ``L`` kept tokens belongs to span ``j * n // L``, so short
    documents spread over all spans too; ``n`` is ``n_spans``, by default ``config.n_spans``
    (``n_mem``, or one span per generator row under ``mem_readout="sub_spans"``), and "slot"
    below means such a span's row.
    """
    n_spans, max_len = n_spans or model.config.n_spans, model.config.doc_max_len
    bodies = model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows, slots, ids = [], [], []
    for b, body in enumerate(bodies):
        body = body[:max_len]  # the compressor sees the same truncation
        n = len(body)
        rows += [b] * n
        slots += [j * n_spans // n for j in range(n)]
        ids += body
    dev = model.device
    return (torch.tensor(rows, device=dev), torch.tensor(slots, device=dev), torch.tensor(ids, device=dev))


def bow_loss(model: ClaraModel, texts: Sequence[str], states: torch.Tensor) -> torch.Tensor:
    """Mean token loss of each document's span tokens under its memory slots: a scalar.

    ``states``: (B, n_mem, H), the compressor's memory states of ``texts``.
    """
    rows, slots, ids = span_targets(model, texts)
    logp = F.log_softmax(model.logits(model.anchor_states(states)), dim=-1)  # (B, n_spans, V)
    return row_means(-logp[rows, slots, ids], rows, states.shape[0]).mean()  # mean of per-document means


@torch.no_grad()
def span_means(model: ClaraModel, texts: Sequence[str]) -> torch.Tensor:
    """Each slot's span, as the mean input embedding of its tokens: (B, n_spans, H), no gradient.

    This is the soft token (``mem_readout="soft_tokens"``) of a perfect anchoring, whose output
    distribution is each span's empirical token distribution: the best the compressor can
    write under ``bow_loss``, and an oracle memory for the generator to learn to read.
    """
    rows, slots, ids = span_targets(model, texts)
    n_spans = model.config.n_spans
    flat = rows * n_spans + slots  # (T,) index of (document, slot)
    tok = model.embed(ids.unsqueeze(0))[0]  # (T, H), scaled like any input row
    sums = torch.zeros(len(texts) * n_spans, tok.shape[-1], dtype=tok.dtype, device=tok.device).index_add_(0, flat, tok)
    counts = torch.bincount(flat, minlength=len(texts) * n_spans).clamp(min=1).unsqueeze(-1)
    return (sums / counts).view(len(texts), n_spans, -1)


def span_loss(model: ClaraModel, texts: Sequence[str], states: torch.Tensor) -> torch.Tensor:
    """Relative squared distance between what the generator reads and the span means: a scalar.

    ``states``: (B, n_mem, H), the compressor's memory states of ``texts``. Per document,
    ``sum |read - span_mean|^2 / sum |span_mean|^2`` over its slots (0 = the oracle of
    ``span_means``, 1 = as far as zeroed memory), then the mean over documents, so a batch split
    over processes gives the same value.
    """
    require_one_row_per_slot(model)
    read = model.read_rows(states)  # (B, n_read, H), n_read = n_spans here
    return _relative_gap(read, span_means(model, texts).to(read.dtype))


def require_one_row_per_slot(model: ClaraModel) -> None:
    """Refuse a model whose generator reads several rows per anchored span (``top_tokens`` with
    readout_tokens > 1): span means are one row per span (span_loss, span_gap and stage 1's
    oracle_mix all compare or swap them with the read rows)."""
    r = model.config.readout_tokens
    if model.config.n_read != model.config.n_spans:
        raise ValueError(
            f"the span-mean target has one row per memory slot; readout_tokens={r} gives {r} rows per slot: "
            "use span_weight=0 and oracle_mix=0 with it"
        )


def _relative_gap(read: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per document sum |read - target|^2 / sum |target|^2 over its slots, mean over documents."""
    return ((read - target).pow(2).sum((1, 2)) / target.pow(2).sum((1, 2))).mean()


@torch.no_grad()
def span_gap(model: ClaraModel, texts: Sequence[str]) -> dict[str, float]:
    """How far the memory of ``texts`` is from the bag-of-words oracle, as numbers.

    ``span_loss`` (0 = the oracle), ``span_loss_other`` (the same against another document's
    span means: what a memory without information scores against a real target), ``cosine``
    (mean cosine between each slot's read row and its span mean) and ``bow`` (``bow_loss``).
    """
    if len(texts) < 2:
        raise ValueError("span_gap needs at least 2 texts (span_loss_other compares with another document)")
    states = model.compress(list(texts))  # (N, n_mem, H)
    require_one_row_per_slot(model)
    read = model.read_rows(states)
    oracle = span_means(model, texts).to(read.dtype)
    return {
        "span_loss": _relative_gap(read, oracle).item(),  # span_loss, without reading and averaging twice
        "span_loss_other": _relative_gap(read, oracle.roll(1, 0)).item(),  # each against the next one's spans
        "cosine": F.cosine_similarity(read, oracle, dim=-1).mean().item(),
        "bow": bow_loss(model, texts, states).item(),
    }
