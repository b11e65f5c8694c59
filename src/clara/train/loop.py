"""The training loop every stage shares, on accelerate.

One process or many (``accelerate launch``: DDP, DeepSpeed, FSDP), gradient accumulation,
AdamW + cosine schedule with warmup, clipping, mixed precision, gradient checkpointing,
metrics to ``metrics.jsonl``, and resumable checkpoints written atomically:

    output_dir/
      checkpoint/      latest resumable state: the CLaRa checkpoint + trainer_state.pt
      final/           the CLaRa checkpoint at the end
      metrics.jsonl    one line per log step
      config.yaml      the TrainConfig used

Resume is exact: the data order is a function of (seed, epoch) alone, each row's task of
(seed, epoch, index), and the RNG state of dropout is saved, so a killed run continued from
its checkpoint computes the same next loss as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from ..checkpoint import atomic_folder_write, load_weights, save_checkpoint
from ..io import append_jsonl, atomic_write_text
from ..model import ClaraModel
from .batch import Batch
from .config import TrainConfig

log = logging.getLogger(__name__)

StepFn = Callable[[ClaraModel, Batch], tuple[torch.Tensor, dict[str, float]]]
STATE = "trainer_state.pt"


def _save(acc: Accelerator, model: ClaraModel, opt, sched, folder: Path, step: int, epoch: int, extra: dict) -> None:
    """Write a resumable checkpoint atomically (main process only)."""
    if not acc.is_main_process:
        return
    state = {
        "step": step,
        "epoch": epoch,
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }

    def write(tmp: Path) -> None:
        save_checkpoint(acc.unwrap_model(model), tmp / "model", extra=extra)
        torch.save(state, tmp / STATE)

    atomic_folder_write(folder, write)


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> str:
    """The training settings that differ between a checkpoint's run and this one ("" when none),
    leaving out the time budget (a stopped run is resumed with another by design)."""
    keys = sorted((set(saved) | set(current)) - {"max_minutes"})
    return ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k))


def param_groups(model: ClaraModel, params: list[torch.nn.Parameter], cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW parameter groups: each adapter of ``cfg.adapter_lr`` at its own peak learning rate,
    every other trainable parameter at ``cfg.lr``. The schedule scales all groups alike."""
    own = {id(p): lr for name, lr in cfg.adapter_lr.items() for p in model.adapter_parameters(name)}
    groups = [{"params": [p for p in params if id(p) not in own], "lr": cfg.lr}]
    for lr in sorted(set(own.values())):
        groups.append({"params": [p for p in params if own.get(id(p)) == lr], "lr": lr})
    return [g for g in groups if g["params"]]


