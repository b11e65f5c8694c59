"""Is the answer in the memory? A logit-lens check of the gold passage's memory slots (issue 7).

Under the soft-token readout each memory slot is read as the expected input embedding under its
output-head distribution, so that distribution is what the generator can get out of the slot. For
each dev question this compresses its gold passage and finds the best rank, over the slots, of
the first token of any of its answers ("answer rank"; 0 = some slot's most likely token). As a
control, the same answer's best rank in the slots of another question's gold passage (the next
question's): how often a common token ranks high anyway. When a predictions file of
``clara eval`` is given (``--predictions``, several allowed), it also reports each system's mean
F1 by answer-rank bucket: if the reader fails on questions whose answer its memory holds, what
limits it is reading, not compression.

    python benchmarks/answer_in_memory.py [--model default] [--data NQ] [--limit 100] \\
        [--predictions quality_nq_normal_100/TAG/predictions.jsonl ...] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from clara import ClaraModel
from clara.data.qa import load_qa
from clara.inspect import lens_logits
from clara.io import read_jsonl
from clara.train.rows import load_exclusions

ROOT = Path(__file__).resolve().parents[1]
NQ = ROOT.parent / "shared" / "data" / "nq" / "nq_open_oracle.jsonl.gz"
BUCKETS = [(0, 1), (1, 10), (10, 100), (100, None)]


def first_tokens(tokenizer, answers: list[str]) -> set[int]:
    """First token of every answer, as it starts a text and after a space."""
    out: set[int] = set()
    for answer in answers:
        for variant in (answer, " " + answer):
            ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if ids:
                out.add(ids[0])
    return out


@torch.no_grad()
def best_ranks(model: ClaraModel, passages: list[str], token_sets: list[set[int]]) -> list[int]:
    """For passage i, the best rank over its slots of any token in token_sets[i]."""
    all_logits = lens_logits(model, model.compress(passages))  # (N, n_mem, V)
    out = []
    for logits, tokens in zip(all_logits, token_sets):  # logits: (n_mem, V)
        wanted = logits[:, sorted(tokens)]  # (n_mem, T)
        # rank = how many tokens of the slot's vocabulary score strictly higher
        ranks = (logits.unsqueeze(1) > wanted.unsqueeze(-1)).sum(-1)  # (n_mem, T)
        out.append(int(ranks.min()))
    return out


def bucket_name(lo: int, hi: int | None) -> str:
    return f"[{lo}, {hi})" if hi is not None else f">= {lo}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="CLaRa checkpoint (default: the shipped one)")
    ap.add_argument("--data", type=Path, default=NQ)
    ap.add_argument("--split", type=Path, default=ROOT / "splits" / "dev.json")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--predictions", type=Path, nargs="*", default=[], help="clara eval predictions.jsonl files")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    model = ClaraModel.from_pretrained(args.model) if args.model else ClaraModel.from_pretrained()
    dev = load_exclusions(args.split)  # the split's ids (and titles)
    questions = [q for q in load_qa(args.data) if q.id in dev and q.gold_ids][: args.limit]
    gold = [next(d for d in q.docs if d.id in q.gold_ids).full_text() for q in questions]
    tokens = [first_tokens(model.tokenizer, q.answers) for q in questions]
    own = best_ranks(model, gold, tokens)
    other = best_ranks(model, gold[1:] + gold[:1], tokens)  # the next question's gold passage

    systems: dict[str, dict[str, float]] = {}
    for path in args.predictions:
        systems[path.parent.name] = {r["id"]: r["scores"]["f1"] for _, r in read_jsonl(path)}

    report: dict = {"model": args.model or "default", "data": str(args.data), "questions": len(questions), "buckets": []}
    for lo, hi in BUCKETS:
        inside = [i for i, r in enumerate(own) if r >= lo and (hi is None or r < hi)]
        entry = {
            "answer_rank": bucket_name(lo, hi),
            "own_passage": len(inside),
            "other_passage": sum(r >= lo and (hi is None or r < hi) for r in other),
        }
        for name, f1 in systems.items():
            scored = [f1[questions[i].id] for i in inside if questions[i].id in f1]
            entry[f"f1_{name}"] = round(100 * statistics.mean(scored), 2) if scored else None
        report["buckets"].append(entry)
        print(json.dumps(entry))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
