#!/usr/bin/env bash
# Quality of the shipped default checkpoint on the dev splits (splits/dev.json), CPU.
# Writes benchmarks/results/quality_*/ (metrics.json, results.md, predictions, plots).
#   bash benchmarks/default_quality.sh [N_ANSWER] [N_RETRIEVAL]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
N_ANSWER=${1:-40}
N_RETRIEVAL=${2:-100}
CKPT=${CKPT:-src/clara/checkpoints/default}
# the fair full-text baseline: a generator LoRA trained on raw text (`clara train text -c configs/default/text.yaml`)
TEXT_CKPT=${TEXT_CKPT:-runs/text/final}
TEXT_SYSTEMS=()
if [ -d "$TEXT_CKPT" ]; then TEXT_SYSTEMS=(-s full-text-lora --text-checkpoint "$TEXT_CKPT"); fi
# answers, oracle setting: CLaRa reading 5 compressed candidates vs the same backbone closed-book,
# reading the gold paragraphs as text, and (when trained) the text-LoRA reading CLaRa's top-5 as text
clara eval "$DATA/hotpotqa/hotpot_dev_distractor_500.jsonl" --split splits/dev.json --limit "$N_ANSWER" \
    --setting oracle -s clara -s closed-book -s gold-text "${TEXT_SYSTEMS[@]}" -c "$CKPT" -k 5 --max-new-tokens 24 \
    --device cpu -o benchmarks/results/quality_hotpot_oracle
# retrieval only: Recall@k of the query reasoner vs BM25 and all-MiniLM-L6-v2 over the same candidates
clara eval "$DATA/hotpotqa/hotpot_dev_distractor_500.jsonl" --split splits/dev.json --limit "$N_RETRIEVAL" \
    --setting oracle --retrieval-only -s clara -s bm25 -s minilm -c "$CKPT" \
    --device cpu -o benchmarks/results/quality_hotpot_retrieval
# normal setting, answers: every paragraph of the first N_ANSWER dev questions pooled into one
# corpus; CLaRa retrieves its top-5 from all of them and reads them compressed, the text LoRA reads
# the same five as text
clara eval "$DATA/hotpotqa/hotpot_dev_distractor_500.jsonl" --split splits/dev.json --limit "$N_ANSWER" \
    --setting normal -s clara -s closed-book "${TEXT_SYSTEMS[@]}" -c "$CKPT" -k 5 --max-new-tokens 24 \
    --device cpu -o benchmarks/results/quality_hotpot_normal
# normal setting, retrieval only
clara eval "$DATA/hotpotqa/hotpot_dev_distractor_500.jsonl" --split splits/dev.json --limit "$N_ANSWER" \
    --setting normal --retrieval-only -s clara -s bm25 -s minilm -c "$CKPT" \
    --device cpu -o benchmarks/results/quality_hotpot_normal_retrieval
