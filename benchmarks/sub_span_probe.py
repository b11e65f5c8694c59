"""Is word order inside a memory slot linearly readable? A probe on frozen memory states.

The sub-span readout (``mem_readout="sub_spans"``) asks each of a document's n_mem states to
yield ``r`` soft tokens, the j-th predicting the words of the j-th of r parts of the slot's
span. Trained end to end from a ratio-16 checkpoint it did not learn to split (docs/training.md,
session 20). This probe separates the two possible reasons: with the compressor frozen, it
trains only per-part maps of the states (full-rank, ``state_j = state + state @ W_j``, W at
zero) on the anchoring loss over the n_mem * r narrower spans, and reports that loss on
held-out documents:

- ``unsplit``: every part reads the state itself (W = 0): what a slot's one bag scores
  against narrower spans;
- ``probe``: the trained maps: how much order within a slot a linear read recovers;
- ``floor``: each part's own empirical word distribution (a perfect bag of its words).

If ``probe`` stays near ``unsplit``, the states do not hold the order and no readout can
recover it without retraining the compressor.

    python benchmarks/sub_span_probe.py runs/scp16_soft_step850 --parts 4 --out benchmarks/results/sub_span_probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from clara import ClaraModel
from clara.data.corpus import read_corpus
from clara.model import row_means
from clara.train.bow import span_targets

ROOT = Path(__file__).resolve().parents[1]


def anchoring_loss(model: ClaraModel, split: torch.Tensor, targets: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """bow_loss on given part states ``split`` (B, n_parts, H): the mean over documents of each
    document's mean token loss under its part's output-head distribution."""
    rows, parts, ids = targets
    logp = F.log_softmax(model.logits(split), dim=-1)  # (B, n_parts, V)
    return row_means(-logp[rows, parts, ids], rows, split.shape[0]).mean()


def floor(targets: tuple[torch.Tensor, ...], n_docs: int, n_parts: int) -> float:
    """The loss of a perfect bag per part: each part's empirical token distribution (its entropy)."""
    rows, parts, ids = targets
    per_doc = torch.zeros(n_docs)
    counts = torch.bincount(rows, minlength=n_docs).float()
    for b in range(n_docs):
        sel = rows == b
        for p in parts[sel].unique():
            toks = ids[sel & (parts == p)]
            _, c = toks.unique(return_counts=True)
            q = c.float() / c.sum()
            per_doc[b] += -(c.float() * q.log()).sum()
    return (per_doc / counts).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--parts", type=int, default=4, help="Parts per memory slot (readout_tokens).")
    ap.add_argument("--corpus", default=str(ROOT / "train_data" / "recon.jsonl"))
    ap.add_argument("--train-docs", type=int, default=1536)
    ap.add_argument("--test-docs", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4, help="Adam; at 1e-3 the first steps overshoot (states have norms of ~50).")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    model = ClaraModel.from_pretrained(args.checkpoint, device="cpu")
    model.requires_grad_(False)
    docs = [d.full_text() for d in read_corpus(args.corpus)]
    step = max(1, len(docs) // (args.train_docs + args.test_docs))  # spread over the corpus's sources
    docs = docs[::step][: args.train_docs + args.test_docs]
    train_texts, test_texts = docs[: args.train_docs], docs[args.train_docs :]
    with torch.no_grad():
        train_states = model.compress(train_texts, batch_size=32, progress=True)  # (N, n_mem, H)
        test_states = model.compress(test_texts, batch_size=32)
    n_mem, h, r = model.config.n_mem, model.hidden_size, args.parts
    n_parts = n_mem * r

    def split(states: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # (B, n_mem, H) -> (B, n_mem * r, H)
        x = states.unsqueeze(2) + torch.einsum("bmh,jhk->bmjk", states, w)
        return x.reshape(states.shape[0], n_parts, h)

    w = torch.zeros(r, h, h, requires_grad=True)  # full-rank maps, at zero: every part reads the state
    opt = torch.optim.Adam([w], lr=args.lr)
    test_targets = span_targets(model, test_texts, n_parts)
    with torch.no_grad():  # = the checkpoint's own anchoring loss: the same tokens under the same slots
        unsplit = anchoring_loss(model, split(test_states, w), test_targets).item()
    curve = []
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_texts))
        for start in range(0, len(order), args.batch):
            idx = order[start : start + args.batch].tolist()
            loss = anchoring_loss(model, split(train_states[idx], w), span_targets(model, [train_texts[i] for i in idx], n_parts))
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            test = anchoring_loss(model, split(test_states, w), test_targets).item()
        curve.append({"epoch": epoch + 1, "train_last_batch": round(loss.item(), 4), "test": round(test, 4)})
        print(json.dumps(curve[-1]), flush=True)
    result = {
        "checkpoint": args.checkpoint, "parts_per_slot": r, "n_mem": n_mem, "train_docs": len(train_texts),
        "test_docs": len(test_texts), "epochs": args.epochs, "lr": args.lr,
        "unsplit": round(unsplit, 4), "probe": curve[-1]["test"], "floor": round(floor(test_targets, len(test_texts), n_parts), 4),
        "curve": curve, "elapsed_s": round(time.time() - t0, 1),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
