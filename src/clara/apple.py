"""Apple's released CLaRa checkpoints (apple/ml-clara): load, convert and write their folder format.

An Apple folder holds::

    config.json                    CLaRaConfig: decoder_model_name, compr_rate, doc_max_length,
                                   training_stage (stage1 | stage1_2 | stage2 = Base | Instruct | E2E),
                                   lora_r, sep, different_mem_tokens, generation_top_k, ...
    adapters.pth                   {encoder_adapter | decoder_adapter | query_reasoner_adapter:
                                    LoRA state dict keyed like ``model.layers.0.self_attn.q_proj.lora_A.weight``}
    decoder_first_last_layers.pth  {"model.embed_tokens.weight": (V + n_new, H), "lm_head.weight": (V + n_new, H)}

The adapters map to ``compressor``, ``generator`` and ``query_reasoner``; the ``n_new`` rows of
the resized embedding become ``mem_rows``. Apple's LoRA is r=lora_r, alpha=2*lora_r, dropout
0.1 on all linear layers.

Loading sets ``prompt_style="apple"``, which makes :mod:`clara.tokens` use the layouts below
instead of this project's, because these differ from ours in ways that change results:

* compressor input: Apple tokenizes the *string* ``"<ENC>" + bos + text + eos`` and truncates
  the whole sequence to ``doc_max_length + 3`` tokens (so a long text keeps
  ``doc_max_length + 1`` text tokens and loses its eos); ours keeps ``doc_max_len`` text tokens
  and always ends with eos. Memory tokens follow in both.
* queries: Apple encodes questions with the document template and ``doc_max_length``
  (the loader sets ``query_max_len = doc_max_length``).
* chat templates that reject a system turn: Apple joins system and user text with one
  newline (ours: a blank line) and passes ``enable_thinking=False``.
* Base (stage1) checkpoints were trained on Apple's paraphrase and QA-generation prompts,
  not ours: :func:`build_prompt` renders them.

Equal in both (checked by ``tests/test_apple.py``): special tokens in the order
``<MEM0>..<MEM{n-1}>, <AE>, <ENC>, <SEP>``; readout of the post-norm final hidden states at
the memory positions, no projection or normalisation; one ``<MEM0>..<MEM{n-1}><SEP>`` run per
document in ``"Background:\\n{runs}\\n\\nQuestion:{question}"`` under Apple's QA system prompt;
cosine over the flattened states; greedy decoding. Apple left-pads the compressor input to a
fixed width and runs it without position ids, so every row's positions include its padding;
under rotary position embeddings only relative positions matter, so the results are equal up
to rounding (we start positions at each row's first real token).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jinja2.exceptions import TemplateError
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from transformers import PreTrainedTokenizerBase

from . import tokens
from .checkpoint import CheckpointError, atomic_folder_write, read_config_json, save_checkpoint
from .config import ADAPTERS, ClaraConfig

if TYPE_CHECKING:
    from .model import ClaraModel

log = logging.getLogger(__name__)

ADAPTERS_FILE = "adapters.pth"
LAYERS_FILE = "decoder_first_last_layers.pth"

#: Apple adapter name -> this project's adapter name.
ADAPTER_NAMES = {"encoder_adapter": "compressor", "decoder_adapter": "generator", "query_reasoner_adapter": "query_reasoner"}

#: Apple's training stages and the release each one is.
STAGES = {"stage1": "Base", "stage1_2": "Instruct", "stage2": "E2E"}

#: The adapters each stage's release must hold (a missing query reasoner is initialised from
#: the compressor, as Apple's own stage-2 loader does).
_REQUIRED = ("encoder_adapter", "decoder_adapter")

_PEFT_PREFIX = "base_model.model."  # our adapters live in a PeftModel; Apple's were injected into the bare LM

# ---------------------------------------------------------------------- Apple's prompts
QA_SYSTEM = tokens.QA_SYSTEM
PARAPHRASE_SYSTEM = (
    "You are a helpful assistant. Your task is follow the instructions to paraphrase the background information."
)
QA_GENERATION_SYSTEM = (
    "You are a helpful assistant. Given a document, your task is to generate some single questions to cover "
    "all key information of the document and answer them sequentially."
)
#: Apple trains Base on one of these per example, chosen at random; ``{docs}`` is the placeholder runs.
PARAPHRASE_INSTRUCTIONS = (
    "Background: {docs} means the same as",
    "Background: {docs} Can you put the above sentences in your own terms?",
    "Background: {docs} Please provide a reinterpretation of the preceding background text.",
    "These two expressions are equivalent in essence:\n(1) {docs}\n(2)",
    "Background: {docs} is a paraphrase of what?",
    "Background: {docs} Could you give me a different version of the background sentences above?",
    "In other words, background: {docs} is just another way of saying:",
    "You're getting across the same point whether you say background: {docs} or",
    "Background: {docs} After unpacking the ideas in the background information above, we got:",
    "Background: {docs} Please offer a restatement of the background sentences I've just read.",
    "Background: {docs}, which also means:",
    "Strip away the mystery, and you'll find background: {docs} is simply another rendition of:",
    "The essence of background: {docs} is captured again in the following statement:",
)


def chat(tokenizer: PreTrainedTokenizerBase, system: str, user: str) -> str:
    """Render system + user the way Apple does: thinking off; a rejected system turn is folded in with one newline."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
    except TemplateError as e:
        if "System role not supported" not in str(e):
            # Apple's code stops here; folding the system text in is the only sensible way on
            log.warning("chat template rejected the system turn (%s); folding it into the user turn", e)
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{system}\n{user}"}],
            tokenize=False,
            add_generation_prompt=True,
            enable_thinking=False,
        )


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    n_docs: int,
    n_mem: int,
    question: str | None = None,
    variant: int = 0,
) -> str:
    """Apple's generator prompt for ``answer`` (all stages), ``paraphrase`` and ``qa`` (Base).

    ``variant`` picks one of :data:`PARAPHRASE_INSTRUCTIONS` (Apple draws one at random).
    """
    docs = tokens.placeholders(n_docs, n_mem)
    if task == "answer":
        if question is None:
            raise ValueError("the 'answer' task needs a question")
        return chat(tokenizer, QA_SYSTEM, f"Background:\n{docs}\n\nQuestion:{question}")
    if task == "paraphrase":
        return chat(tokenizer, PARAPHRASE_SYSTEM, PARAPHRASE_INSTRUCTIONS[variant].format(docs=docs))
    if task == "qa":
        return chat(tokenizer, QA_GENERATION_SYSTEM, f"Background:\n{docs}")
    raise ValueError(f"Apple's prompts have no {task!r} task; expected answer, paraphrase or qa")


