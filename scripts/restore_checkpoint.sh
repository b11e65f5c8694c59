#!/usr/bin/env bash
# Training checkpoints that git history keeps but the tracked tree does not (a device call carries the
# whole tree, at most 64 MiB, and runs/ is git-ignored, so a fresh checkout loses it). This writes one to
# runs/NAME/ (or OUT). Needs a clone with history (not --depth 1).
#   bash scripts/restore_checkpoint.sh scp16_soft_step850   # the ratio-16 stage-1 weights every lineage starts from (fp16)
#   bash scripts/restore_checkpoint.sh scp4_30e             # session 30's ratio-4 stage 1e (fp32, exact)
#   bash scripts/restore_checkpoint.sh default16            # the ratio-16 default shipped in sessions 15-31 (fp16)
# then e.g. `clara train instruct ... init=runs/scp4_30e` (docs/training.md).
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: restore_checkpoint.sh NAME [OUT]}
case "$name" in  # the commit whose tree holds the checkpoint, and its folder there
    scp16_soft_step850) rev=e646ca7 src=checkpoints/$name ;;  # the last such commit
    scp4_30e) rev=f7ddd88 src=checkpoints/$name ;;            # session 31
    default16) rev=ab701f5 src=src/clara/checkpoints/default ;;  # the last commit that shipped it
    *) echo "unknown checkpoint '$name' (known: scp16_soft_step850, scp4_30e, default16)" >&2; exit 2 ;;
esac
out=${2:-runs/$name}
mkdir -p "$out"
for f in config.json model.safetensors; do
    git show "$rev:$src/$f" > "$out/$f.tmp" && mv "$out/$f.tmp" "$out/$f"
done
echo "$out"
