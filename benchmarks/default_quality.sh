#!/usr/bin/env bash
# Quality of the shipped default checkpoint on the dev splits (splits/dev.json), CPU.
# Writes benchmarks/results/quality_*/ (metrics.json, results.md, predictions, plots).
#   bash benchmarks/default_quality.sh [N_ANSWER] [N_RETRIEVAL]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
N_ANSWER=${1:-40}
N_RETRIEVAL=${2:-100}
CKPT=src/clara/checkpoints/default
# answers, oracle setting: CLaRa reading 5 compressed candidates vs the same backbone closed-book
# and reading the gold paragraphs as text
clara eval "$DATA/hotpotqa/hotpot_dev_distractor_500.jsonl" --split splits/dev.json --limit "$N_ANSWER" \
    --setting oracle -s clara -s closed-book -s gold-text -c "$CKPT" -k 5 --max-new-tokens 24 \
    --device cpu -o benchmarks/results/quality_hotpot_oracle
# retrieval only: Recall@k of the query reasoner vs BM25 and all-MiniLM-L6-v2 over the same candidates
clara eval "$DATA/hotpotqa/hotpot_dev_distractor_500.jsonl" --split splits/dev.json --limit "$N_RETRIEVAL" \
    --setting oracle --retrieval-only -s clara -s bm25 -s minilm -c "$CKPT" \
    --device cpu -o benchmarks/results/quality_hotpot_retrieval
