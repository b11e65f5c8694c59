"""Every committed run on the four 100-question dev benchmarks, side by side, as a Markdown table.

Reads the ``metrics.json`` that ``clara eval -o`` wrote under
``benchmarks/results/quality_{hotpot_oracle,hotpot_normal,2wiki_oracle,nq_normal}_100/TAG/``
(``benchmarks/eval_dev.sh`` fills all four for one checkpoint) and prints one row per
(tag, system) with F1 and Recall@5 on each split ("-" where that split was not run).

    python benchmarks/dev_table.py                           # every tag, every system
    python benchmarks/dev_table.py --system clara --tag clara_retrieval_weight_nq --tag clara_ratio4_retrieval
    python benchmarks/dev_table.py --metric em --sort hotpot_oracle

The means carry one question's weight each (1 point of EM); compare two rows with
``benchmarks/paired_compare.py``, not by eye.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPLITS = ("hotpot_oracle", "hotpot_normal", "2wiki_oracle", "nq_normal")
RESULTS = Path(__file__).resolve().parent / "results"


def collect(results: Path, metric: str, n: int = 100) -> dict[tuple[str, str], dict[str, tuple[float, float | None]]]:
    """(tag, system) -> split -> (metric, Recall@5) for every eval run of ``n`` questions found."""
    table: dict[tuple[str, str], dict[str, tuple[float, float | None]]] = {}
    for split in SPLITS:
        for path in sorted((results / f"quality_{split}_{n}").glob("*/metrics.json")):
            try:
                systems = json.loads(path.read_text())["systems"]
            except (json.JSONDecodeError, KeyError) as err:
                raise SystemExit(f"{path}: not a `clara eval` metrics file ({err})") from err
            for system, m in systems.items():
                if m.get("n") != n or metric not in m:  # retrieval-only runs have no answer scores
                    continue
                table.setdefault((path.parent.name, system), {})[split] = (m[metric], m.get("recall@5"))
    return table


def markdown(table: dict[tuple[str, str], dict[str, tuple[float, float | None]]], metric: str) -> str:
    head = "| run (tag) | system | " + " | ".join(f"{s}: {metric.upper()} / R@5" for s in SPLITS) + " |"
    lines = [head, "|" + " --- |" * (2 + len(SPLITS))]
    for (tag, system), cells in table.items():
        shown = []
        for split in SPLITS:
            if split not in cells:
                shown.append("-")
                continue
            value, recall = cells[split]
            shown.append(f"{value:.1f} / {recall:g}" if recall is not None else f"{value:.1f} / -")
        lines.append(f"| `{tag}` | {system} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=RESULTS, help="folder holding the quality_*_100/ folders")
    ap.add_argument("--metric", default="f1", choices=["f1", "em", "cover_em", "acc"], help="answer score shown next to R@5")
    ap.add_argument("--system", action="append", default=[], help="only these systems (repeatable), e.g. clara, full-text-lora")
    ap.add_argument("--tag", action="append", default=[], help="only these tags (repeatable), in this order")
    ap.add_argument("--sort", choices=SPLITS, help="order rows by this split's score, best first (default: by tag)")
    args = ap.parse_args()

    table = collect(args.results, args.metric)
    if args.system:
        table = {k: v for k, v in table.items() if k[1] in args.system}
    if args.tag:
        missing = [t for t in args.tag if not any(k[0] == t for k in table)]
        if missing:
            raise SystemExit(f"no dev results for tag(s) {missing} under {args.results}")
        table = {k: table[k] for t in args.tag for k in sorted(table) if k[0] == t}
    elif args.sort:
        table = dict(sorted(table.items(), key=lambda kv: -kv[1].get(args.sort, (float("-inf"), None))[0]))
    else:
        table = dict(sorted(table.items()))
    if not table:
        raise SystemExit(f"no dev results under {args.results}")
    print(markdown(table, args.metric))


if __name__ == "__main__":
    main()
