#!/usr/bin/env bash
# One checkpoint on the four 100-question dev benchmarks of the model card (CPU, about 20 minutes):
# HotpotQA oracle and normal, 2Wiki oracle, NQ-open normal; k = 5, greedy, 24 new tokens.
# Writes benchmarks/results/quality_{hotpot_oracle,hotpot_normal,2wiki_oracle,nq_normal}_100/TAG/.
#   bash benchmarks/eval_dev.sh CKPT TAG [SYSTEM ...]          # systems default to: clara
# Extra `clara eval` options go in $EVAL_ARGS (e.g. EVAL_ARGS="--text-checkpoint runs/text240/final").
# Compare two tags question by question with benchmarks/paired_compare.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
    echo "usage: bash benchmarks/eval_dev.sh CKPT TAG [SYSTEM ...]" >&2
    exit 2
fi
ckpt=$1 tag=$2
shift 2
systems=()
for s in "${@:-clara}"; do systems+=(-s "$s"); done
DATA=${DATA:-../shared/data}
read -r -a extra <<< "${EVAL_ARGS:-}"
common=(--split splits/dev.json --limit 100 -c "$ckpt" -k 5 --max-new-tokens 24 --device cpu "${systems[@]}" "${extra[@]}")
R=benchmarks/results
clara eval "$DATA/hotpotqa/hotpot_dev_distractor_500.jsonl" --setting oracle "${common[@]}" -o "$R/quality_hotpot_oracle_100/$tag"
clara eval "$DATA/hotpotqa/hotpot_dev_distractor_500.jsonl" --setting normal "${common[@]}" -o "$R/quality_hotpot_normal_100/$tag"
clara eval "$DATA/2wikimultihopqa/dev_500.jsonl" --setting oracle "${common[@]}" -o "$R/quality_2wiki_oracle_100/$tag"
clara eval "$DATA/nq/nq_open_oracle.jsonl.gz" --setting normal "${common[@]}" -o "$R/quality_nq_normal_100/$tag"