def compressor_ids(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_len: int, special: tokens.SpecialTokens
) -> tuple[list[list[int]], int]:
    """Apple's compressor input per text, and how many texts were cut.

    The string ``<ENC> bos text eos`` is tokenized as a whole and cut to ``max_len + 3``
    tokens from the right, then the memory tokens are appended.
    """
    bos = tokenizer.bos_token or ""  # Mistral (Apple's backbone) has one; Apple's code requires it
    eos = tokenizer.eos_token or ""
    strings = [f"{tokens.ENC}{bos}{t}{eos}" for t in texts]
    ids = tokenizer(strings, add_special_tokens=False)["input_ids"]
    limit = max_len + 3
    truncated = sum(len(i) > limit for i in ids)
    return [i[:limit] + list(special.mem) for i in ids], truncated


# ---------------------------------------------------------------------- config
def read_apple_config(folder: Path) -> dict[str, Any]:
    """Read Apple's config.json and check the keys the loader needs."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder} has {ADAPTERS_FILE} but no config.json: not a complete Apple CLaRa folder")
    cfg = read_config_json(path)
    missing = [k for k in ("decoder_model_name", "compr_rate", "doc_max_length", "lora_r") if k not in cfg]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: not an Apple CLaRa config")
    stage = cfg.get("training_stage", "stage1")
    if stage not in STAGES:
        raise CheckpointError(f"{path}: training_stage {stage!r} is not one of Apple's releases {sorted(STAGES)}")
    if cfg.get("compr_model_name"):
        raise CheckpointError(
            f"{path} uses a separate compressor model ({cfg['compr_model_name']!r}); only decoder-as-compressor "
            "checkpoints (Apple's releases) are supported"
        )
    return cfg


def clara_config(cfg: dict[str, Any], backbone: str | None = None, **overrides: Any) -> ClaraConfig:
    """The ClaraConfig that reproduces an Apple config (Apple runs in bfloat16)."""
    fields: dict[str, Any] = {
        "backbone": backbone or cfg["decoder_model_name"],
        "compression_ratio": int(cfg["compr_rate"]),
        "doc_max_len": int(cfg["doc_max_length"]),
        "query_max_len": int(cfg["doc_max_length"]),
        "lora_r": int(cfg["lora_r"]),
        "lora_alpha": 2 * int(cfg["lora_r"]),
        "lora_dropout": 0.1,
        "lora_target_modules": "all-linear",
        "dtype": "bfloat16",
        "prompt_style": "apple",
        "mem_scale": 1.0,
    }
    fields.update(overrides)
    return ClaraConfig.from_dict(fields)


def _check_backbone_reachable(name: str, folder: Path) -> None:
    """A recorded absolute path from Apple's cluster will not exist here: say how to point elsewhere."""
    if name.startswith(("/", "~", ".")) and not Path(name).expanduser().exists():
        raise CheckpointError(
            f"{folder}/config.json names the backbone {name!r}, which does not exist on this machine; "
            "pass a local copy of it (e.g. Mistral-7B-Instruct-v0.2) with --backbone PATH / backbone=PATH"
        )


