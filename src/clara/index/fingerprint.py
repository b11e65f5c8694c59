"""Model fingerprint recorded by an index: which checkpoint produced its memory states.

States from one checkpoint are meaningless to another (different compressor, different
query reasoner), so an index stores this fingerprint and refuses other models.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoint import _fingerprint_mismatch, backbone_fingerprint

if TYPE_CHECKING:
    from ..model import ClaraModel

#: Config fields that change the memory states (device, dtype and mem_scale do not change the space;
#: mem_scale does change stored readout rows, checked where an index has them).
_STATE_FIELDS = ("backbone", "compression_ratio", "doc_max_len", "query_max_len", "prompt_style")


def adapter_hash(model: "ClaraModel", adapters: tuple[str, ...] = ("compressor", "query_reasoner")) -> str:
    """sha256 over the memory rows, the readout map (if any: it shapes an index's readout rows)
    and these adapters' weights (default: those that shape memory states).

    Values are rounded to bfloat16 first so the same checkpoint loaded as float32, float16 or
    bfloat16 hashes the same; an index leaves the generator out (it reads states, never writes
    them), an evaluation run includes it.
    """
    digest = hashlib.sha256()
    params = dict(model.named_parameters())
    for name in sorted(params):
        split = name.startswith("mem_split.") and "generator" in adapters  # reads states, shapes no stored row
        if name in ("mem_rows", "mem_proj.weight") or split or any(f".{a}." in name for a in adapters):
            value = params[name].detach().to("cpu", torch.bfloat16).contiguous()
            digest.update(name.encode())
            digest.update(value.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: "ClaraModel") -> dict[str, Any]:
    """Backbone identity + adapter hash + the config fields that define the state space."""
    cfg = model.config
    return {
        "backbone": backbone_fingerprint(model),
        "adapters_sha256": adapter_hash(model),
        "n_mem": cfg.n_mem,
        "hidden_size": int(model.hidden_size),
        "config": {k: getattr(cfg, k) for k in _STATE_FIELDS},
        # not part of the state space (the same states serve either score): recorded so that
        # `clara index ann` builds the approximate index for the score the builder retrieves by
        "retrieval_score": cfg.retrieval_score,
        # scales the generator's input rows: part of an index's stored readout rows, not of its states
        "mem_scale": cfg.mem_scale,
    }


def fingerprint_mismatch(saved: dict[str, Any], current: dict[str, Any], readout: bool = False) -> str | None:
    """Why two fingerprints differ (None when they match); the backbone path may move, weights may not.
    ``readout``: the index stores readout rows, which also depend on ``mem_scale`` (indexes written
    before it was recorded are not checked for it)."""
    for key in ("n_mem", "hidden_size"):
        if saved.get(key) != current.get(key):
            return f"{key}: index has {saved.get(key)!r}, model has {current.get(key)!r}"
    for key in ("compression_ratio", "doc_max_len", "query_max_len", "prompt_style"):
        if saved["config"].get(key) != current["config"].get(key):
            return f"{key}: index has {saved['config'].get(key)!r}, model has {current['config'].get(key)!r}"
    problem = _fingerprint_mismatch(saved["backbone"], current["backbone"])
    if problem:
        return f"backbone differs ({problem})"
    if saved.get("adapters_sha256") != current.get("adapters_sha256"):
        return "adapter weights differ (index built with another checkpoint)"
    if readout and "mem_scale" in saved and saved["mem_scale"] != current.get("mem_scale"):
        return f"mem_scale: the index's readout rows were scaled by {saved['mem_scale']!r}, the model scales by {current.get('mem_scale')!r}"
    return None
