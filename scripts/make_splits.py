"""Carve the fixed dev splits out of every dataset in ../shared/data (never trained on).

Writes splits/dev.json: {dataset: {"file": ..., "ids": [...], "titles": [...]}}. ``titles``
are the dev questions' gold document titles, so reconstruction corpora can drop them too.
Run once; the output is committed and read by training (``exclude_ids``) and benchmarks.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from clara.data.qa import load_qa
from clara.io import read_jsonl

SIZES = {"hotpotqa/hotpot_dev_distractor_500.jsonl": 100, "2wikimultihopqa/dev_500.jsonl": 100,
         "nq/nq_open_oracle.jsonl.gz": 200}
SCP = "scp/clara_pretrain_qa_1k.jsonl"
SCP_DEV = 50


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("splits/dev.json"))
    args = ap.parse_args()
    rng = random.Random(2026)
    split = {}
    for rel, n in SIZES.items():
        examples = load_qa(args.data / rel)
        dev = sorted(rng.sample(range(len(examples)), n))
        titles = sorted({d.title for i in dev for d in examples[i].docs if d.id in examples[i].gold_ids and d.title})
        split[rel.split("/")[0]] = {"file": rel, "ids": [examples[i].id for i in dev], "titles": titles}
    n_scp = sum(1 for _ in read_jsonl(args.data / SCP))
    dev_lines = sorted(rng.sample(range(1, n_scp + 1), SCP_DEV))
    split["scp"] = {"file": SCP, "ids": [f"{Path(SCP).stem}:{i}" for i in dev_lines], "titles": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(split, indent=1) + "\n")
    print({k: len(v["ids"]) for k, v in split.items()})


if __name__ == "__main__":
    main()
