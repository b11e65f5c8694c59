"""Logit lens over memory states, and the ``clara inspect`` commands."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from clara import ClaraModel, tokens
from clara.cli import app
from clara.inspect import SlotTokens, inspect_texts, logit_lens, surfaced_words

from .conftest import DOCS, perturb_lora, tiny_config


@pytest.fixture(scope="module")
def model(backbones) -> ClaraModel:
    torch.manual_seed(2)
    m = ClaraModel.from_backbone(tiny_config(backbones["mistral"]))
    perturb_lora(m)
    return m.eval()


def test_lens_is_the_next_token_distribution_at_memory_positions(model: ClaraModel):
    """A memory state's lens = what the model itself would predict after that memory token."""
    lens = inspect_texts(model, DOCS[:2], "doc", top_k=3)
    ids, _ = tokens.compressor_ids(model.tokenizer, DOCS[:2], model.config.doc_max_len, model.special)
    n = model.config.n_mem
    for text, row in zip(lens, ids):
        input_ids = torch.tensor([row])
        with torch.no_grad(), model.adapter("compressor"):
            logits = model.lm(inputs_embeds=model.embed(input_ids)).logits[0, -n:]  # (n_mem, V)
        probs = logits.float().softmax(-1)
        assert len(text) == n
        for slot, p in zip(text, probs):
            top = p.topk(3)
            assert slot.tokens == [model.tokenizer.decode([i]) for i in top.indices.tolist()]
            assert slot.probs == pytest.approx(top.values.tolist(), abs=1e-5)
            assert slot.probs == sorted(slot.probs, reverse=True)


def test_query_and_doc_lenses_use_their_adapters(model: ClaraModel):
    text = ["Where is the Eiffel Tower?"]
    with torch.no_grad():
        q_states = model.encode_query(text)
    assert logit_lens(model, q_states, 4) == inspect_texts(model, text, "query", 4)
    # the compressor reads the same text into other states, hence other probabilities
    assert [s.probs for s in inspect_texts(model, text, "doc", 4)[0]] != [s.probs for s in logit_lens(model, q_states, 4)[0]]
    with pytest.raises(ValueError, match="kind"):
        inspect_texts(model, text, "title")
    with pytest.raises(ValueError, match="top_k"):
        logit_lens(model, q_states, 0)
    with pytest.raises(ValueError, match="states must be"):
        logit_lens(model, q_states[0], 3)


def test_surfaced_words():
    slots = [SlotTokens(0, [" Paris", "ing", "12", " NFL"], [0.4, 0.3, 0.2, 0.1]), SlotTokens(1, ["Ok", "lahoma"], [0.5, 0.5])]
    assert surfaced_words(slots) == {"paris", "ing", "nfl", "lahoma"}


def test_inspect_cli(model: ClaraModel, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", "query", "Where is the Eiffel Tower?", "--checkpoint", str(tmp_path / "ckpt"),
                                 "--json", "-k", "3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["kind"] == "query" and len(out["slots"]) == model.config.n_mem
    assert all(len(s["tokens"]) == 3 for s in out["slots"])
    want = inspect_texts(model, ["Where is the Eiffel Tower?"], "query", 3)[0]
    assert [s["tokens"] for s in out["slots"]] == [s.tokens for s in want]
    # --model / -m name the checkpoint too, as in `clara ask` and `clara index`
    result = runner.invoke(app, ["inspect", "doc", DOCS[1], "-m", str(tmp_path / "ckpt"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "logit lens of the doc memory states" in result.output and "top 5" in result.output