# ---------------------------------------------------------------------- weights
def _load_pth(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name}: not a complete Apple CLaRa folder")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors come in many types; the message says which
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch file ({e})") from e


def _find(state: dict[str, torch.Tensor], suffix: str) -> torch.Tensor | None:
    hits = [k for k in state if k.endswith(suffix)]
    if len(hits) > 1:
        raise CheckpointError(f"{LAYERS_FILE} holds several {suffix} tensors: {hits}")
    return state[hits[0]] if hits else None


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


def new_token_rows(
    model: "ClaraModel", layers: dict[str, torch.Tensor], different_mem_tokens: bool
) -> torch.Tensor:
    """Apple's resized embedding -> our ``mem_rows`` (n_mem + 3, H), after sanity checks.

    Checks: the width is the backbone's hidden size; the row count is the base vocabulary plus
    Apple's new tokens; the base rows of the embedding and of ``lm_head`` equal the backbone's
    (so the folder was trained on this backbone). With ``different_mem_tokens`` false Apple has
    a single ``<MEM>`` row, which every one of our ``<MEM{i}>`` rows copies: the model then
    sees the same input vectors as Apple's.
    """
    emb = _find(layers, "embed_tokens.weight")
    if emb is None:
        raise CheckpointError(f"{LAYERS_FILE} has no embed_tokens.weight (keys: {sorted(layers)[:5]})")
    n_mem, first = model.config.n_mem, model.special.first_new
    n_apple = (n_mem if different_mem_tokens else 1) + 3
    if emb.dim() != 2 or emb.shape[1] != model.hidden_size:
        raise CheckpointError(
            f"{LAYERS_FILE}: embedding shape {tuple(emb.shape)} does not fit a backbone of hidden size {model.hidden_size}"
        )
    if emb.shape[0] != first + n_apple:
        raise CheckpointError(
            f"{LAYERS_FILE}: embedding has {emb.shape[0]} rows, expected {first} base tokens + {n_apple} CLaRa tokens "
            f"= {first + n_apple}; the backbone's tokenizer or compr_rate/doc_max_length do not match the checkpoint"
        )
    base = model.lm.get_input_embeddings().weight.detach()
    err = _relative_error(emb[:first], base[:first].cpu())
    if err > 1e-2:
        raise CheckpointError(
            f"{LAYERS_FILE}: the base embedding rows differ from backbone {model.config.backbone!r} "
            f"(relative error {err:.3g}): the checkpoint was trained on another backbone"
        )
    head = _find(layers, "lm_head.weight")
    out = model.lm.get_output_embeddings()
    if head is not None and out is not None:
        err = _relative_error(head[:first], out.weight.detach()[:first].cpu())
        if err > 1e-2:
            raise CheckpointError(f"{LAYERS_FILE}: lm_head base rows differ from the backbone's (relative error {err:.3g})")
        # our output head has only the base rows: the CLaRa tokens can never be generated, which
        # changes nothing as long as Apple's (untrained, resize-initialised) rows never win the argmax
        log.debug("dropping %d lm_head rows of the CLaRa tokens (never generated here)", head.shape[0] - first)
    new = emb[first:].float()
    if not torch.isfinite(new).all():
        raise CheckpointError(f"{LAYERS_FILE}: the CLaRa token rows hold NaN or inf")
    if not different_mem_tokens:
        new = torch.cat([new[:1].repeat(n_mem, 1), new[1:]])
    log.info(
        "memory-token rows: mean norm %.3g (base vocabulary rows %.3g)",
        new[:n_mem].norm(dim=1).mean(), base.float().norm(dim=1).mean(),
    )
    return new


