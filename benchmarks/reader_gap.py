"""How far is the compressed reader from the full-text reader, in nats, on the dev questions?

F1 on 100 questions moves by several points between two runs of the same recipe; the loss of
the gold answer moves far less. For each checkpoint this reads every dev question's gold
documents plus negatives (``clara.train.instruct.read_docs``: k in all, shuffled, as stage 2
reads its training questions), compressed, and reports per answer token (mean over questions):

- ``ce``: the checkpoint's cross-entropy of the first gold answer;
- ``teacher_ce``: the full-text reader's (``--teacher``, a ``clara train text`` checkpoint) on
  the same documents as text, cut at the teacher's own ``doc_max_len``, measured once;
- ``kl``: KL(full-text reader || checkpoint) per answer token
  (``clara.train.reader_distill.token_kl`` at T = 1), what ``reader_teacher`` distils; here the
  teacher reads the text cut at the checkpoint's ``doc_max_len``, as in training, so it reads
  again for every checkpoint (the two cuts are equal, 128, for every committed result);
- ``ce_zeroed``: the checkpoint's CE with every memory state zeroed (``benchmarks/info_flow.py``'s
  baseline) and ``ce_closed_book`` with no documents in the prompt at all (the closed-book prompt
  of ``tokens.text_prompt``); ``teacher_ce_closed_book`` is the full-text reader's without them.
  Closed book minus reading is what the documents are worth to each reader, in nats per token.

Without ``--teacher`` only ``ce``, ``ce_zeroed`` and ``ce_closed_book`` are measured (the
documents' worth needs no teacher).

Every checkpoint's per-question ``ce`` and ``worth`` (closed book minus reading) are kept under
``per_question`` (by question id), and every checkpoint after the first is compared with the
first question by question (``paired``: mean difference, this one minus the first, with a
bootstrap 95% interval, ``benchmarks/paired_compare.py``'s). The answer loss separates two readers
on 100 questions far better than F1 does, where one question is one point.

    python benchmarks/reader_gap.py CKPT... [--teacher runs/text240/final] [--data FILE] [--limit 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from clara import ClaraModel, tokens
from clara.data.qa import load_qa
from clara.eval.metrics import mean
from clara.io import atomic_write_json
from clara.model import row_means
from clara.train.instruct import read_docs
from clara.train.reader_distill import ReaderTeacher, answer_losses
from clara.train.rows import load_exclusions
from paired_compare import paired_difference  # the sibling script (benchmarks/ is on sys.path when run)

ROOT = Path(__file__).resolve().parents[1]
HOTPOT = ROOT.parent / "shared" / "data" / "hotpotqa" / "hotpot_dev_distractor_500.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", help="CLaRa checkpoint folders ('default' = the shipped one)")
    ap.add_argument("--teacher", default=None, help="full-text reader checkpoint (clara train text); without it no teacher_ce or kl")
    ap.add_argument("--data", type=Path, default=HOTPOT, help="QA dataset whose questions carry their documents")
    ap.add_argument("--splits", type=Path, default=ROOT / "splits" / "dev.json")
    ap.add_argument("--limit", type=int, default=100, help="dev questions")
    ap.add_argument("-k", type=int, default=5, help="documents read per question (gold first, then negatives)")
    ap.add_argument("--max-target-len", type=int, default=32, help="answer tokens kept (stage 2's max_target_len)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    dev = load_exclusions(args.splits)
    examples = [e for e in load_qa(args.data) if e.id in dev and e.answers and e.docs][: args.limit]
    docs = [read_docs(e, args.k, 0, 0, i) for i, e in enumerate(examples)]  # seed 0, epoch 0, as stage 2
    teacher = ReaderTeacher.load(args.teacher) if args.teacher else None
    texts = [[d.full_text() for d in dd] for dd in docs]
    questions, answers = [e.question for e in examples], [e.answers[0] for e in examples]
    result: dict = {"data": args.data.name, "questions": len(examples), "k": args.k, "teacher": args.teacher}
    if teacher:
        teacher_ce: list[float] = []
        teacher_closed: list[float] = []
        with torch.no_grad():
            for b in range(0, len(examples), args.batch):
                sl = slice(b, b + args.batch)
                for doc_texts, out in ((texts[sl], teacher_ce), ([[] for _ in questions[sl]], teacher_closed)):
                    logits, labels, rows = teacher.logits(questions[sl], doc_texts, answers[sl], args.max_target_len)  # its own cut
                    out += row_means(F.cross_entropy(logits, labels, reduction="none"), rows, len(answers[sl])).tolist()
        result |= {"teacher_ce": round(mean(teacher_ce), 4), "teacher_ce_closed_book": round(mean(teacher_closed), 4)}
    result["models"] = {}
    per_question: dict[str, dict[str, dict[str, float]]] = {}  # checkpoint -> ce / worth -> question id -> nats
    for ckpt in args.checkpoints:
        start = time.perf_counter()
        model = ClaraModel.from_pretrained(None if ckpt == "default" else ckpt, device="cpu").eval()
        table: dict[str, list[float]] = {"ce": [], "kl": [], "ce_zeroed": [], "ce_closed_book": []}
        with torch.no_grad():
            for b in range(0, len(examples), args.batch):
                sl = slice(b, b + args.batch)
                states = [model.compress(t) for t in texts[sl]]  # (k, n_mem, H) each
                prompts = model.answer_prompts(questions[sl], [len(t) for t in texts[sl]])
                ce, kl = answer_losses(model, prompts, answers[sl], states, args.max_target_len, teacher, questions[sl], texts[sl])
                table["ce"] += ce.tolist()
                if kl is not None:  # measured with a teacher only
                    table["kl"] += kl.tolist()
                zeroed, _ = answer_losses(model, prompts, answers[sl], [torch.zeros_like(s) for s in states], args.max_target_len)
                table["ce_zeroed"] += zeroed.tolist()
                no_docs = [tokens.text_prompt(model.tokenizer, q, []) for q in questions[sl]]  # the teacher's closed-book prompt
                none = [s[:0] for s in states]  # (0, n_mem, H) each
                closed, _ = answer_losses(model, no_docs, answers[sl], none, args.max_target_len)
                table["ce_closed_book"] += closed.tolist()
        result["models"][ckpt] = {k: round(mean(v), 4) for k, v in table.items() if v} | {"seconds": round(time.perf_counter() - start, 1)}
        ids = [e.id for e in examples]
        worth = [c - r for c, r in zip(table["ce_closed_book"], table["ce"])]
        per_question[ckpt] = {"ce": dict(zip(ids, table["ce"])), "worth": dict(zip(ids, worth))}
        print(ckpt, json.dumps(result["models"][ckpt]), flush=True)
    first, *others = args.checkpoints
    for ckpt in others:  # question by question: this checkpoint minus the first
        result["models"][ckpt]["paired"] = {
            key: paired_difference(per_question[ckpt][key], per_question[first][key], digits=4) for key in ("ce", "worth")
        }
    print(json.dumps(result, indent=2))
    result["per_question"] = {ckpt: {k: {i: round(v, 4) for i, v in d.items()} for k, d in pq.items()} for ckpt, pq in per_question.items()}
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
