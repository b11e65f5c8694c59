"""Paired comparison of two `clara eval` runs on the same questions: mean per-question
difference of a score (F1 by default) with a bootstrap 95% interval.

One question is one point of EM at 100 questions, and two systems answering the same questions
are correlated, so their difference is measured question by question (A - B) and resampled
over questions, not read off two independent means.

    python benchmarks/paired_compare.py RUN_A RUN_B [--system-a clara] [--system-b full-text-lora] [--metric f1]
    python benchmarks/paired_compare.py --pairs PAIRS.json --out results.json   # [{"name", "a", "b"}, ...]
    python benchmarks/paired_compare.py RUN_A RUN_B --by type   # also per question type (a "meta" field)

RUN_A / RUN_B: `clara eval -o` folders (their predictions.jsonl) or predictions files.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from clara.io import DataError, atomic_write_json, read_jsonl


def load_scores(run: Path, system: str | None, metric: str, by: str | None = None) -> tuple[dict[str, float], dict[str, str]]:
    """Question id -> score (in percent) of one system in an eval run's predictions, and question
    id -> group: the row's ``meta[by]`` (e.g. the question type; "-" where absent), empty without ``by``."""
    path = run / "predictions.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise SystemExit(f"{run}: no eval run there (expected a `clara eval -o` folder or its predictions.jsonl)")
    scores: dict[str, float] = {}
    groups: dict[str, str] = {}
    for n, row in read_jsonl(path):  # malformed lines raise DataError naming file and line
        if system and row.get("system") != system:
            continue
        if metric not in row.get("scores", {}):
            raise SystemExit(f"{path}:{n}: no score {metric!r} (have {sorted(row.get('scores', {}))})")
        scores[row["id"]] = 100.0 * row["scores"][metric]
        if by is not None:
            groups[row["id"]] = str(row.get("meta", {}).get(by, "-"))
    if not scores:
        raise SystemExit(f"{path}: no predictions" + (f" of system {system!r}" if system else ""))
    return scores, groups


def paired_difference(a: dict[str, float], b: dict[str, float], samples: int = 2000, seed: int = 0,
                      digits: int = 2) -> dict[str, Any]:
    """Mean of a - b over the questions both answered, and a percentile bootstrap 95% interval
    (rounded to ``digits``: 2 for scores in percent, more for losses in nats)."""
    ids = sorted(set(a) & set(b))
    if not ids:
        raise SystemExit("the two runs share no question id")
    diffs = [a[i] - b[i] for i in ids]
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(samples))
    return {
        "questions": len(ids),
        "mean_a": round(sum(a[i] for i in ids) / len(ids), digits),
        "mean_b": round(sum(b[i] for i in ids) / len(ids), digits),
        "mean_diff": round(sum(diffs) / len(diffs), digits),
        "ci95": [round(means[int(0.025 * samples)], digits), round(means[int(0.975 * samples) - 1], digits)],
    }


def report(name: str, metric: str, r: dict[str, Any]) -> None:
    print(f"{name}: {metric} {r['mean_a']} vs {r['mean_b']}, A - B = {r['mean_diff']:+.2f} "
          f"(95% CI {r['ci95'][0]:+.2f} to {r['ci95'][1]:+.2f}; {r['questions']} questions)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, nargs="?", help="eval run (or predictions.jsonl) A")
    ap.add_argument("b", type=Path, nargs="?", help="eval run (or predictions.jsonl) B")
    ap.add_argument("--system-a", default=None, help="system of run A (default: every row)")
    ap.add_argument("--system-b", default=None, help="system of run B (default: every row)")
    ap.add_argument("--pairs", type=Path, default=None, help='JSON list of {"name", "a", "b", "system_a"?, "system_b"?}')
    ap.add_argument("--metric", default="f1", help="a per-question score of predictions.jsonl: f1, em, recall@5, ...")
    ap.add_argument("--samples", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--by", default=None, help='also compare within groups of a "meta" field, e.g. type')
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.pairs:
        pairs = json.loads(args.pairs.read_text())
    elif args.a and args.b:
        pairs = [{"name": f"{args.a} - {args.b}", "a": str(args.a), "b": str(args.b),
                  "system_a": args.system_a, "system_b": args.system_b}]
    else:
        ap.error("give RUN_A RUN_B or --pairs")
    results = []
    for p in pairs:
        try:
            a, groups = load_scores(Path(p["a"]), p.get("system_a"), args.metric, args.by)
            b, _ = load_scores(Path(p["b"]), p.get("system_b"), args.metric)
        except DataError as err:
            raise SystemExit(str(err)) from None
        r = {"name": p["name"], "a": p["a"], "b": p["b"], "metric": args.metric, **paired_difference(a, b, args.samples)}
        results.append(r)
        report(r["name"], args.metric, r)
        if args.by:  # the same comparison inside each of A's groups (B is matched by question id)
            r["by"] = {}
            for group in sorted(set(groups.values())):
                in_group = {i: score for i, score in a.items() if groups[i] == group}
                r["by"][group] = paired_difference(in_group, b, args.samples)
                report(f"  {args.by}={group}", args.metric, r["by"][group])
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