def _to_ours(state: dict[str, torch.Tensor], apple_name: str) -> dict[str, torch.Tensor]:
    """Apple's adapter keys (relative to the causal LM, adapter name stripped) -> our PeftModel keys."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix(_PEFT_PREFIX).replace(f".{apple_name}.", ".")
        out[_PEFT_PREFIX + key] = value
    return out


def load_adapter(model: "ClaraModel", ours: str, apple_name: str, state: dict[str, torch.Tensor]) -> None:
    """Load one of Apple's LoRA state dicts into our adapter ``ours``; keys and shapes must match exactly."""
    state = _to_ours(state, apple_name)
    expected = get_peft_model_state_dict(model.peft, adapter_name=ours)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{ADAPTERS_FILE}: {apple_name} does not fit this backbone with LoRA on all linear layers "
            f"(missing {missing[:2]}, unexpected {unexpected[:2]})"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{ADAPTERS_FILE}: {apple_name} {key} has shape {tuple(value.shape)}, expected "
                f"{tuple(expected[key].shape)} (is lora_r right?)"
            )
    set_peft_model_state_dict(model.peft, state, adapter_name=ours)


def load_apple_checkpoint(
    cls: type["ClaraModel"], folder: str | Path, backbone: str | None = None, **overrides: Any
) -> "ClaraModel":
    """Build a ClaraModel from Apple's folder (Base, Instruct or E2E) with Apple's prompts.

    ``backbone`` replaces ``decoder_model_name`` (a local copy when the recorded name is
    unreachable); ``overrides`` set ClaraConfig fields (``dtype`` defaults to bfloat16, as Apple
    runs). Every adapter in the file is kept: Instruct's generator is loaded, not replaced.
    Without a query-reasoner adapter (Base, Instruct) the query reasoner starts as a copy of
    the compressor, as in Apple's stage-2 initialisation.
    """
    folder = Path(folder)
    cfg = read_apple_config(folder)
    adapters = _load_pth(folder / ADAPTERS_FILE)
    layers = _load_pth(folder / LAYERS_FILE)
    unknown = sorted(set(adapters) - set(ADAPTER_NAMES))
    if unknown:
        raise CheckpointError(f"{folder / ADAPTERS_FILE}: unknown adapters {unknown}; expected some of {sorted(ADAPTER_NAMES)}")
    absent = [a for a in _REQUIRED if a not in adapters]
    if absent:
        raise CheckpointError(f"{folder / ADAPTERS_FILE} lacks {absent}: a CLaRa release holds a compressor and a generator")
    if backbone is None:
        _check_backbone_reachable(cfg["decoder_model_name"], folder)
    config = clara_config(cfg, backbone, **overrides)
    stage = cfg.get("training_stage", "stage1")
    log.info(
        "loading Apple CLaRa %s (%s) from %s: %d memory tokens, backbone %s",
        STAGES[stage], stage, folder, config.n_mem, config.backbone,
    )
    if not cfg.get("sep", True):
        # Apple's prompts hold <SEP> regardless, but without `sep` its injection strides over them,
        # shifting documents after the first; we fill the memory slots as laid out
        log.warning("%s has sep=false: with several documents Apple's code misplaces their states; this does not", folder)
    try:
        model = cls.from_backbone(config)
    except OSError as e:
        raise CheckpointError(
            f"cannot load the backbone {config.backbone!r} named by {folder}/config.json ({e}); "
            "pass a local copy with --backbone PATH / backbone=PATH"
        ) from e
    rows = new_token_rows(model, layers, bool(cfg.get("different_mem_tokens", True)))
    with torch.no_grad():
        model.mem_rows.copy_(rows.to(model.mem_rows.dtype))
    for apple_name, state in adapters.items():
        load_adapter(model, ADAPTER_NAMES[apple_name], apple_name, state)
    if "query_reasoner_adapter" not in adapters:
        log.info("no query_reasoner_adapter in %s: the query reasoner starts as a copy of the compressor", folder)
        model.init_query_reasoner_from_compressor()
    model.set_trainable(())
    model.eval()
    return model


