"""Information flow through the memory tokens, on held-out documents (issue 7, milestone 1).

For each checkpoint: the generator's loss on reconstruction and single-question QA of the
dev-split SCP documents (never trained on), reading (a) the document's own states, (b)
zeroed states, (c) another document's states. Targets: reconstruction real/zero <= 0.60,
QA real/zero <= 0.85, and (c) no better than (b).

    python benchmarks/info_flow.py CKPT [CKPT ...] --rows 32 --out benchmarks/results/info_flow.json

Before session 10 the dev documents were in stage-1 training (its SCP file was a renamed copy, so
no row matched the split's "clara_pretrain_qa_1k:LINE" ids). ``--carved-seed S`` measures instead
the rows such a run held out of training for its own logged measure (seed S; the shipped default's
stage 1 used seed 0): the only SCP documents those checkpoints never saw.

``--exclude-out FILE`` (with ``--carved-seed``) writes the dev split plus those rows' ids as the
current SCP file names them, for ``exclude_ids`` of a run that continues such a checkpoint and
must not train on the rows it will be measured on.

``--span-gap`` measures instead how far each compressor's memory is from the bag-of-words
oracle on the same documents (``clara.train.bow.span_gap``: the span-mean loss, against the
document's own span means and another's, their cosine, the anchoring loss).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from clara import ClaraModel
from clara.train.bow import span_gap
from clara.train import TrainConfig
from clara.train.info_flow import info_flow
from clara.train.rows import ScpRow, load_exclusions, read_scp
from clara.train.run import scp_data

ROOT = Path(__file__).resolve().parents[1]


def carved_rows(scp: Path, recon: Path, dev: set[str], seed: int, n: int) -> list[ScpRow]:
    """The n rows a stage-1 run with this seed held out when its SCP file did not match the split."""
    with tempfile.TemporaryDirectory() as tmp:
        renamed = Path(tmp) / "scp.jsonl"  # the name train_data/ gave the file before session 10
        shutil.copy(scp, renamed)
        cfg = TrainConfig(stage="scp", output_dir=tmp, data=[str(renamed)], recon_data=[str(recon)], seed=seed,
                          eval_every=1, eval_rows=n)
        return scp_data(cfg, dev)[1]


def write_exclusions(splits: Path, scp: Path, carved: list[ScpRow], out: Path) -> None:
    """The dev split plus ``carved`` rows, renamed from the old copy's ids ("scp:LINE") to ``scp``'s."""
    data = json.loads(splits.read_text())
    ids = [f"{scp.stem}:{r.doc_id.rsplit(':', 1)[1]}" for r in carved]
    data["carved"] = {"ids": ids}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{out}: the dev split plus {len(ids)} carved rows")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoints", nargs="+", help="checkpoint folders ('default' = the shipped one)")
    ap.add_argument("--scp", type=Path, default=ROOT.parent / "shared" / "data" / "scp" / "clara_pretrain_qa_1k.jsonl")
    ap.add_argument("--splits", type=Path, default=ROOT / "splits" / "dev.json")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--span-gap", action="store_true", help="measure the distance to the bag-of-words oracle instead")
    ap.add_argument("--carved-seed", type=int, default=None, help="measure the rows a pre-session-10 stage-1 run with this seed held out")
    ap.add_argument("--recon", type=Path, default=ROOT / "train_data" / "recon.jsonl", help="stage 1's reconstruction rows (for --carved-seed)")
    ap.add_argument("--exclude-out", type=Path, default=None,
                    help="with --carved-seed: write the dev split plus the carved rows' ids here, then exit")
    ap.add_argument("--backbone", default=None, help="load the checkpoints on this backbone folder instead of their own")
    ap.add_argument("--device", default="cpu", help="'cpu' (the committed results), 'cuda', 'auto'")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    dev = load_exclusions(args.splits)
    if args.exclude_out and args.carved_seed is None:
        ap.error("--exclude-out needs --carved-seed")
    if args.carved_seed is None:
        rows = [r for r in read_scp(args.scp) if r.doc_id in dev][: args.rows]
    else:
        rows = carved_rows(args.scp, args.recon, dev, args.carved_seed, args.rows)
        if args.exclude_out:
            write_exclusions(args.splits, args.scp, rows, args.exclude_out)
            return
    results = {}
    for ckpt in args.checkpoints:
        start = time.time()
        model = ClaraModel.from_pretrained(None if ckpt == "default" else ckpt, backbone=args.backbone, device=args.device)
        if args.span_gap:
            res = {k: round(v, 4) for k, v in span_gap(model, [r.doc for r in rows]).items()}
        else:
            res = info_flow(model, rows, batch_size=8)
        res["seconds"] = round(time.time() - start, 1)
        results[ckpt] = res
        print(json.dumps({ckpt: res}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": len(rows), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
