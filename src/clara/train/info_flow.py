"""Does document information pass through the memory tokens? Measured, not assumed.

For held-out SCP rows, the generator's loss on reconstruction ("repeat the background")
and on single-question QA, reading (a) the document's own memory states, (b) zeroed
states, (c) another document's states. Information flows when (a) is clearly below (b)
and (c) is no better than (b). ``ratio = real / zeroed``; lower is better.
"""

from __future__ import annotations

import random

import torch

from ..model import ClaraModel
from .rows import ScpRow


@torch.no_grad()
def info_flow(model: ClaraModel, rows: list[ScpRow], batch_size: int = 8, max_target_len: int = 128) -> dict[str, dict[str, float]]:
    """Loss per task and condition, averaged over rows: {"reconstruct": {...}, "qa": {...}}."""
    if len(rows) < 2:
        raise ValueError("info_flow needs at least 2 rows (condition c reads another row's states)")
    was_training = model.training
    model.eval()
    states = model.compress([r.doc for r in rows], batch_size=batch_size)  # (N, n_mem, H)
    other = states.roll(1, dims=0)  # each row reads its neighbour's states
    rng = random.Random(0)
    tasks: dict[str, list[tuple[int, str, str]]] = {"reconstruct": [], "qa": []}
    for i, r in enumerate(rows):
        tasks["reconstruct"].append((i, model.prompt("reconstruct", 1), r.doc))
        if r.questions:
            j = rng.randrange(len(r.questions))
            prompt = model.prompt("answer", 1, question=r.questions[j])
            tasks["qa"].append((i, prompt, r.answers[j]))
    result: dict[str, dict[str, float]] = {}
    for task, items in tasks.items():
        if not items:
            continue
        sums = {"real": 0.0, "zero": 0.0, "other": 0.0}
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            idx = [i for i, _, _ in chunk]
            prompts, targets = [p for _, p, _ in chunk], [t for _, _, t in chunk]
            for name, src in (("real", states), ("zero", torch.zeros_like(states)), ("other", other)):
                loss = model.generator_loss(prompts, targets, [src[i : i + 1] for i in idx],
                                            per_example=True, max_target_len=max_target_len)
                sums[name] += loss.sum().item()
        means = {k: v / len(items) for k, v in sums.items()}
        means["ratio"] = means["real"] / means["zero"]
        result[task] = {k: round(v, 4) for k, v in means.items()}
    model.train(was_training)
    return result