def convert_apple_checkpoint(
    src: str | Path,
    out: str | Path,
    backbone: str | None = None,
    store_dtype: torch.dtype | None = None,
    **overrides: Any,
) -> "ClaraModel":
    """Load Apple's folder and write it in this project's format (config.json + model.safetensors).

    ``store_dtype`` casts the saved tensors; ``overrides`` set ClaraConfig fields (``dtype``, ``device``).
    """
    from .model import ClaraModel

    src = Path(src)
    model = load_apple_checkpoint(ClaraModel, src, backbone=backbone, **overrides)
    cfg = read_apple_config(src)
    origin = {
        "format": "apple-clara",
        "source": str(src.resolve()),
        "training_stage": cfg.get("training_stage", "stage1"),
        "release": STAGES[cfg.get("training_stage", "stage1")],
        "generation_top_k": cfg.get("generation_top_k"),
        "decoder_model_name": cfg["decoder_model_name"],
    }
    save_checkpoint(model, out, dtype=store_dtype, extra={"converted_from": origin})
    return model


# ---------------------------------------------------------------------- writing Apple's format
def write_apple_checkpoint(
    model: "ClaraModel",
    folder: str | Path,
    training_stage: str = "stage2",
    generation_top_k: int = 5,
    decoder_model_name: str | None = None,
) -> None:
    """Write a ClaraModel in Apple's folder format (for tests, and to run our models in Apple's code).

    Stage ``stage1``/``stage1_2`` folders hold the compressor and generator, ``stage2`` also the
    query reasoner, as Apple saves them. The output head's rows for the new tokens are the
    mean of the base rows, close to what ``resize_token_embeddings`` gives Apple's model.
    """
    if training_stage not in STAGES:
        raise ValueError(f"training_stage must be one of {sorted(STAGES)}, got {training_stage!r}")
    cfg = model.config
    if cfg.lora_alpha != 2 * cfg.lora_r or cfg.lora_target_modules != "all-linear":
        raise ValueError(
            "Apple's loader rebuilds LoRA with alpha = 2 * r on all linear layers; this model has "
            f"alpha={cfg.lora_alpha}, r={cfg.lora_r}, targets={cfg.lora_target_modules!r}"
        )
    if any(cfg.rank(name) != cfg.lora_r for name in ADAPTERS):
        raise ValueError(f"Apple's format has one LoRA rank for all adapters; this model has adapter_r={cfg.adapter_r}")
    if cfg.mem_readout != "states":
        raise ValueError(
            f"Apple's generator reads raw memory states; this model reads them as {cfg.mem_readout!r}, "
            "which its code cannot reproduce"
        )
    if cfg.doc_max_len % cfg.compression_ratio:
        raise ValueError("Apple derives n_mem = doc_max_length // compr_rate; use a doc_max_len divisible by the ratio")
    if cfg.prompt_style != "apple":
        log.warning("this model was built with %r prompts; Apple's code will use its own", cfg.prompt_style)
    names = ["encoder_adapter", "decoder_adapter"] + (["query_reasoner_adapter"] if training_stage == "stage2" else [])
    adapters = {}
    for apple_name in names:
        state = get_peft_model_state_dict(model.peft, adapter_name=ADAPTER_NAMES[apple_name])
        adapters[apple_name] = {k.removeprefix(_PEFT_PREFIX): v.detach().cpu().contiguous() for k, v in state.items()}

    first = model.special.first_new
    layers: dict[str, torch.Tensor] = {}
    emb, head = model.lm.get_input_embeddings().weight, model.lm.get_output_embeddings()
    rows = model.mem_rows.detach().to(emb.dtype)
    for name, param in model.lm.named_parameters():
        if param is emb:
            layers[name] = torch.cat([emb.detach()[:first], rows]).cpu()
        elif head is not None and param is head.weight:
            w = head.weight.detach()[:first]
            layers[name] = torch.cat([w, w.mean(0, keepdim=True).repeat(rows.shape[0], 1)]).cpu()
    apple_cfg = {
        "model_type": "CLaRa",
        "decoder_model_name": decoder_model_name or cfg.backbone,
        "compr_rate": cfg.compression_ratio,
        "doc_max_length": cfg.doc_max_len,
        "training_stage": training_stage,
        "generation_top_k": generation_top_k,
        "lora": True,
        "lora_r": cfg.lora_r,
        "sep": True,
        "different_mem_tokens": True,
        "optimize_mem_tokens": True,
        "compr_model_name": None,
        "training_form": "both_separately",
    }

    def write(tmp: Path) -> None:
        torch.save(adapters, tmp / ADAPTERS_FILE)
        torch.save(layers, tmp / LAYERS_FILE)
        (tmp / "config.json").write_text(json.dumps(apple_cfg, indent=2) + "\n")

    atomic_folder_write(Path(folder), write)
