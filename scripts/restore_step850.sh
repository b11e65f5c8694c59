#!/usr/bin/env bash
# The shipped default's stage-1 weights (scp16_soft at step 850: fp16, no optimizer state) left the
# tracked tree in session 12, because a device call carries the whole tree and at most 64 MiB;
# git history keeps them. This writes them to runs/scp16_soft_step850/ (or $1). Needs a clone with
# history (not --depth 1).
#   bash scripts/restore_step850.sh && clara train scp -c configs/default/scp_cpu.yaml \
#       init=runs/scp16_soft_step850 output_dir=runs/scp16_more model.mem_readout=soft_tokens
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/scp16_soft_step850}
rev=e646ca7  # the last commit whose tree holds checkpoints/scp16_soft_step850/
mkdir -p "$out"
for f in config.json model.safetensors; do
    git show "$rev:checkpoints/scp16_soft_step850/$f" > "$out/$f.tmp" && mv "$out/$f.tmp" "$out/$f"
done
echo "$out"
