"""Save a randomly initialised copy of a backbone's architecture (for device smoke tests and timing).

    python scripts/random_backbone.py SRC OUT          # same shapes as SRC (config.json + tokenizer files)
    python scripts/random_backbone.py SRC OUT --tiny   # 2 layers, hidden 64: a CPU check of the same script

Speed does not depend on the weights' values, so a SmolLM2-shaped random model times every stage of a
GPU run before the real weights (which need a second transfer) have arrived.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="folder with config.json and the tokenizer files")
    ap.add_argument("out", type=Path)
    ap.add_argument("--tiny", action="store_true", help="shrink to 2 layers of width 64")
    args = ap.parse_args()
    config = AutoConfig.from_pretrained(args.src)
    if args.tiny:
        for k, v in TINY.items():
            setattr(config, k, v)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(args.out)
    for f in args.src.iterdir():
        if f.name != "config.json" and not f.name.endswith(".safetensors"):
            shutil.copy(f, args.out / f.name)


if __name__ == "__main__":
    main()
