"""This project's checkpoint format: ``config.json`` + ``model.safetensors``, no pickle.

``model.safetensors`` holds only what training changes: the three LoRA adapters
(keys ``<adapter>/<peft key>``; an adapter whose weights equal another's, such as a query reasoner
left at the compressor's copy by stage 3, is stored once and named in config.json's
``shared_adapters``), the memory-token embedding rows (``mem_rows``) and, with
``mem_readout="soft_tokens_linear"``, the readout map (``mem_proj``); with ``"sub_spans"``, its maps
(``mem_split.down``, ``mem_split.up``).
``config.json`` records the format version, the ClaraConfig and a fingerprint of the
backbone, so a checkpoint refuses to load onto a different backbone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from .config import ClaraConfig

if TYPE_CHECKING:
    from .model import ClaraModel

log = logging.getLogger(__name__)

FORMAT = "clara-rag"
#: Newest format this code reads. Version 2 adds ``shared_adapters`` (an adapter stored as another's
#: copy); a checkpoint without shared adapters is still written as version 1, readable by older code.
FORMAT_VERSION = 2
WEIGHTS = "model.safetensors"


class CheckpointError(ValueError):
    """A folder that is not a loadable CLaRa checkpoint, with the reason."""


def default_checkpoint_dir() -> Path:
    """The checkpoint shipped inside the package (trained by this project)."""
    return Path(__file__).parent / "checkpoints" / "default"


def backbone_fingerprint(model: "ClaraModel") -> dict[str, Any]:
    """Architecture facts plus a probe of embedding values: cheap, dtype-robust identity."""
    cfg = model.lm.config
    weight = model.lm.get_input_embeddings().weight.detach()
    flat = weight.reshape(-1)
    probe = flat[:: max(1, flat.numel() // 32)][:32].float().tolist()
    return {
        "model_type": cfg.model_type,
        "hidden_size": int(model.hidden_size),
        "num_hidden_layers": int(getattr(cfg, "num_hidden_layers", -1)),
        "vocab_rows": int(weight.shape[0]),
        "embedding_probe": [round(v, 6) for v in probe],
        "eos_token_id": model.tokenizer.eos_token_id,  # documents and targets end with it
    }


def _fingerprint_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    for key in ("model_type", "hidden_size", "num_hidden_layers", "vocab_rows"):
        if saved.get(key) != current.get(key):
            return f"{key}: checkpoint has {saved.get(key)!r}, backbone has {current.get(key)!r}"
    if "eos_token_id" in saved and saved["eos_token_id"] != current.get("eos_token_id"):  # absent before session 10
        return (f"eos_token_id: checkpoint has {saved['eos_token_id']!r}, tokenizer has {current.get('eos_token_id')!r} "
                "(a different tokenizer conversion; documents and targets end with eos)")
    a, b = torch.tensor(saved["embedding_probe"]), torch.tensor(current["embedding_probe"])
    if a.shape != b.shape or not torch.allclose(a, b, rtol=2e-2, atol=2e-3):
        return "embedding weights differ (same architecture, different weights)"
    return None


def atomic_folder_write(path: Path, write: Any) -> None:
    """Write into a temp folder beside ``path`` and swap it in, so readers never see half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    try:
        write(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(
    model: "ClaraModel", path: str | Path, dtype: torch.dtype | None = None, extra: dict[str, Any] | None = None
) -> None:
    """Save adapters, memory rows and config; ``dtype`` casts the tensors (e.g. float16 to ship small)."""
    from .model import ADAPTERS

    states = {name: get_peft_model_state_dict(model.peft, adapter_name=name) for name in ADAPTERS}
    shared = shared_adapters(states)
    tensors: dict[str, torch.Tensor] = {}
    for name in ADAPTERS:
        if name not in shared:
            for key, value in states[name].items():
                tensors[f"{name}/{key}"] = value
    tensors["mem_rows"] = model.mem_rows
    if model.mem_proj is not None:
        tensors["mem_proj"] = model.mem_proj.weight
    if model.mem_split is not None:
        tensors["mem_split.down"], tensors["mem_split.up"] = model.mem_split.down, model.mem_split.up
    tensors = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in tensors.items()}
    meta = {
        "format": FORMAT,
        "format_version": 2 if shared else 1,
        # the device is a runtime choice (from_pretrained(device=...)), not part of the model
        "clara_config": {**model.config.to_dict(), "device": "auto"},
        "backbone_fingerprint": backbone_fingerprint(model),
        "adapters": list(ADAPTERS),
        "shared_adapters": shared,
        **(extra or {}),
    }

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT, "format_version": str(meta["format_version"])})
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")

    atomic_folder_write(Path(path), write)


def shared_adapters(states: dict[str, dict[str, torch.Tensor]]) -> dict[str, str]:
    """{adapter: the adapter it is an exact copy of}: the query reasoner when it equals the compressor
    (stage 3 with ``train_query_reasoner=false`` leaves it so), which then needs no tensors of its own."""
    qr, comp = states["query_reasoner"], states["compressor"]
    same = qr.keys() == comp.keys() and all(torch.equal(qr[k], comp[k]) for k in qr)
    return {"query_reasoner": "compressor"} if same else {}


