"""How much can a generator read from perfect bag-of-words memory? An upper bound, measured.

The shipped recipe anchors memory slot ``i`` to the words of the ``i``-th span of its document
(clara/train/bow.py) and the generator reads each slot as a soft token: an average of input
embeddings. Its stage-1 bag-of-words loss sits near the floor of a uniform distribution over
each span's tokens, so the compressor already writes close to the best such average. This
probe asks what the generator gets out of that at best: it replaces the compressor by an
oracle, the exact mean input embedding of each span's tokens, trains only the generator
adapter on the stage-1 tasks for ``--steps`` steps, and reports the information-flow measure
(clara.train.info_flow: loss reading the oracle states, zeroed states, another document's)
on the dev-split SCP documents every ``--eval-every`` steps.

If the oracle stays above the target ratios, no compressor trained under this readout at this
compression ratio can reach them either (at this training budget).

    python benchmarks/readout_ceiling.py --ratio 16 --init runs/scp16_soft_step850 \\
        --steps 150 --out benchmarks/results/readout_ceiling_r16.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from clara import ClaraConfig, ClaraModel
from clara.train import TrainConfig
from clara.train.bow import span_means
from clara.train.info_flow import info_flow
from clara.train.rows import load_exclusions, pick_task, read_reconstruction, read_scp, scp_example

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


class OracleModel:
    """Wraps a ClaraModel whose ``compress`` returns each span's mean input embedding (bow.span_means)."""

    def __init__(self, model: ClaraModel) -> None:
        self.model = model

    def compress(self, texts: list[str], batch_size: int = 8) -> torch.Tensor:
        return span_means(self.model, texts)  # (N, n_mem, H)

    def __getattr__(self, name: str):  # everything else is the wrapped model's
        return getattr(self.model, name)


def build(init: str, ratio: int) -> ClaraModel:
    """``init`` at ``ratio`` (memory rows widened if lower: checkpoint.fit_mem_rows), reading states as they are."""
    return ClaraModel.from_pretrained(init, compression_ratio=ratio, mem_readout="states", mem_scale=1.0,
                                      lora_dropout=0.0, device="cpu")


def measure_real(model: ClaraModel, held: list, readout: str) -> dict:
    """The same measure with the model's own compressor and its ``readout`` (the trained system)."""
    oracle_readout, model.config.mem_readout = model.config.mem_readout, readout
    try:
        return info_flow(model, held, batch_size=8)
    finally:
        model.config.mem_readout = oracle_readout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", default="runs/scp16_soft_step850",
                    help="checkpoint whose generator adapter starts (scripts/restore_step850.sh writes the default)")
    ap.add_argument("--ratio", type=int, default=16, help="compression ratio (documents are cut at 128 tokens)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--rows", type=int, default=32, help="dev documents measured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--real-readout", default="soft_tokens",
                    help="readout for the extra measure with the model's own compressor at the first and last step")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = build(args.init, args.ratio)
    oracle = OracleModel(model)
    dev = load_exclusions(ROOT / "splits" / "dev.json")
    scp = read_scp(ROOT / "train_data" / "clara_pretrain_qa_1k.jsonl")
    held = [r for r in read_scp(SHARED / "scp" / "clara_pretrain_qa_1k.jsonl") if r.doc_id in dev][: args.rows]
    rows = [r for r in scp if r.doc_id not in dev] + read_reconstruction(ROOT / "train_data" / "recon.jsonl", dev)
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    weights = TrainConfig.load(ROOT / "configs" / "default" / "scp_cpu.yaml").task_weights  # the default's stage-1 tasks

    model.set_trainable(("generator",), mem_rows=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    curve, started = [], time.time()

    def measure(step: int) -> None:
        res = info_flow(oracle, held, batch_size=8)  # type: ignore[arg-type]
        curve.append({"step": step, **res, "elapsed_s": round(time.time() - started, 1)})
        print(json.dumps(curve[-1]), flush=True)

    measure(0)
    real = {"step_0": measure_real(model, held, args.real_readout)}
    print(json.dumps({"real_compressor": real}), flush=True)
    model.train()
    for step in range(1, args.steps + 1):
        batch = rows[(step - 1) * args.batch : step * args.batch]
        prompts, targets = [], []
        for r in batch:
            task, question, target = scp_example(r, pick_task(r, weights, rng), rng)
            prompts.append(model.prompt(task, 1, question=question))
            targets.append(target)
        states = oracle.compress([r.doc for r in batch])
        loss = model.generator_loss(prompts, targets, [s.unsqueeze(0) for s in states], max_target_len=128,
                                    per_example=True).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        if step % args.eval_every == 0:
            measure(step)
    real[f"step_{args.steps}"] = measure_real(model, held, args.real_readout)
    print(json.dumps({"real_compressor": real}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"init": args.init, "ratio": args.ratio, "batch": args.batch, "lr": args.lr,
                                        "rows": len(held), "curve": curve,
                                        "real_compressor": real}, indent=2) + "\n")


if __name__ == "__main__":
    main()
