"""Re-save a checkpoint in float16 (ship size) and optionally split it into parts (device transfer).

    python scripts/pack_checkpoint.py runs/e2e/final OUT/e2e --split-mb 15
    python scripts/pack_checkpoint.py --join OUT/e2e DEST      # reassemble
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch


def pack(src: Path, dest: Path, split_mb: int) -> None:
    from clara.checkpoint import WEIGHTS, read_meta
    from safetensors.torch import load_file, save_file

    read_meta(src)
    dest.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to(torch.float16) for k, v in load_file(str(src / WEIGHTS)).items()}
    shutil.copy(src / "config.json", dest / "config.json")
    save_file(tensors, str(dest / WEIGHTS), metadata={"format": "clara-rag", "format_version": "1"})
    if split_mb:
        data = (dest / WEIGHTS).read_bytes()
        size = split_mb * 1024 * 1024
        for i in range(0, len(data), size):
            (dest / f"{WEIGHTS}.part{i // size}").write_bytes(data[i : i + size])
        (dest / WEIGHTS).unlink()


def join(src: Path, dest: Path) -> None:
    from clara.checkpoint import WEIGHTS

    dest.mkdir(parents=True, exist_ok=True)
    parts = sorted(src.glob(f"{WEIGHTS}.part*"), key=lambda p: int(p.suffix[5:]))
    (dest / WEIGHTS).write_bytes(b"".join(p.read_bytes() for p in parts))
    shutil.copy(src / "config.json", dest / "config.json")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("src", type=Path)
    ap.add_argument("dest", type=Path)
    ap.add_argument("--split-mb", type=int, default=0)
    ap.add_argument("--join", action="store_true")
    a = ap.parse_args()
    join(a.src, a.dest) if a.join else pack(a.src, a.dest, a.split_mb)
