"""scripts/build_train_data.py: the training files it writes hold nothing of the dev split."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clara.data.qa import load_qa, title_key
from clara.train.rows import load_exclusions

from .conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]


def test_built_training_data_leaves_out_the_dev_split(tmp_path: Path):
    if not (SHARED / "2wikimultihopqa" / "questions_1000.json").exists():
        pytest.skip(f"{SHARED} not available")
    out = tmp_path / "train_data"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_train_data.py"), "--data", str(SHARED), "--out", str(out),
                    "--splits", str(ROOT / "splits" / "dev.json")], check=True, capture_output=True)
    dev = load_exclusions(ROOT / "splits" / "dev.json")
    dev_keys = {title_key(t) for t in dev}
    # the SCP file keeps its name: the split's SCP ids are "clara_pretrain_qa_1k:LINE"
    assert (out / "clara_pretrain_qa_1k.jsonl").exists()
    recon = [json.loads(line) for line in (out / "recon.jsonl").read_text().splitlines()]
    assert recon and not any(r["title"] in dev for r in recon)
    corpus = json.loads((out / "2wiki_corpus" / "corpus_6119.json").read_text())
    questions = load_qa(out / "2wiki_corpus" / "questions_1000.json", negatives=8, hard_negatives=True)
    assert 900 <= len(questions) < 1000 and 6000 <= len(corpus) < 6119
    in_dev_file = {ex.id for ex in load_qa(SHARED / "2wikimultihopqa" / "dev_500.jsonl")}
    for ex in questions:
        assert ex.id not in dev and ex.id not in in_dev_file
        assert not any(d.title in dev or (title_key(d.title) in dev_keys and d.id in ex.gold_ids) for d in ex.docs)
