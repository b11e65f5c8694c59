"""How query and document memory states are compared, measured as Recall@5 (issue 7).

CLaRa scores a candidate by the cosine of the flattened states (the paper: slot i of the query
against slot i of the document). Memory slots need not line up between a question and a
document, so this also measures slot-order-free scores on the same states, with no training:

- ``cosine``: cosine of the flattened (n_mem*H) states (the paper; ``retrieval_score="cosine"``);
- ``pooled``: cosine of the mean state over slots;
- ``maxsim``: late interaction (ColBERT-style): for each query slot the best cosine with any
  document slot, averaged over query slots (``retrieval_score="maxsim"``, clara.score).

Each with the query reasoner encoding the question (CLaRa) and with the compressor encoding it
(the query reasoner's initialisation). HotpotQA dev split, oracle candidates (10 per question,
2 gold: a random ranking has R@5 = 50).

``--teacher`` also ranks each question's candidates by the generator's loss on the gold answer
when it reads that document alone: the label-free signal an Atlas-style "perplexity
distillation" would train the query reasoner towards (it needs the answer, so it is a teacher,
never a retriever). If it ranks worse than the query reasoner already does, distilling it
cannot help.

    python benchmarks/retrieval_scoring.py [--model CKPT] [--limit 100] [--teacher]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from clara import ClaraModel
from clara.data.qa import QAExample, load_hotpotqa
from clara.eval.metrics import mean, recall_at_k
from clara.eval.retrievers import top_k
from clara.score import score

ROOT = Path(__file__).resolve().parents[1]
HOTPOT = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_500.jsonl"

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # query (M, H), docs (n, M, H) -> (n,)


def cosine(q: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    return score(q.unsqueeze(0), docs, "cosine")[0]  # the paper's, ClaraConfig(retrieval_score="cosine")


def pooled(q: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    return F.normalize(docs.mean(1), dim=-1) @ F.normalize(q.mean(0), dim=0)


def maxsim(q: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
    return score(q.unsqueeze(0), docs, "maxsim")[0]  # ClaraConfig(retrieval_score="maxsim")


def recall_at(examples: list[QAExample], queries: Sequence[torch.Tensor], docs: list[torch.Tensor], score: Score, k: int) -> float:
    """Mean Recall@k over questions, in percent (as `clara eval` computes it)."""
    values = [
        recall_at_k([ex.docs[j].id for j in top_k(score(q, d), k)], ex.gold_ids, k)
        for ex, q, d in zip(examples, queries, docs)
    ]
    return round(100 * mean(values), 1)


def generator_losses(model: ClaraModel, example: QAExample, docs: torch.Tensor) -> torch.Tensor:
    """The generator's loss on the first gold answer reading each candidate alone: (n,)."""
    n = docs.shape[0]
    prompts = model.answer_prompts([example.question] * n, [1] * n)
    return model.generator_loss(prompts, [example.answers[0]] * n, list(docs.unsqueeze(1)), per_example=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="CLaRa checkpoint (default: the shipped one)")
    ap.add_argument("--limit", type=int, default=100, help="dev questions")
    ap.add_argument("-k", type=int, default=5)
    ap.add_argument("--teacher", action="store_true", help="also rank by the generator's answer loss per document")
    ap.add_argument("--splits", type=Path, default=ROOT / "splits" / "dev.json")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "retrieval_scoring.json")
    args = ap.parse_args()

    model = ClaraModel.from_pretrained(args.model, device="cpu").eval()
    keep = {i for entry in json.loads(args.splits.read_text()).values() for i in entry.get("ids", [])}
    examples = [e for e in load_hotpotqa(HOTPOT) if e.id in keep][: args.limit]
    start = time.perf_counter()
    with torch.no_grad():
        docs = [model.compress([d.full_text() for d in e.docs], batch_size=16) for e in examples]  # (n_i, M, H) each
        questions = [e.question for e in examples]
        encoders = {"query_reasoner": model.encode_query(questions), "compressor": model.compress(questions)}
    scores: dict[str, Score] = {"cosine": cosine, "pooled": pooled, "maxsim": maxsim}
    table = {
        enc: {name: recall_at(examples, q, docs, fn, args.k) for name, fn in scores.items()}
        for enc, q in encoders.items()
    }
    if args.teacher:
        with torch.no_grad():
            losses = [generator_losses(model, e, d) for e, d in zip(examples, docs)]
        # the "query" is the per-document loss itself: a lower loss ranks higher
        table["generator_answer_loss"] = {"teacher": recall_at(examples, losses, docs, lambda loss, _: -loss, args.k)}
    result = {
        "model": args.model or "default", "questions": len(examples), "k": args.k,
        f"recall@{args.k}": table, "seconds": round(time.perf_counter() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
