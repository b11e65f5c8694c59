"""How far can the query reasoner alone go on frozen document states? (issue 7, a diagnostic)

Stage 3 trains only the query side: the compressor is frozen so candidate states can be cached.
If even *supervised* training of the query reasoner (gold labels, which CLaRa never uses) cannot
raise dev recall, no label-free signal can either, and the limit lies in what the document
states hold. This script:

1. starts the query reasoner from the compressor, as stage 3 does;
2. trains it on stage 3's training questions and cached candidate states (``--states``, the
   ``doc_states.safetensors`` of a stage-3 run from the same checkpoint) with a multi-positive
   InfoNCE loss on the gold candidates, ``-log sum_gold softmax(scores / T)``;
   (``--hard``: each question's own candidates only, no padding with other questions' documents);
3. measures Recall@5 of its max-sim scores on the HotpotQA dev questions (oracle: each
   question's own 10 paragraphs) before and after.

The labels are used only here, to measure a ceiling; nothing in clara trains on them.

    python benchmarks/query_side_ceiling.py --states runs/e2e16_qlr/doc_states.safetensors [--steps 200] [--lr 1e-4] [--hard]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from clara import ClaraModel
from clara.data.qa import load_qa
from clara.eval.metrics import mean, recall_at_k
from clara.io import atomic_write_json
from clara.score import score_candidates
from clara.train import TrainConfig
from clara.train.e2e import add_candidates, cache_doc_states, cached_candidates
from clara.train.instruct import retrieval_nce
from clara.train.rows import load_exclusions
from clara.train.run import qa_data

ROOT = Path(__file__).resolve().parents[1]
HOTPOT = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_500.jsonl"
E2E = ROOT / "configs" / "default" / "e2e.yaml"


@torch.no_grad()
def dev_recall(model: ClaraModel, dev, dev_states: list[torch.Tensor], k: int = 5) -> float:
    q = model.encode_query([e.question for e in dev])  # (N, n_mem, H)
    values = []
    for i, e in enumerate(dev):
        s = score_candidates(q[i : i + 1], dev_states[i].unsqueeze(0), "maxsim")[0]
        values.append(recall_at_k([e.docs[j].id for j in s.topk(min(k, len(s))).indices.tolist()], e.gold_ids, k))
    return round(100 * mean(values), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="CLaRa checkpoint (default: the shipped one)")
    ap.add_argument("--states", type=Path, required=True, help="a stage-3 run's doc_states.safetensors (same checkpoint); computed and written there when missing")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--temperature", type=float, default=0.02, help="T of the InfoNCE softmax over max-sim scores")
    ap.add_argument("--limit", type=int, default=100, help="dev questions")
    ap.add_argument("--hard", action="store_true",
                    help="train on each question's own candidates only (HotpotQA, 2Wiki: 10 paragraphs), no easy padding")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    torch.manual_seed(0)
    model = ClaraModel.from_pretrained(args.model, device="cpu", retrieval_score="maxsim").eval()
    model.init_query_reasoner_from_compressor()
    model.set_trainable(("query_reasoner",))
    # stage 3's own questions and candidates (configs/default/e2e.yaml, 1,000 questions, 20 candidates)
    cfg = TrainConfig.load(E2E, ["max_rows=1000"])
    questions = qa_data(cfg, load_exclusions(cfg.exclude_ids))
    if args.hard:  # each question's own candidates only: the hard distractors the dev questions have
        train = [e for e in questions if e.gold_ids and len(e.docs) >= 5]
    else:  # padded as stage 3 pads them, so its cached states cover them
        train = [e for e in add_candidates(questions, cfg.n_candidates, cfg.seed) if e.gold_ids]
    # a missing file is computed here (and kept): the compressor is frozen, as in stage 3
    cache = load_file(str(args.states)) if args.states.is_file() else cache_doc_states(model, train, args.states)
    missing = sum(d.id not in cache for e in train for d in e.docs)
    if missing:
        raise SystemExit(f"{args.states} lacks {missing} candidate states: give the doc_states of a stage-3 run of this checkpoint")
    dev_ids = load_exclusions(ROOT / "splits" / "dev.json")
    dev = [e for e in load_qa(HOTPOT) if e.id in dev_ids and e.answers and e.gold_ids][: args.limit]
    start = time.perf_counter()
    with torch.no_grad():
        dev_states = [model.compress([d.full_text() for d in e.docs], batch_size=16) for e in dev]
    before = dev_recall(model, dev, dev_states)
    print(f"dev R@5 before: {before}", flush=True)

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    losses = []
    for step in range(args.steps):
        exs = [train[(step * args.batch + i) % len(train)] for i in range(args.batch)]
        cand = cached_candidates(cache, exs)  # (B, n, n_mem, H)
        gold = torch.tensor([[d.id in e.gold_ids for d in e.docs[: cand.shape[1]]] for e in exs])  # (B, n)
        scores = score_candidates(model.encode_query([e.question for e in exs]), cand, "maxsim")  # (B, n)
        loss = retrieval_nce(scores, gold, args.temperature).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 25 == 0:
            print(f"step {step + 1} loss {sum(losses[-25:]) / 25:.3f}", flush=True)
    after = dev_recall(model, dev, dev_states)
    result = {
        "model": args.model or "default", "questions": len(dev), "train_questions": len(train), "steps": args.steps, "hard": args.hard,
        "batch": args.batch, "lr": args.lr, "temperature": args.temperature,
        "loss_first_25": round(sum(losses[:25]) / 25, 3), "loss_last_25": round(sum(losses[-25:]) / 25, 3),
        "dev_recall@5": {"before": before, "after": after}, "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
