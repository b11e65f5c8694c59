"""Print the stage-1 run whose last information-flow measurement is best (lowest mean ratio)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def score(run: Path) -> float:
    evals = [json.loads(l)["eval"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in l]
    if not evals or not (run / "final" / "config.json").is_file():
        return float("inf")
    last = evals[-1]
    return sum(v["ratio"] for v in last.values()) / len(last)


if __name__ == "__main__":
    runs = sorted((score(Path(r)), r) for r in sys.argv[1:])
    for s, r in runs:
        print(f"{r}\t{s:.4f}", file=sys.stderr)
    print(runs[0][1])
