"""Logit lens over query states on HotpotQA dev: do they surface supporting-document words?

The paper reports that, after end-to-end training, the query reasoner's memory states decode
(under the output head) to words that are absent from the question but present in its
supporting documents ("NFL", "Oklahoma"). This script measures how often that happens:

* for each question, the top-k tokens of every query memory state are collected;
* a *novel gold word* is an alphabetic lens token (3+ letters, not a stop word) that is not
  a word of the question but is a word of one of its gold supporting paragraphs;
* as a chance control, the same count against two non-gold (distractor) paragraphs of the
  same question, with words of the gold paragraphs excluded.

Usage::

    python benchmarks/logit_lens_hotpot.py --data ../shared/data/hotpotqa/hotpot_dev_distractor_500.jsonl \\
        [--checkpoint DIR | --fresh] [--limit 20] [--top-k 10] [--out benchmarks/results/logit_lens_hotpot]

``--fresh`` uses untrained adapters on the default backbone (the query reasoner is then the
plain backbone), a baseline for any trained checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import re
import time
from pathlib import Path

import torch

from clara import ClaraConfig, ClaraModel
from clara.data.qa import QAExample, load_qa
from clara.inspect import inspect_texts, surfaced_words

log = logging.getLogger("logit_lens_hotpot")

STOP = set(
    "the and for are was were with that this from his her its their they them has have had not but all any can "
    "who what which when where why how whom whose did does doing done than then there these those into onto "
    "also about after before over under more most some such only other same both each few own very just one two "
    "been being you your our out off per via yes".split()
)


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3}


def novel(lens_words: set[str], question: str, paragraphs: list[str], exclude: frozenset[str] | set[str] = frozenset()) -> set[str]:
    """Lens words absent from the question, present in the paragraphs (stop words and ``exclude`` dropped)."""
    target = set().union(*(words(p) for p in paragraphs)) if paragraphs else set()
    return {w for w in lens_words - STOP - words(question) - exclude if w in target}


def analyse(model: ClaraModel, examples: list[QAExample], top_k: int, seed: int) -> dict:
    rng = random.Random(seed)
    rows, gold_hits, control_hits, lens_sizes = [], 0, 0, []
    for ex in examples:
        slots = inspect_texts(model, [ex.question], "query", top_k)[0]
        lens = surfaced_words(slots) - STOP
        gold = [d.full_text() for d in ex.docs if d.id in ex.gold_ids]
        others = [d.full_text() for d in ex.docs if d.id not in ex.gold_ids]
        control = rng.sample(others, min(2, len(others)))
        gold_words = set().union(*(words(p) for p in gold)) if gold else set()
        hit = novel(lens, ex.question, gold)
        ctrl = novel(lens, ex.question, control, exclude=gold_words)
        gold_hits += bool(hit)
        control_hits += bool(ctrl)
        lens_sizes.append(len(lens))
        rows.append({
            "id": ex.id,
            "question": ex.question,
            "answer": ex.answers[0] if ex.answers else "",
            "novel_gold_words": sorted(hit),
            "novel_control_words": sorted(ctrl),
            "top1_per_slot": [s.tokens[0] for s in slots],
        })
    n = len(examples)
    return {
        "questions": n,
        "with_novel_gold_word": gold_hits,
        "rate_gold": round(gold_hits / n, 4) if n else 0.0,
        "with_novel_control_word": control_hits,
        "rate_control": round(control_hits / n, 4) if n else 0.0,
        "mean_distinct_lens_words": round(sum(lens_sizes) / n, 2) if n else 0.0,
        "rows": rows,
    }


def markdown(result: dict, meta: dict, n_examples: int = 8) -> str:
    lines = [
        "# Logit lens over query states, HotpotQA dev (distractor)",
        "",
        f"- checkpoint: {meta['checkpoint']}; backbone: {meta['backbone']}; {meta['n_mem']} query memory states, "
        f"top-{meta['top_k']} tokens each; {meta['seconds']:.0f} s on {meta['device']}",
        f"- questions: {result['questions']}; mean distinct lens words per question: {result['mean_distinct_lens_words']}",
        "",
        "| paragraphs | questions with a lens word absent from the question but in the paragraphs | rate |",
        "| --- | --- | --- |",
        f"| gold supporting (2) | {result['with_novel_gold_word']} | {result['rate_gold']:.1%} |",
        f"| 2 random distractors (chance control, gold words excluded) | {result['with_novel_control_word']} "
        f"| {result['rate_control']:.1%} |",
        "",
        "## Examples",
        "",
    ]
    shown = [r for r in result["rows"] if r["novel_gold_words"]][:n_examples] or result["rows"][:n_examples]
    for r in shown:
        lines.append(f"- {r['question']} (answer: {r['answer']}): novel gold words {r['novel_gold_words'] or 'none'}; "
                     f"top-1 per slot {r['top1_per_slot']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="HotpotQA dev file (JSON or JSONL, original schema)")
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (ours or Apple's); default: shipped")
    parser.add_argument("--backbone", default=None, help="replace the checkpoint's backbone (local folder)")
    parser.add_argument("--fresh", action="store_true", help="untrained adapters on the default backbone")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="benchmarks/results/logit_lens_hotpot", help="output path without suffix")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    torch.manual_seed(args.seed)
    if args.fresh:
        model = ClaraModel.from_backbone(ClaraConfig(device=args.device, **({"backbone": args.backbone} if args.backbone else {})))
        name = "fresh (untrained adapters)"
    else:
        model = ClaraModel.from_pretrained(args.checkpoint, backbone=args.backbone, device=args.device)
        name = args.checkpoint or "shipped default"
    model.eval()
    examples = load_qa(args.data, "hotpotqa", limit=args.limit)
    start = time.time()
    result = analyse(model, examples, args.top_k, args.seed)
    meta = {"checkpoint": name, "backbone": model.config.backbone, "n_mem": model.config.n_mem, "top_k": args.top_k,
            "data": Path(args.data).name, "limit": args.limit, "seed": args.seed, "device": str(model.device),
            "seconds": time.time() - start}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, **result}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result, meta))
    log.info("gold %d/%d vs control %d/%d; wrote %s.{json,md}", result["with_novel_gold_word"], result["questions"],
             result["with_novel_control_word"], result["questions"], out)


if __name__ == "__main__":
    main()