def train_loop(
    model: ClaraModel,
    dataset: list[Any],
    step_fn: StepFn,
    cfg: TrainConfig,
    evaluate: Callable[[ClaraModel], dict[str, Any]] | None = None,
    accelerator: Accelerator | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` with ``step_fn``; returns the last logged metrics."""
    out = Path(cfg.output_dir)
    acc = accelerator or Accelerator(
        # without CUDA, processes started by torchrun/accelerate launch join a gloo (MULTI_CPU) group
        cpu=not torch.cuda.is_available() or str(cfg.model.get("device", "auto")) == "cpu",
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )
    set_seed(cfg.seed)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if cfg.gradient_checkpointing:
        model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # the loader gets its own generator: drawing worker seeds from the global RNG would shift
    # the dropout RNG between an uninterrupted and a resumed run
    loader = DataLoader(range(len(dataset)), batch_size=cfg.batch_size, shuffle=True, collate_fn=list,
                        drop_last=True, generator=torch.Generator().manual_seed(cfg.seed))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    opt = torch.optim.AdamW(param_groups(model, params, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt, loader = acc.prepare(model, opt, loader)
    if len(loader) == 0:  # drop_last: fewer rows than one batch would loop over empty epochs forever
        raise ValueError(
            f"{len(dataset)} training rows make no batch of {cfg.batch_size} per process "
            f"x {acc.num_processes} processes; lower batch_size or add data"
        )
    # accelerate also steps at the loader's end, so a short last accumulation is a step of its own
    steps_per_epoch = max(1, math.ceil(len(loader) / cfg.grad_accum))
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * total), total)

    step, epoch, skip = 0, 0, 0
    ckpt = out / "checkpoint"
    if (ckpt / STATE).is_file():
        state = torch.load(ckpt / STATE, weights_only=True)
        load_weights(acc.unwrap_model(model), ckpt / "model")
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, epoch = state["step"], state["epoch"]
        skip = (step - epoch * steps_per_epoch) * cfg.grad_accum  # micro-batches already seen this epoch
        log.info("resuming from %s at step %d (epoch %d)", ckpt, step, epoch)
        saved = json.loads((ckpt / "model" / "config.json").read_text()).get("training", {})
        if changed := changed_settings(saved, cfg.to_dict()):
            log.warning("resuming %s under settings other than the run's so far (%s): it goes on under the new ones",
                        ckpt, changed)

    unwrapped: ClaraModel = acc.unwrap_model(model)
    bar = tqdm(total=total, initial=step, desc=f"train {cfg.stage}", disable=not acc.is_local_main_process)
    started, last = time.time(), {}
    window: dict[str, list[float]] = {}
    examples_seen, skipped, out_of_time = 0, 0, False
    model.train()
    while step < total:
        loader.set_epoch(epoch)
        batches = acc.skip_first_batches(loader, skip) if skip else loader
        skip = 0
        for indices in batches:
            log.debug("process %d epoch %d rows %s", acc.process_index, epoch, indices)
            with acc.accumulate(model):
                loss, metrics = model(step_fn, Batch([dataset[i] for i in indices], indices, epoch))
                acc.backward(loss)
                finite = True
                if acc.sync_gradients:
                    # a non-finite gradient (one bad batch, an overflow) would poison every weight: skip it
                    norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
                    finite = bool(torch.isfinite(norm))
                    if not finite:
                        skipped += 1
                        log.warning("step %d: non-finite gradient norm, update skipped (%d so far)", step + 1, skipped)
                if finite:
                    opt.step()
                    sched.step()
                opt.zero_grad()
            if math.isfinite(loss.item()):
                for k, v in {"loss": loss.item(), **metrics}.items():
                    window.setdefault(k, []).append(v)
            examples_seen += len(indices)
            if not acc.sync_gradients:
                continue
            step += 1
            bar.update(1)
            if (step % cfg.log_every == 0 or step == total) and window:
                last = _log(acc, out, step, epoch, window, sched, started, examples_seen)
                bar.set_postfix(loss=f"{last['loss']:.3f}")
                window = {}
            if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0:
                _evaluate(acc, model, unwrapped, evaluate, out, step)
                model.train()
            if step % cfg.save_every == 0:
                _save(acc, model, opt, sched, ckpt, step, epoch, {"training": cfg.to_dict()})
            if cfg.max_minutes:
                # every process must stop at the same step: take the slowest clock's verdict
                late = torch.tensor(float((time.time() - started) / 60 >= cfg.max_minutes), device=acc.device)
                out_of_time = bool(acc.reduce(late, "max") > 0)
            if step >= total or out_of_time:
                break
        else:
            epoch += 1
            continue
        if out_of_time and step < total:
            log.info("time budget of %.1f min reached at step %d", cfg.max_minutes, step)
            _save(acc, model, opt, sched, ckpt, step, epoch, {"training": cfg.to_dict()})
        break
    bar.close()
    if evaluate is not None and cfg.eval_every and step % cfg.eval_every != 0:
        _evaluate(acc, model, unwrapped, evaluate, out, step)  # always end with the final weights measured
    model.eval()
    acc.wait_for_everyone()
    if acc.is_main_process:
        save_checkpoint(unwrapped, out / "final", extra={"training": cfg.to_dict(), "steps": step})
    if cfg.gradient_checkpointing:
        unwrapped.lm.gradient_checkpointing_disable()
    return {**last, "step": step}


def _evaluate(acc: Accelerator, model, unwrapped: ClaraModel, evaluate, out: Path, step: int) -> None:
    """Measure (no grad, eval mode) and append the result to metrics.jsonl; leaves the model in eval mode."""
    model.eval()
    with torch.no_grad():
        result = evaluate(unwrapped)
    if acc.is_main_process:
        append_jsonl(out / "metrics.jsonl", [{"step": step, "eval": result}])
    log.info("step %d eval %s", step, result)


def _log(acc, out: Path, step: int, epoch: int, window: dict[str, list[float]], sched, started: float, seen: int) -> dict:
    """Average the window's metrics over steps and processes; append to metrics.jsonl."""
    means = {k: sum(v) / len(v) for k, v in window.items()}
    keys = sorted(means)
    gathered = acc.gather(torch.tensor([means[k] for k in keys], device=acc.device).unsqueeze(0))  # (P, K)
    row = dict(zip(keys, gathered.mean(0).tolist()))
    elapsed = time.time() - started
    row.update(step=step, epoch=epoch, lr=sched.get_last_lr()[0], elapsed_s=round(elapsed, 1),
               examples_per_s=round(seen * acc.num_processes / max(elapsed, 1e-9), 3))
    if acc.is_main_process:
        append_jsonl(out / "metrics.jsonl", [row])
    return row

