#!/usr/bin/env bash
# Build what scripts/device_train.sh needs on a lent GPU machine, in folders that each fit one
# device call: a call carries at most 64 MiB *including the tracked working tree* (about 33 MiB
# since session 12 moved the stage-1 checkpoint out of the tree; keep it that small).
#   .dev_a/    the gguf wheel, train_data.tgz, probe/ (SmolLM2's config and tokenizer, for the
#              random-weights smoke test) and gguf.sha256
#   .dev_g0/ .. .dev_gN/   SmolLM2's GGUF in parts of PART_MB MiB (default 24: four parts)
# All are git-ignored; a call names the ones it brings in `carry`, and ignored paths stay on the
# machine between calls while it is warm (it is handed back after 30 s idle, so chain the calls).
# The sequence (docs/training.md, "A GPU run"):
#   call 1: carry .dev_a           `PROBE=1 bash scripts/device_train.sh`  (smoke test + timings)
#   call 2..N: carry .dev_gI       `ls .dev_g*`                           (transfer only)
#   last:   carry the last part    `BUDGET=480 bash scripts/device_train.sh`
# Run from the repository root after `make setup`:  bash scripts/device_bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}; PART_MB=${PART_MB:-24}
export CLARA_CACHE=${CLARA_CACHE:-$HOME/.cache/clara}
[ -f train_data/clara_pretrain_qa_1k.jsonl ] || "$PY" scripts/build_train_data.py
rm -rf .dev_a .dev_g* && mkdir -p .dev_a/probe
gguf_file=$("$PY" -c "from clara.backbone import _smollm2_gguf_path; print(_smollm2_gguf_path())")
split -b "${PART_MB}m" -d -a 1 "$gguf_file" .dev_part
for p in .dev_part*; do mkdir -p ".dev_g${p#.dev_part}" && mv "$p" ".dev_g${p#.dev_part}/gguf.part"; done
sha256sum < "$gguf_file" | cut -d' ' -f1 > .dev_a/gguf.sha256
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .dev_a "gguf==$("$PY" -c 'import importlib.metadata as m; print(m.version("gguf"))')"
tar czf .dev_a/train_data.tgz -C train_data .
# SmolLM2's config and tokenizer as this machine converts them (eos aligned with the model config)
folder=$("$PY" -c "from clara.backbone import resolve_backbone; print(resolve_backbone('smollm2-135m-instruct'))")
find "$folder" -maxdepth 1 -type f ! -name '*.safetensors' -exec cp {} .dev_a/probe/ \;
[ "$(cat .dev_g*/gguf.part | sha256sum | cut -d' ' -f1)" = "$(cat .dev_a/gguf.sha256)" ] || { echo "parts do not rebuild the GGUF" >&2; exit 1; }
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo "tracked tree $(( tree / 1048576 )) MiB; each call adds one of:"; du -sh .dev_a .dev_g*
