"""Collect the training files of the shipped default into train_data/ (from ../shared/data).

The SCP file keeps its name: its rows' ids ("clara_pretrain_qa_1k:LINE") are what the dev split
(splits/dev.json) lists, so a renamed copy would put the dev documents back into training.
recon.jsonl holds passages for reconstruction rows: the 2Wiki corpus plus the candidate
paragraphs of the QA training questions, minus every dev-split title.
2wiki_corpus/ holds the 2Wiki questions over their passage corpus (questions_1000.json,
corpus_6119.json) as stage-2 training data: minus the questions that are also in
dev_500.jsonl (the dev split's or already trained on), minus those with a dev-split title
among their evidence, and the corpus minus every dev-split title, so neither gold passages
nor BM25 negatives (TrainConfig.corpus_negatives) are dev documents.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from clara.data.corpus import read_corpus
from clara.data.qa import load_qa, title_key
from clara.train.rows import load_exclusions

COPY = ["scp/clara_pretrain_qa_1k.jsonl", "hotpotqa/hotpot_dev_distractor_500.jsonl",
        "2wikimultihopqa/dev_500.jsonl", "nq/nq_open_oracle.jsonl.gz"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, default=Path("train_data"))
    ap.add_argument("--splits", type=Path, default=Path("splits/dev.json"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for rel in COPY:
        shutil.copy(args.data / rel, args.out / Path(rel).name)
    exclude = load_exclusions(args.splits)
    seen, rows = set(), []
    for doc in read_corpus(args.data / "2wikimultihopqa" / "corpus_6119.json"):
        if doc.title not in exclude and doc.full_text() not in seen:
            seen.add(doc.full_text())
            rows.append({"id": f"2wiki:{doc.id}", "title": doc.title, "text": doc.text})
    for rel in COPY[1:]:
        for ex in load_qa(args.data / rel):
            if ex.id in exclude:
                continue
            for d in ex.docs:
                if d.title not in exclude and d.full_text() not in seen:
                    seen.add(d.full_text())
                    rows.append({"id": d.id, "title": d.title, "text": d.text})
    with open(args.out / "recon.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(rows)} reconstruction passages; files in {args.out}")
    write_2wiki_corpus(args.data / "2wikimultihopqa", args.out / "2wiki_corpus", exclude)


def write_2wiki_corpus(src: Path, out: Path, exclude: set[str]) -> None:
    """The 2Wiki questions and corpus, filtered against the dev split (module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    in_dev_file = {ex.id for ex in load_qa(src / "dev_500.jsonl")}
    excluded_keys = {title_key(t) for t in exclude}
    corpus = [p for p in json.loads((src / "corpus_6119.json").read_text()) if p["title"] not in exclude]
    questions = [
        q for q in json.loads((src / "questions_1000.json").read_text())
        if q["id"] not in in_dev_file and q["id"] not in exclude
        and not any(title_key(t[0]) in excluded_keys for t in q["evidence"])
    ]
    for name, rows in (("corpus_6119.json", corpus), ("questions_1000.json", questions)):
        (out / name).write_text(json.dumps(rows, ensure_ascii=False))
    print(f"{len(questions)} 2Wiki corpus questions over {len(corpus)} passages in {out}")


if __name__ == "__main__":
    main()
