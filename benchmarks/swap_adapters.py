"""Cross two checkpoints of one lineage: the document side of one, the reading side of the other.

A diagnostic for where a later stage changed information flow. Stage 2 trains the compressor
(and its memory rows) and the generator together; measuring ``benchmarks/info_flow.py`` on

    compressor of A + generator of B     and     compressor of B + generator of A

says whether a change between A and B lives in the states or in their reading. Both
checkpoints must share a backbone and a memory layout (same ratio and readout); the config
(and anything not named below) comes from ``--reader``'s checkpoint.

    python benchmarks/swap_adapters.py --docs runs/scp4_23/final --reader runs/instruct4_23/final \
        --out runs/swap_s1docs_s2reader
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import save_file

from clara.checkpoint import FORMAT, WEIGHTS, atomic_folder_write, read_meta, read_tensors
from clara.config import ClaraConfig

# The document side: the compressor's LoRA and the memory-token rows it appends to a document
# (clara.checkpoint.save_checkpoint's keys; the generator's readout maps stay with the reader).
DOC_SIDE = ("compressor/", "mem_rows")


def is_doc_side(key: str) -> bool:
    return key.startswith(DOC_SIDE)


def swap(docs: Path, reader: Path, out: Path) -> dict[str, int]:
    """Write ``out``: ``reader``'s checkpoint with ``docs``' document side. Returns tensor counts."""
    # read as the loader reads them, so fields an older checkpoint lacks hold ClaraConfig's defaults
    reader_meta = read_meta(reader)
    doc_cfg = ClaraConfig.from_dict(read_meta(docs)["clara_config"])
    read_cfg = ClaraConfig.from_dict(reader_meta["clara_config"])
    for field in ("backbone", "compression_ratio", "doc_max_len", "mem_readout", "readout_tokens", "lora_alpha", "lora_r"):
        if getattr(doc_cfg, field) != getattr(read_cfg, field):
            raise SystemExit(f"{field} differs: {docs} has {getattr(doc_cfg, field)!r}, {reader} {getattr(read_cfg, field)!r}")
    if doc_cfg.rank("compressor") != read_cfg.rank("compressor"):
        raise SystemExit(f"the compressor's LoRA rank differs: {docs} has {doc_cfg.rank('compressor')}, "
                         f"{reader} {read_cfg.rank('compressor')}")
    # shared adapters written out: the crossed checkpoint keeps the reader's query reasoner even where
    # the reader stored it as its compressor's copy
    doc_w, read_w = read_tensors(docs), read_tensors(reader, reader_meta)
    reader_meta = {**reader_meta, "format_version": 1, "shared_adapters": {}}
    if set(doc_w) != set(read_w):
        raise SystemExit(f"the checkpoints hold different tensors ({len(doc_w)} vs {len(read_w)})")
    mixed = {k: (doc_w[k] if is_doc_side(k) else read_w[k]) for k in read_w}

    def write(tmp: Path) -> None:
        save_file(mixed, str(tmp / WEIGHTS), metadata={"format": FORMAT, "format_version": "1"})
        (tmp / "config.json").write_text(json.dumps(reader_meta, indent=2) + "\n")

    atomic_folder_write(out, write)
    n_doc = sum(map(is_doc_side, mixed))
    return {"doc_side": n_doc, "reader_side": len(mixed) - n_doc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=Path, required=True, help="checkpoint whose compressor and memory rows are kept")
    ap.add_argument("--reader", type=Path, required=True, help="checkpoint whose generator, query reasoner and config are kept")
    ap.add_argument("--out", type=Path, required=True, help="folder for the crossed checkpoint")
    args = ap.parse_args()
    print(json.dumps(swap(args.docs, args.reader, args.out)))


if __name__ == "__main__":
    main()
