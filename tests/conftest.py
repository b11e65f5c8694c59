"""Shared fixtures: tiny random backbones of several architectures with a tiny real tokenizer.

Each backbone is a real HF folder (config, safetensors weights, tokenizer) written once
per test session, so the same loading code serves tests and users.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from clara import ClaraConfig, ClaraModel

import os

SHARED = Path(os.environ.get("CLARA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
#: CLARA_TEST_DEVICE=cuda runs the tiny-model suite on a GPU (bf16/fp32 correctness checks)
TEST_DEVICE = os.environ.get("CLARA_TEST_DEVICE", "cpu")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Like Gemma's and Mistral-v0.2's templates: a system turn is an error
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)

ARCHS = {
    "llama": dict(model_type="llama", tie_word_embeddings=True),
    "mistral": dict(model_type="mistral", sliding_window=None),
    "qwen2": dict(model_type="qwen2", tie_word_embeddings=True),
    "gemma3": dict(model_type="gemma3_text", head_dim=16, sliding_window=16, query_pre_attn_scalar=16,
                   layer_types=["sliding_attention", "full_attention"]),
}


def _train_tokenizer() -> Tokenizer:
    lines = []
    with open(SHARED / "scp" / "clara_pretrain_qa_1k.jsonl") as f:
        for i, line in enumerate(f):
            if i >= 200:
                break
            row = json.loads(line)
            lines += row["docs"] + row["question"] + row["answers"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]
    tok.train_from_iterator(
        lines, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                   initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    return tok


@pytest.fixture(scope="session")
def tiny_tokenizer_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    _train_tokenizer().save(str(path))
    return path


def make_backbone(root: Path, arch: str, tokenizer_file: Path) -> Path:
    """Write a tiny random HF model of ``arch`` with the tiny tokenizer to ``root/arch``."""
    from transformers import AutoConfig

    out = root / arch
    if (out / "config.json").exists():
        return out
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file), bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    tok.chat_template = NO_SYSTEM if arch == "gemma3" else CHATML
    spec = dict(ARCHS[arch])
    model_type = spec.pop("model_type")
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **spec,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def backbones(tmp_path_factory, tiny_tokenizer_file) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("backbones")
    return {arch: make_backbone(root, arch, tiny_tokenizer_file) for arch in ARCHS}


def tiny_config(backbone: Path, **kw) -> ClaraConfig:
    base = dict(backbone=str(backbone), compression_ratio=8, doc_max_len=32, query_max_len=16,
                lora_r=4, lora_alpha=8, lora_dropout=0.0, device=TEST_DEVICE)
    base.update(kw)
    return ClaraConfig(**base)


@pytest.fixture(params=list(ARCHS))
def arch_model(request, backbones) -> ClaraModel:
    """A fresh tiny ClaraModel per architecture, with non-zero LoRA B so adapters differ."""
    torch.manual_seed(1)
    model = ClaraModel.from_backbone(tiny_config(backbones[request.param]))
    perturb_lora(model)
    return model


@pytest.fixture(scope="module")
def model(backbones) -> ClaraModel:
    """A tiny llama ClaraModel with distinct adapters, in eval mode, shared by a test module."""
    torch.manual_seed(1)
    m = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    perturb_lora(m)
    return m.eval()


def perturb_lora(model: ClaraModel, scale: float = 0.05) -> None:
    """LoRA B starts at zero (adapters = identity); give each adapter its own non-zero B."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale)


DOCS = [
    "Thrasher editor-in-chief Jake Phelps discussed the decision in his office in San Francisco.",
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]