def read_tensors(folder: Path, meta: dict[str, Any] | None = None, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A checkpoint's tensors (loaded onto ``device``) with every shared adapter written out under its own name."""
    from .model import ADAPTERS

    meta = meta if meta is not None else read_config_json(folder / "config.json")
    tensors = load_file(str(folder / WEIGHTS), device=device)
    shared = meta.get("shared_adapters") or {}
    for name, source in shared.items():
        if name not in ADAPTERS or source not in ADAPTERS or source in shared:
            raise CheckpointError(f"{folder / 'config.json'}: shared_adapters {shared} must map adapters to stored ones")
        if any(k.startswith(f"{name}/") for k in tensors):
            raise CheckpointError(f"{folder / WEIGHTS} holds weights for {name}, which config.json says is a copy of {source}")
        prefix = f"{source}/"
        tensors.update({f"{name}/{k[len(prefix):]}": v for k, v in list(tensors.items()) if k.startswith(prefix)})
    return tensors


def read_config_json(path: Path) -> dict[str, Any]:
    """Parse a checkpoint's config.json; bad JSON is a CheckpointError naming file and line."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e


def read_meta(path: Path) -> dict[str, Any]:
    """Read and validate ``config.json`` of this project's format."""
    cfg_file = path / "config.json"
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder: a CLaRa checkpoint is a folder with config.json and {WEIGHTS}")
    if not cfg_file.is_file():
        raise CheckpointError(f"{path} has no config.json: not a CLaRa checkpoint")
    meta = read_config_json(cfg_file)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{cfg_file} is not a {FORMAT} checkpoint config (no \"format\": \"{FORMAT}\"); "
            "for Apple's CLaRa folders the loader expects adapters.pth beside config.json"
        )
    if int(meta.get("format_version", -1)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{cfg_file} has format_version {meta['format_version']}, newer than this clara-rag "
            f"understands ({FORMAT_VERSION}); upgrade clara-rag"
        )
    if not (path / WEIGHTS).is_file():
        raise CheckpointError(f"{path} has config.json but no {WEIGHTS}")
    return meta


def load_checkpoint(
    cls: type["ClaraModel"], path: str | Path | None, backbone: str | None = None, **overrides: Any
) -> "ClaraModel":
    """Build the model described by a checkpoint folder and load its weights."""

    folder = Path(path) if path is not None else default_checkpoint_dir()
    if path is None and not (folder / "config.json").is_file():
        raise CheckpointError(f"the shipped default checkpoint is missing from {folder}; reinstall clara-rag")
    if (folder / "adapters.pth").is_file():
        from .apple import load_apple_checkpoint

        return load_apple_checkpoint(cls, folder, backbone=backbone, **overrides)
    meta = read_meta(folder)
    if not isinstance(meta.get("clara_config"), dict):
        raise CheckpointError(f"{folder / 'config.json'} has no \"clara_config\" object")
    cfg_dict = dict(meta["clara_config"])
    if backbone is not None:
        cfg_dict["backbone"] = backbone
    try:
        config = ClaraConfig.from_dict(cfg_dict)
    except (TypeError, ValueError) as e:  # an unknown or invalid field, written by hand or another version
        raise CheckpointError(f"{folder / 'config.json'}: clara_config: {e}") from None
    if overrides:  # the caller's own arguments: their errors name the argument, not the file
        config = ClaraConfig.from_dict({**cfg_dict, **overrides})
    model = cls.from_backbone(config)
    problem = _fingerprint_mismatch(meta["backbone_fingerprint"], backbone_fingerprint(model))
    if problem:
        raise CheckpointError(
            f"checkpoint {folder} was trained on a different backbone than {config.backbone!r} ({problem})"
        )
    load_weights(model, folder)
    model.set_trainable(())  # a loaded checkpoint serves; training stages re-enable what they train
    model.eval()
    return model


def fit_mem_rows(saved: torch.Tensor, n_mem: int, folder: Path) -> torch.Tensor:
    """The checkpoint's memory rows ``(n_saved + 3, H)`` for a model with ``n_mem`` memory tokens.

    Equal counts load as they are. A model with a multiple of the saved count (a lower
    compression ratio, e.g. to continue training a ratio-16 checkpoint at ratio 4) gets each
    saved ``<MEMi>`` row repeated, so its slot ``j`` starts as the saved slot whose document
    span contains span ``j``; the ``<AE>``, ``<ENC>``, ``<SEP>`` rows are kept.
    """
    n_saved = saved.shape[0] - 3
    if n_saved == n_mem:
        return saved
    if n_saved < 1 or n_mem % n_saved:
        raise CheckpointError(
            f"{folder / WEIGHTS} has {n_saved} memory tokens per document; a model with {n_mem} can only "
            f"start from it when {n_mem} is a multiple of {n_saved} (same doc_max_len, lower compression ratio)"
        )
    log.warning("%s: %d memory tokens per document widened to %d; train before serving", folder, n_saved, n_mem)
    return torch.cat([saved[:n_saved].repeat_interleave(n_mem // n_saved, dim=0), saved[n_saved:]])


def grow_lora(
    saved: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], adapter: str, folder: Path
) -> dict[str, torch.Tensor]:
    """An adapter's saved LoRA weights fitted to a model whose adapter has an equal or higher rank.

    A rank-r update ``B @ A`` becomes rank R > r as ``[B, 0] @ [A; A_fresh]``: the extra rows of A
    keep the model's fresh random init and the extra columns of B are zero, so the grown adapter
    computes exactly what the saved one did (both keep the scale lora_alpha / lora_r) and its new
    directions start training from there. A lower rank is an error: truncating would change it.
    """
    out = dict(saved)
    grew = False
    for key, value in saved.items():
        target = fresh.get(key)
        if target is None or target.shape == value.shape:
            continue
        grew = True
        is_a, is_b = ".lora_A." in key, ".lora_B." in key
        rank_dim = 0 if is_a else 1
        same_other = value.dim() == 2 and value.shape[1 - rank_dim] == target.shape[1 - rank_dim]
        if not (is_a or is_b) or not same_other or value.shape[rank_dim] > target.shape[rank_dim]:
            raise CheckpointError(
                f"{folder / WEIGHTS}: {adapter} {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(target.shape)} (an adapter's rank can grow on load, never shrink: check adapter_r / lora_r)"
            )
        pad = target.narrow(rank_dim, value.shape[rank_dim], target.shape[rank_dim] - value.shape[rank_dim])
        if is_b:
            pad = torch.zeros_like(pad)
        out[key] = torch.cat([value.to(pad.dtype), pad.to(value.device)], dim=rank_dim)
    if grew:
        log.info("%s: the %s adapter's LoRA rank grown on load (its new directions start at zero)", folder, adapter)
    return out


def load_weights(model: "ClaraModel", folder: str | Path) -> None:
    """Load a checkpoint's adapters and memory rows into an already built model (in place)."""
    from .model import ADAPTERS

    folder = Path(folder)
    tensors = read_tensors(folder, device=str(model.device))
    if "mem_rows" not in tensors:
        raise CheckpointError(f"{folder / WEIGHTS} has no mem_rows tensor")
    proj = tensors.pop("mem_proj", None)
    if proj is not None and model.mem_proj is None:
        raise CheckpointError(
            f"{folder / WEIGHTS} has a learned readout map (mem_proj) that mem_readout="
            f"{model.config.mem_readout!r} would ignore; load it with mem_readout='soft_tokens_linear'"
        )
    split = {k: tensors.pop(f"mem_split.{k}") for k in ("down", "up") if f"mem_split.{k}" in tensors}
    if split and model.mem_split is None:
        raise CheckpointError(
            f"{folder / WEIGHTS} has sub-span readout maps (mem_split) that mem_readout="
            f"{model.config.mem_readout!r} would ignore; load it with mem_readout='sub_spans'"
        )
    with torch.no_grad():
        if model.mem_split is not None:
            if not split:  # e.g. stage 1 continued from a soft_tokens checkpoint: up = 0, each row the state itself
                log.info("%s has no sub-span maps: mem_split starts fresh (each slot read as its soft token, r times)", folder)
            elif len(split) != 2 or split["down"].shape != model.mem_split.down.shape or split["up"].shape != model.mem_split.up.shape:
                raise CheckpointError(
                    f"{folder / WEIGHTS}: mem_split shapes {[tuple(v.shape) for v in split.values()]} do not match "
                    f"readout_tokens={model.config.readout_tokens}, lora_r={model.config.lora_r}"
                )
            else:
                model.mem_split.down.copy_(split["down"])
                model.mem_split.up.copy_(split["up"])
        model.mem_rows.copy_(fit_mem_rows(tensors.pop("mem_rows"), model.config.n_mem, folder))
        if model.mem_proj is not None:
            if proj is None:  # e.g. stage 1 continued from a soft_tokens checkpoint
                log.info("%s has no readout map: mem_proj starts at zero (the soft_tokens readout)", folder)
                model.mem_proj.weight.zero_()
            else:
                model.mem_proj.weight.copy_(proj)
    for name in ADAPTERS:
        prefix = f"{name}/"
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state:
            raise CheckpointError(f"{folder / WEIGHTS} has no weights for the {name} adapter")
        state = grow_lora(state, get_peft_model_state_dict(model.peft, adapter_name=name), name, folder)
        result = set_peft_model_state_dict(model.peft, state, adapter_name=name)
        if result.unexpected_keys:
            raise CheckpointError(f"{folder / WEIGHTS}: unexpected {name} keys {result.unexpected_keys[:3]}")
    model._restore_grad_flags()
