"""Can the compressor learn to retrieve from gold labels at all? A learning curve (issue 7, a diagnostic).

``query_side_ceiling.py`` trains the question side alone on frozen document states. Here both
sides move: the compressor encodes the question *and* the documents (stage 3's query reasoner
starts as a copy of it), and it trains on retrieval alone, the multi-positive InfoNCE of
stage 2's ``retrieval_weight`` (``clara.train.instruct.retrieval_nce``) over the documents a
stage-2 question reads (its gold paragraphs and up to ``k - gold`` of its own distractors,
``instruct.read_docs``). Training questions: the HotpotQA and 2Wiki training portions of
stage 2 (dev split excluded), the only ones with hard negatives. Every ``--eval-every`` steps
it measures Recall@5 on the HotpotQA dev questions (oracle: each question's own 10 paragraphs,
both sides re-encoded by the current compressor), so the curve says whether more labelled
data would move retrieval. The generator is not trained, so the weights are thrown away.

    python benchmarks/compressor_retrieval_curve.py [--model CKPT] [--steps 300] [--lr 2e-4] [--eval-every 100]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from clara import ClaraModel
from clara.data.qa import load_qa
from clara.eval.metrics import mean, recall_at_k
from clara.io import atomic_write_json
from clara.score import score_candidates
from clara.train import TrainConfig
from clara.train.instruct import read_docs, retrieval_loss
from clara.train.rows import load_exclusions
from clara.train.run import qa_data

ROOT = Path(__file__).resolve().parents[1]
HOTPOT = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_500.jsonl"
INSTRUCT = ROOT / "configs" / "default" / "instruct.yaml"


@torch.no_grad()
def dev_recall(model: ClaraModel, dev, k: int = 5) -> float:
    """R@5 with the compressor encoding the question and each question's own paragraphs."""
    was_training = model.training
    model.eval()
    q = model.compress([e.question for e in dev])  # (N, n_mem, H)
    values = []
    for i, e in enumerate(dev):
        states = model.compress([d.full_text() for d in e.docs], batch_size=16)  # (10, n_mem, H)
        s = score_candidates(q[i : i + 1], states.unsqueeze(0), model.config.retrieval_score)[0]
        values.append(recall_at_k([e.docs[j].id for j in s.topk(min(k, len(s))).indices.tolist()], e.gold_ids, k))
    model.train(was_training)
    return round(100 * mean(values), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="CLaRa checkpoint (default: the shipped one)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("-k", type=int, default=5, help="documents per training question (gold + own distractors)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--temperature", type=float, default=0.02, help="T of the InfoNCE softmax")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--limit", type=int, default=100, help="dev questions")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = ClaraModel.from_pretrained(args.model, device="cpu", retrieval_score="maxsim")
    model.set_trainable(("compressor",))
    cfg = TrainConfig.load(INSTRUCT)  # stage 2's data and dev exclusion
    cfg.data = [p for p in cfg.data if "nq" not in Path(p).name]  # NQ reads one passage: no negative
    train = [e for e in qa_data(cfg, load_exclusions(cfg.exclude_ids)) if e.gold_ids and len(e.docs) > len(e.gold_ids)]
    dev_ids = load_exclusions(ROOT / "splits" / "dev.json")
    dev = [e for e in load_qa(HOTPOT) if e.id in dev_ids and e.answers and e.gold_ids][: args.limit]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    start = time.perf_counter()
    curve = [{"step": 0, "questions_seen": 0, "dev_recall@5": dev_recall(model, dev)}]
    print(json.dumps(curve[-1]), flush=True)
    losses, hits = [], []
    model.train()
    for step in range(1, args.steps + 1):
        idx = [((step - 1) * args.batch + i) for i in range(args.batch)]
        exs = [train[i % len(train)] for i in idx]
        epoch = idx[0] // len(train)
        docs = [read_docs(e, args.k, 0, epoch, i % len(train)) for e, i in zip(exs, idx)]
        states = model.compress([d.full_text() for ds in docs for d in ds])  # (sum k, n_mem, H), with grad
        per_q = list(states.split([len(ds) for ds in docs]))
        loss, top1 = retrieval_loss(model, exs, docs, per_q, args.temperature)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        losses.append(loss.item())
        hits.append(top1)
        if step % args.eval_every == 0 or step == args.steps:
            window = slice(-args.eval_every, None)
            curve.append({
                "step": step, "questions_seen": step * args.batch, "train_loss": round(mean(losses[window]), 3),
                "train_top1_gold": round(mean(hits[window]), 3), "dev_recall@5": dev_recall(model, dev),
                "seconds": round(time.perf_counter() - start, 1),
            })
            print(json.dumps(curve[-1]), flush=True)
    result = {
        "model": args.model or "default", "dev_questions": len(dev), "train_questions": len(train), "steps": args.steps,
        "batch": args.batch, "k": args.k, "lr": args.lr, "temperature": args.temperature, "curve": curve,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
