#!/usr/bin/env bash
# The shipped default's stage-1 weights (scp16_soft at step 850: fp16, no optimizer state), from git
# history, to runs/scp16_soft_step850/ (or $1): scripts/restore_checkpoint.sh scp16_soft_step850.
#   bash scripts/restore_step850.sh && clara train scp -c configs/default/scp_cpu.yaml \
#       init=runs/scp16_soft_step850 output_dir=runs/scp16_more model.mem_readout=soft_tokens
exec bash "$(dirname "$0")/restore_checkpoint.sh" scp16_soft_step850 "$@"
