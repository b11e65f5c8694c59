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

``--qa FILE`` measures instead the gold passages of the dev-split questions of a QA file (HotpotQA,
2Wiki, NQ-open: the first gold document of each, with its question and first answer): text that
no stage of any lineage here trained on (build_train_data.py drops every dev-split title from the
reconstruction passages, and stages 2-3 never read a dev question), where the SCP dev documents
were seen by the pre-session-10 ratio-16 stage 1 that every later lineage starts from.

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


def qa_rows(path: Path, dev: set[str], n: int) -> list[ScpRow]:
    """The first ``n`` dev-split questions of a QA file as rows: gold passage, question, answer."""
    from clara.data.qa import load_qa

    rows = []
    for ex in load_qa(path):
        if ex.id not in dev or not ex.gold_ids:
            continue
        gold = next((d for d in ex.docs if d.id == ex.gold_ids[0]), None)
        if gold is None:
            continue
        rows.append(ScpRow(doc=gold.full_text(), data_type="qa", questions=[ex.question], answers=ex.answers[:1],
                           doc_id=f"{ex.id}/{gold.id}"))
        if len(rows) == n:
            break
    return rows


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
    ap.add_argument("--qa", type=Path, default=None, help="measure the gold passages of this QA file's dev-split questions")
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
    if args.qa is not None and args.carved_seed is not None:
        ap.error("--qa and --carved-seed choose different documents: give one")
    if args.exclude_out and args.carved_seed is None:
        ap.error("--exclude-out needs --carved-seed")
    if args.qa is not None:
        rows = qa_rows(args.qa, dev, args.rows)
    elif args.carved_seed is None:
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
