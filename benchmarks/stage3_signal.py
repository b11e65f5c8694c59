"""Does stage 3's gradient point at the gold documents? (issue 7: why the query reasoner does not learn)

Stage 3 trains the query reasoner with the answer's loss only, through differentiable top-k
(``clara.train.e2e.answer_loss_through_topk``). One gradient-descent step moves each candidate's
score by ``-dL/dscore``. If that signal is informative, the gold documents' scores rise more
than the distractors'. For each dev question (its own candidates: the oracle setting) this
script measures, as the probability that a random gold candidate beats a random distractor
(AUC; 0.5 = no information, 1 = always right):

- ``gradient``: by ``-dL/dscore``, the direction stage 3 pushes the scores;
- ``retriever``: by the current scores themselves (what stage 3 starts from);
- ``teacher`` (``--teacher``): by the generator's answer loss reading that candidate alone, the
  zeroth-order version of the same signal (``benchmarks/retrieval_scoring.py --teacher``);
- ``teacher_question`` / ``teacher_question_answer`` (``--teacher question question_answer``): by
  the loss of writing the question (and its answer) from that candidate alone, with stage 1's
  question-writing prompt (``clara.train.e2e.candidate_losses``); ``teacher_question_text``: by the
  plain backbone writing the question after the candidate's text (UPR).

If ``gradient`` is near 0.5, stage 3 has nothing to learn from, whatever its learning rate.

    python benchmarks/stage3_signal.py [--model CKPT] [--limit 100] [--teacher] [--out FILE]
    python benchmarks/stage3_signal.py --model STAGE2_CKPT --from-compressor ...   # where stage 3 would start
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from clara import ClaraModel
from clara.data.qa import load_qa
from clara.eval.metrics import mean
from clara.io import atomic_write_json
from clara.score import SCORES
from clara.train.e2e import TEACHERS, answer_loss_through_topk, candidate_losses
from clara.train.rows import load_exclusions

ROOT = Path(__file__).resolve().parents[1]
HOTPOT = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_500.jsonl"


def auc(values: torch.Tensor, gold: torch.Tensor) -> float:
    """P(a gold item's value > a non-gold item's), ties counting half: values (n,), gold (n,) bool."""
    pos, neg = values[gold], values[~gold]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).float() + 0.5 * (diff == 0).float()).mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="CLaRa checkpoint (default: the shipped one)")
    ap.add_argument("--data", type=Path, default=HOTPOT, help="QA dataset whose questions carry their candidates")
    ap.add_argument("--splits", type=Path, default=ROOT / "splits" / "dev.json")
    ap.add_argument("--limit", type=int, default=100, help="dev questions")
    ap.add_argument("-k", type=int, default=5, help="documents the generator reads (stage 3's k_docs)")
    ap.add_argument("--tau", type=float, default=1.0, help="top-k temperature (stage 3's tau)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--teacher", nargs="*", choices=TEACHERS, default=None,
                    help="also rank by the generator's loss reading each candidate alone (clara.train.e2e."
                         "candidate_losses): on the answer (a bare --teacher), the question, both, or the question after the text (question_text)")
    ap.add_argument("--from-compressor", action="store_true",
                    help="start the query reasoner from the compressor, as stage 3 does (for a stage-2 checkpoint)")
    ap.add_argument("--retrieval-score", choices=SCORES, default=None,
                    help="score as stage 3 would (its recipe sets maxsim); default: the checkpoint's")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    overrides = {"retrieval_score": args.retrieval_score} if args.retrieval_score else {}
    if args.teacher == []:
        args.teacher = ["answer"]
    model = ClaraModel.from_pretrained(args.model, device="cpu", **overrides).eval()  # eval: no dropout, as a measurement
    if args.from_compressor:
        model.init_query_reasoner_from_compressor()
    model.set_trainable(("query_reasoner",))  # the scores need a graph; nothing is updated
    dev = load_exclusions(args.splits)
    examples = [e for e in load_qa(args.data) if e.id in dev and e.answers and e.gold_ids][: args.limit]
    start = time.perf_counter()
    teachers = {kind: "teacher" if kind == "answer" else f"teacher_{kind}" for kind in args.teacher or []}
    table: dict[str, list[float]] = {"gradient": [], "retriever": [], **{name: [] for name in teachers.values()}}
    for b in range(0, len(examples), args.batch):
        exs = examples[b : b + args.batch]
        n = min(len(e.docs) for e in exs)
        with torch.no_grad():
            cand = torch.stack([model.compress([d.full_text() for d in e.docs[:n]]) for e in exs])  # (B, n, n_mem, H)
        per_q, scores, _, _ = answer_loss_through_topk(model, exs, cand, min(args.k, n), args.tau)
        scores.retain_grad()
        per_q.sum().backward()  # a sum: each question's scores get their own question's gradient
        model.zero_grad(set_to_none=True)
        for i, e in enumerate(exs):
            gold = torch.tensor([d.id in e.gold_ids for d in e.docs[:n]])
            if gold.all() or not gold.any():
                continue
            table["gradient"].append(auc(-scores.grad[i], gold))
            table["retriever"].append(auc(scores[i].detach(), gold))
            for kind, name in teachers.items():
                with torch.no_grad():
                    table[name].append(auc(-candidate_losses(model, e, cand[i], kind, [d.full_text() for d in e.docs[:n]]), gold))
        print(f"{b + len(exs)}/{len(examples)} " + " ".join(f"{k} {mean(v):.3f}" for k, v in table.items() if v), flush=True)
    result = {
        "model": args.model or "default", "query_reasoner": "from compressor" if args.from_compressor else "checkpoint's",
        "data": args.data.name, "questions": len(table["gradient"]),
        "retrieval_score": model.config.retrieval_score, "k": args.k, "tau": args.tau,
        "auc": {k: round(mean(v), 3) for k, v in table.items() if v},
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
