"""ClaraModel on tiny random backbones of llama, mistral, qwen2 and gemma3 configs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from clara import ClaraModel
from clara.checkpoint import CheckpointError
from clara.index.fingerprint import adapter_hash
from clara.model import ADAPTERS

from .conftest import DOCS, perturb_lora, tiny_config


def test_shapes(arch_model: ClaraModel):
    n_mem, h = arch_model.config.n_mem, arch_model.hidden_size
    with torch.no_grad():
        d = arch_model.compress(DOCS)
        q = arch_model.encode_query(["Where is the Eiffel Tower?", "Who edits Thrasher?"])
    assert d.shape == (3, n_mem, h) and q.shape == (2, n_mem, h)
    s = arch_model.score(q, d)
    assert s.shape == (2, 3)
    assert torch.all(s <= 1 + 1e-5) and torch.all(s >= -1 - 1e-5)
    # the query reasoner and the compressor are different adapters: different states
    with torch.no_grad():
        q_as_doc = arch_model.compress(["Where is the Eiffel Tower?"])
    assert not torch.allclose(q[:1], q_as_doc, atol=1e-4)


def test_padding_invariance(arch_model: ClaraModel):
    """A document compressed alone equals it compressed inside a left-padded batch."""
    with torch.no_grad():
        alone = arch_model.compress([DOCS[2]])
        batch = arch_model.compress(DOCS)
    torch.testing.assert_close(batch[2:3], alone, atol=1e-5, rtol=1e-4)


def test_placeholders_replaced_exactly(arch_model: ClaraModel):
    n_mem, h = arch_model.config.n_mem, arch_model.hidden_size
    dev = arch_model.device
    states = [torch.randn(2, n_mem, h, device=dev), torch.randn(1, n_mem, h, device=dev)]
    prompts = arch_model.answer_prompts(["q one?", "a longer second question here?"], [2, 1])
    ids = arch_model._tokenize_prompts(prompts)
    embeds, mask, input_ids = arch_model._inputs(ids, states)
    plain = arch_model.embed(input_ids)
    slots = torch.isin(input_ids, torch.tensor(arch_model.special.mem, device=dev))
    assert slots.sum().item() == 3 * n_mem
    # memory slots hold exactly the states, in document order ...
    torch.testing.assert_close(embeds[0][slots[0]], states[0].reshape(-1, h))
    torch.testing.assert_close(embeds[1][slots[1]], states[1].reshape(-1, h))
    # ... and every other row is the ordinary token embedding
    torch.testing.assert_close(embeds[~slots], plain[~slots])


def test_generate_batched_and_padding_invariant(arch_model: ClaraModel):
    with torch.no_grad():
        d = arch_model.compress(DOCS)
    qs = ["Where is the tower?", "What does photosynthesis make from light energy in plants?"]
    both = arch_model.generate(qs, [d[1:2], d[[2, 0]]], max_new_tokens=6)
    alone = arch_model.generate(qs[:1], [d[1:2]], max_new_tokens=6)
    assert len(both) == 2 and all(isinstance(a, str) for a in both)
    assert both[0] == alone[0]
    # sampling works and is seeded by torch
    torch.manual_seed(0)
    s1 = arch_model.generate(qs, [d[:1], d[:1]], max_new_tokens=5, do_sample=True, temperature=1.5)
    torch.manual_seed(0)
    s2 = arch_model.generate(qs, [d[:1], d[:1]], max_new_tokens=5, do_sample=True, temperature=1.5)
    assert s1 == s2


def test_generate_zero_documents(arch_model: ClaraModel):
    h, n = arch_model.hidden_size, arch_model.config.n_mem
    out = arch_model.generate(["Who?"], [torch.zeros(0, n, h)], max_new_tokens=3)
    assert len(out) == 1


def test_only_lora_and_memory_rows_trainable(arch_model: ClaraModel):
    trainable = [n for n, p in arch_model.named_parameters() if p.requires_grad]
    assert "mem_rows" in trainable
    assert all(n == "mem_rows" or "lora_" in n for n in trainable)
    for a in ADAPTERS:
        assert any(f".{a}." in n for n in trainable)
    # the backbone is frozen, including the embedding matrix
    assert not arch_model.lm.get_input_embeddings().weight.requires_grad


def test_adapter_switch_keeps_grad_flags(arch_model: ClaraModel):
    before = {n: p.requires_grad for n, p in arch_model.named_parameters()}
    with arch_model.adapter("generator"):
        pass
    with arch_model.adapter(None):
        pass
    assert before == {n: p.requires_grad for n, p in arch_model.named_parameters()}


def test_gradients_reach_compressor_and_generator(arch_model: ClaraModel):
    arch_model.set_trainable(("compressor", "generator"), mem_rows=True)
    states = arch_model.compress(DOCS[:2])
    prompts = arch_model.answer_prompts(["Where?", "Who?"], [1, 1])
    loss = arch_model.generator_loss(prompts, ["Paris", "Jake Phelps"], [states[:1], states[1:]])
    loss.backward()
    grads = {n: p.grad for n, p in arch_model.named_parameters() if p.requires_grad}
    for a in ("compressor", "generator"):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if f".{a}." in n), a
    assert grads["mem_rows"] is not None and grads["mem_rows"].abs().sum() > 0
    assert all(p.grad is None for n, p in arch_model.named_parameters() if ".query_reasoner." in n)


def test_generator_loss_per_example_matches_mean(arch_model: ClaraModel):
    with torch.no_grad():
        states = arch_model.compress(DOCS[:2])
        prompts = arch_model.answer_prompts(["Where?", "Who is it?"], [1, 1])
        per = arch_model.generator_loss(prompts, ["Paris", "Jake"], [states[:1], states[1:]], per_example=True)
        one = arch_model.generator_loss(prompts[:1], ["Paris"], [states[:1]])
    assert per.shape == (2,)
    torch.testing.assert_close(per[0], one, atol=1e-5, rtol=1e-4)


def test_save_load_round_trip(arch_model: ClaraModel, tmp_path):
    arch_model.eval()
    with torch.no_grad():
        d = arch_model.compress(DOCS)
        q = arch_model.encode_query(["Where is the tower?"])
    answers = arch_model.generate(["Where is the tower?"], [d[1:2]], max_new_tokens=5)
    arch_model.save_pretrained(tmp_path / "ckpt")
    loaded = ClaraModel.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(loaded.compress(DOCS), d)
        torch.testing.assert_close(loaded.encode_query(["Where is the tower?"]), q)
    assert loaded.generate(["Where is the tower?"], [d[1:2]], max_new_tokens=5) == answers
    assert not any(p.requires_grad for p in loaded.parameters())


def test_query_reasoner_init_from_compressor(arch_model: ClaraModel):
    arch_model.init_query_reasoner_from_compressor()
    with torch.no_grad():
        short = ["Paris is in France."]  # under query_max_len, so both see the same tokens
        torch.testing.assert_close(arch_model.encode_query(short), arch_model.compress(short))


def test_load_errors(backbones, tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        ClaraModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(CheckpointError, match="not a clara-rag checkpoint"):
        ClaraModel.from_pretrained(tmp_path)
    model = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="different backbone"):
        ClaraModel.from_pretrained(tmp_path / "ckpt", backbone=str(backbones["mistral"]))
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    meta["clara_config"]["compresion_ratio"] = 8  # a hand edit's typo
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"ckpt/config.json: clara_config: unknown ClaraConfig fields: compresion_ratio"):
        ClaraModel.from_pretrained(tmp_path / "ckpt")


def test_bad_inputs(backbones):
    model = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    n, h = model.config.n_mem, model.hidden_size
    with pytest.raises(ValueError, match=r"texts\[1\] is empty"):
        model.compress(["fine", "   "])
    with pytest.raises(TypeError, match=r"texts\[0\] must be a string"):
        model.compress([3])
    with pytest.raises(TypeError, match="single string"):
        model.compress("a document")
    with pytest.raises(ValueError, match="2 prompts"):
        model.generate(["a?", "b?"], [torch.zeros(1, n, h)])
    with pytest.raises(ValueError, match=r"must be a tensor \(k"):
        model.generate(["a?"], [torch.zeros(1, n + 1, h)])
    # a control token typed into a question would become a memory slot with no document behind it
    with pytest.raises(ValueError, match=r"questions\[1\] contains '<MEM0>'"):
        model.generate(["a?", "what is <MEM0>?"], [torch.zeros(1, n, h)] * 2)


def test_control_tokens_in_documents_are_read_as_text(backbones):
    model = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    from clara import tokens

    (row,), _ = tokens.compressor_ids(model.tokenizer, ["a <SEP> b <MEM0> c"], 64, model.special)
    body = row[1:-(model.config.n_mem + 1)]  # between <ENC> (bos) and eos <MEM..>
    assert model.special.sep not in body and not set(model.special.mem) & set(body)
    assert model.tokenizer.decode(body).replace(" ", "").endswith("a<SEP>b<MEM0>c")
    states = model.compress(["a <SEP> b <MEM0> c"])  # compresses like any text
    assert states.shape == (1, model.config.n_mem, model.hidden_size) and torch.isfinite(states).all()


def test_backbone_special_tokens_in_questions_are_read_as_text(backbones):
    model = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    eos = model.tokenizer.eos_token_id
    plain, special = "What does x mean?", f"What does {model.tokenizer.eos_token} mean?"
    prompts = model.answer_prompts([plain, special], [1, 1])
    ids_plain, ids_special = model._tokenize_prompts(prompts, [plain, special])
    # the eos typed in the question is text: the prompt holds only the template's own eos tokens
    assert ids_special.count(eos) == ids_plain.count(eos)
    assert model._tokenize_prompts(prompts[:1])[0] == ids_plain  # other prompts: tokenized as before
    n, h = model.config.n_mem, model.hidden_size
    assert len(model.generate([special], [torch.zeros(1, n, h)], max_new_tokens=2)) == 1


def test_empty_batches_compress_to_empty_tensors(backbones):
    model = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    assert model.compress([]).shape == (0, model.config.n_mem, model.hidden_size)
    q = model.encode_query(["a question?"])
    assert model.score(q, model.compress([])).shape == (1, 0)


def test_long_documents_truncated_and_logged(backbones, caplog):
    model = ClaraModel.from_backbone(tiny_config(backbones["qwen2"]))
    long_doc = " ".join(["word"] * 500)
    with caplog.at_level("INFO", logger="clara.model"), torch.no_grad():
        a = model.compress([long_doc])
        b = model.compress([" ".join(["word"] * 400)])
    assert "1 of 1 texts were longer than 32 tokens" in caplog.text
    torch.testing.assert_close(a, b)  # both cut to the same first 32 tokens
    infos = [r for r in caplog.records if "were truncated" in r.getMessage() and r.levelname == "INFO"]
    assert len(infos) == 1  # said once at INFO; training steps would otherwise repeat it every batch


def test_system_role_fallback(backbones):
    model = ClaraModel.from_backbone(tiny_config(backbones["gemma3"]))
    prompt = model.answer_prompts(["Who?"], [1])[0]
    assert "System role" not in prompt and "as briefly as possible" in prompt
    assert prompt.startswith("<start_of_turn>user")


def test_bfloat16(backbones):
    model = ClaraModel.from_backbone(tiny_config(backbones["mistral"], dtype="bfloat16"))
    perturb_lora(model)
    with torch.no_grad():
        d = model.compress(DOCS[:2])
    assert d.dtype == torch.bfloat16
    assert len(model.generate(["Who?"], [d[:1]], max_new_tokens=3)) == 1


def test_soft_token_readout(arch_model: ClaraModel):
    """mem_readout="soft_tokens": each state becomes the input embedding expected under the model's
    own next-token distribution (Gemma: soft-capped logits, sqrt(H)-scaled embeddings), and the
    generator loss still reaches the compressor through it."""
    arch_model.config.mem_readout = "soft_tokens"
    emb = arch_model.lm.get_input_embeddings()
    with torch.no_grad():
        states = arch_model.compress(DOCS[:2]).flatten(0, 1)  # (2 * n_mem, H)
        logits = arch_model.lm.get_output_embeddings()(states).float()
        cap = getattr(arch_model.lm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        scale = getattr(emb, "embed_scale", None)
        expected = logits.softmax(-1) @ emb.weight * (float(scale) if scale is not None else 1.0)
        torch.testing.assert_close(arch_model.read_memory(states), expected, atol=1e-5, rtol=1e-4)
        # a state that points along one token's output row reads back (almost) as that token's embedding
        head = arch_model.lm.get_output_embeddings().weight
        t = int(head.norm(dim=1).argmax())
        one = arch_model.read_memory(1e4 * head[t : t + 1])
        assert torch.nn.functional.cosine_similarity(one, emb.weight[t : t + 1]).item() > 0.99
    arch_model.set_trainable(("compressor", "generator"), mem_rows=True)
    states = arch_model.compress(DOCS[:1])
    loss = arch_model.generator_loss(arch_model.answer_prompts(["Where?"], [1]), ["Paris"], [states])
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in arch_model.named_parameters() if ".compressor." in n)


def test_top_token_readout(arch_model: ClaraModel, tmp_path):
    """mem_readout="top_tokens": each state becomes r rows, the input embeddings of its r most
    likely tokens (most likely first, slot-major; Gemma's sqrt(H) scale included); prompts carry
    r placeholders per slot; pre-read rows give the same inputs; the generator loss reaches the
    compressor (straight-through); the setting survives a save/load."""
    r = 3
    arch_model.config.mem_readout, arch_model.config.readout_tokens = "top_tokens", r
    n_mem, h = arch_model.config.n_mem, arch_model.hidden_size
    assert arch_model.config.n_read == n_mem * r
    emb = arch_model.lm.get_input_embeddings()
    with torch.no_grad():
        states = arch_model.compress(DOCS[:2])  # (2, n_mem, H)
        ids = arch_model.logits(states).topk(r, dim=-1).indices  # (2, n_mem, r)
        rows = arch_model.read_rows(states)  # (2, n_mem * r, H)
        assert rows.shape == (2, n_mem * r, h)
        torch.testing.assert_close(rows, emb(ids.reshape(2, -1)))  # emb(): HF's own scaling
        prompt = arch_model._tokenize_prompts(arch_model.answer_prompts(["Who?"], [2]))
        slots = torch.isin(torch.tensor(prompt[0]), torch.tensor(arch_model.special.mem))
        assert int(slots.sum()) == 2 * n_mem * r
        from_states, _, _ = arch_model._inputs(prompt, [states])
        from_rows, _, _ = arch_model._inputs(prompt, [rows.reshape(2, n_mem * r, h)], pre_read=True)
        torch.testing.assert_close(from_rows, from_states)
        with pytest.raises(ValueError, match="must be a tensor"):  # pre-read rows are n_read per document
            arch_model.generate(["Who?"], [states], max_new_tokens=2, pre_read=True)
        assert len(arch_model.generate(["Who?"], [states], max_new_tokens=2)) == 1
    arch_model.set_trainable(("compressor", "generator"), mem_rows=True)
    states = arch_model.compress(DOCS[:1])
    loss = arch_model.generator_loss(arch_model.answer_prompts(["Where?"], [1]), ["Paris"], [states])
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in arch_model.named_parameters() if ".compressor." in n)
    arch_model.save_pretrained(tmp_path / "top")
    again = ClaraModel.from_pretrained(tmp_path / "top")
    assert (again.config.mem_readout, again.config.readout_tokens) == ("top_tokens", r)


def test_sub_span_readout(arch_model: ClaraModel, tmp_path):
    """mem_readout="sub_spans": each state is split into r states by low-rank maps and each is
    read as a soft token. Fresh maps read every slot's soft token r times (so a soft_tokens
    checkpoint continues where it was); trained maps give r different rows; the generator loss
    reaches the compressor and the maps; the maps survive a save/load; a checkpoint with maps
    is refused by a model that would ignore them."""
    r = 4
    arch_model.save_pretrained(tmp_path / "soft_states")  # the fixture's readout: raw states
    base = ClaraModel.from_pretrained(tmp_path / "soft_states", mem_readout="soft_tokens")
    sub = ClaraModel.from_pretrained(tmp_path / "soft_states", mem_readout="sub_spans", readout_tokens=r)
    n_mem, h = sub.config.n_mem, sub.hidden_size
    assert (sub.config.n_read, sub.config.n_spans) == (n_mem * r, n_mem * r)
    with torch.no_grad():
        states = sub.compress(DOCS[:2])  # (2, n_mem, H)
        rows = sub.read_rows(states)  # (2, n_mem * r, H), slot-major
        torch.testing.assert_close(rows.view(2, n_mem, r, h), base.read_rows(states).unsqueeze(2).expand(2, n_mem, r, h))
        sub.mem_split.up.normal_(0, 0.05)
        split = sub.anchor_states(states).view(2, n_mem, r, h)  # the states each row is read from
        assert (split[:, :, 0] - split[:, :, 1]).norm() > 0.01 * split[:, :, 0].norm()
        assert not torch.allclose(sub.read_rows(states), rows)
        prompt = sub._tokenize_prompts(sub.answer_prompts(["Who?"], [2]))
        assert int(torch.isin(torch.tensor(prompt[0]), torch.tensor(sub.special.mem)).sum()) == 2 * n_mem * r
        assert len(sub.generate(["Who?"], [states], max_new_tokens=2)) == 1
    sub.set_trainable(("compressor", "generator"), mem_rows=True)
    loss = sub.generator_loss(sub.answer_prompts(["Where?"], [1]), ["Paris"], [sub.compress(DOCS[:1])])
    loss.backward()
    grads = {n: p.grad for n, p in sub.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(".compressor." in n for n in grads) and {"mem_split.down", "mem_split.up"} <= set(grads)
    sub.set_trainable(("compressor",))
    assert not sub.mem_split.up.requires_grad  # the maps train with the generator
    sub.save_pretrained(tmp_path / "sub")
    again = ClaraModel.from_pretrained(tmp_path / "sub")
    assert (again.config.mem_readout, again.config.readout_tokens) == ("sub_spans", r)
    torch.testing.assert_close(again.mem_split.up, sub.mem_split.up)
    torch.testing.assert_close(again.mem_split.down, sub.mem_split.down)
    with pytest.raises(CheckpointError, match="mem_split"):
        ClaraModel.from_pretrained(tmp_path / "sub", mem_readout="soft_tokens", readout_tokens=1)
    with pytest.raises(CheckpointError, match="mem_split shapes"):
        ClaraModel.from_pretrained(tmp_path / "sub", readout_tokens=2)


def test_readout_tokens_is_checked():
    from clara import ClaraConfig

    with pytest.raises(ValueError, match="readout_tokens must be >= 1"):
        ClaraConfig(mem_readout="top_tokens", readout_tokens=0)
    with pytest.raises(ValueError, match="needs mem_readout in"):
        ClaraConfig(mem_readout="soft_tokens", readout_tokens=4)
    with pytest.raises(ValueError, match="more than doc_max_len=16"):
        ClaraConfig(mem_readout="sub_spans", readout_tokens=4, compression_ratio=2, doc_max_len=16)
    with pytest.raises(ValueError, match="apple"):
        ClaraConfig(mem_readout="top_tokens", readout_tokens=2, prompt_style="apple")
    assert ClaraConfig(mem_readout="top_tokens", readout_tokens=4, doc_max_len=128).n_read == 32


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_linear_readout(backbones, tmp_path, arch):
    """mem_readout="soft_tokens_linear": the soft token plus a learned map of the unit state.
    The map starts at zero (a soft_tokens checkpoint continues unchanged), trains with the
    generator, survives a save/load, and a checkpoint that has one refuses a readout that
    would drop it."""
    torch.manual_seed(0)
    soft = ClaraModel.from_backbone(tiny_config(backbones[arch], mem_readout="soft_tokens"))
    perturb_lora(soft)
    soft.save_pretrained(tmp_path / "soft")
    lin = ClaraModel.from_pretrained(tmp_path / "soft", mem_readout="soft_tokens_linear")
    with torch.no_grad():
        states = soft.compress(DOCS[:2]).flatten(0, 1)  # (2 * n_mem, H)
        torch.testing.assert_close(lin.read_memory(states), soft.read_memory(states))
        w = 0.01 * torch.randn_like(lin.mem_proj.weight)
        lin.mem_proj.weight.copy_(w)
        torch.testing.assert_close(lin.read_memory(states), soft.read_memory(states) + F.normalize(states, dim=-1) @ w.T)
    lin.set_trainable(("compressor",), mem_rows=True)
    assert not lin.mem_proj.weight.requires_grad  # the compressor alone does not move the generator's side
    lin.set_trainable(("generator",))
    states = lin.compress(DOCS[:1])
    lin.generator_loss(lin.answer_prompts(["Where?"], [1]), ["Paris"], [states]).backward()
    assert lin.mem_proj.weight.grad is not None and lin.mem_proj.weight.grad.abs().sum() > 0

    lin.save_pretrained(tmp_path / "lin")
    again = ClaraModel.from_pretrained(tmp_path / "lin")
    torch.testing.assert_close(again.mem_proj.weight, lin.mem_proj.weight)
    with pytest.raises(CheckpointError, match="mem_proj"):
        ClaraModel.from_pretrained(tmp_path / "lin", mem_readout="soft_tokens")
    # an index's readout rows depend on the map, so its fingerprint does too
    before = adapter_hash(again)
    with torch.no_grad():
        again.mem_proj.weight.add_(1.0)
    assert adapter_hash(again) != before


def test_checkpoint_widened_to_lower_ratio(backbones, tmp_path):
    """A checkpoint continues at a lower compression ratio (same doc_max_len): each saved memory
    row is repeated so new slot j starts as the saved slot whose span contains span j; the
    adapters load unchanged. A count that is not a multiple is refused, naming the file."""
    torch.manual_seed(0)
    model = ClaraModel.from_backbone(tiny_config(backbones["llama"]))  # ratio 8: 4 memory tokens
    perturb_lora(model)
    model.save_pretrained(tmp_path / "ckpt")
    wide = ClaraModel.from_pretrained(tmp_path / "ckpt", compression_ratio=4)  # 8 memory tokens
    assert wide.config.n_mem == 8 and wide.mem_rows.shape[0] == 8 + 3
    n = model.config.n_mem
    torch.testing.assert_close(wide.mem_rows[: 2 * n], model.mem_rows[:n].repeat_interleave(2, dim=0))
    torch.testing.assert_close(wide.mem_rows[2 * n :], model.mem_rows[n:])
    for a, b in zip(wide._lora_params["generator"], model._lora_params["generator"], strict=True):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        assert wide.compress(DOCS[:2]).shape == (2, 8, wide.hidden_size)
    with pytest.raises(CheckpointError, match=r"model.safetensors.*multiple of 4"):
        ClaraModel.from_pretrained(tmp_path / "ckpt", compression_ratio=5)  # 6 memory tokens


def test_eos_is_part_of_the_backbone_identity(backbones, tmp_path):
    """Documents and targets end with eos: a backbone folder whose tokenizer names another eos (as
    transformers 5.17's GGUF conversion of SmolLM2 did) is refused, and the conversion repairs it."""
    import json
    import shutil

    from transformers import AutoConfig, AutoTokenizer

    from clara.backbone import align_special_tokens

    model = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    model.save_pretrained(tmp_path / "ckpt")
    other = tmp_path / "llama_other_eos"
    shutil.copytree(backbones["llama"], other)
    tok_cfg = json.loads((other / "tokenizer_config.json").read_text())
    tok_cfg["eos_token"] = "<unk>"
    (other / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    with pytest.raises(CheckpointError, match="eos_token_id: checkpoint has"):
        ClaraModel.from_pretrained(tmp_path / "ckpt", backbone=str(other))

    tokenizer = AutoTokenizer.from_pretrained(other)
    config = AutoConfig.from_pretrained(other)
    config.eos_token_id = model.tokenizer.eos_token_id
    assert tokenizer.eos_token_id != config.eos_token_id
    align_special_tokens(tokenizer, config)
    assert tokenizer.eos_token_id == config.eos_token_id and tokenizer.eos_token == model.tokenizer.eos_token


def test_adapter_rank_grows_on_load_as_the_same_function(backbones, tmp_path):
    """adapter_r gives single adapters their own LoRA rank (the query reasoner follows the
    compressor). A checkpoint's adapters load into higher ranks as the same functions (extra
    B columns zero, same scale), round-trip at those ranks, and refuse to shrink, naming the file."""
    torch.manual_seed(0)
    model = ClaraModel.from_backbone(tiny_config(backbones["qwen2"]))  # lora_r=4
    perturb_lora(model)
    model.eval()
    model.save_pretrained(tmp_path / "r4")
    question = ["Where is the tower?"]
    with torch.no_grad():
        states = model.compress(DOCS)
        query = model.encode_query(question)
    answer = model.generate(question, [states[:2]], max_new_tokens=5)
    grown = ClaraModel.from_pretrained(tmp_path / "r4", adapter_r={"compressor": 12, "generator": 8})
    cfg = grown.config
    assert (cfg.rank("compressor"), cfg.rank("query_reasoner"), cfg.rank("generator")) == (12, 12, 8)
    ranks = {name: {min(p.shape) for p in grown.adapter_parameters(name)} for name in ADAPTERS}
    assert ranks == {"compressor": {12}, "query_reasoner": {12}, "generator": {8}}
    with torch.no_grad():
        torch.testing.assert_close(grown.compress(DOCS), states)
        torch.testing.assert_close(grown.encode_query(question), query)
    assert grown.generate(question, [states[:2]], max_new_tokens=5) == answer
    with torch.no_grad():  # the new directions are live: moving a grown B column changes the compressor
        for p in grown.adapter_parameters("compressor"):
            if p.shape[-1] == 12:  # lora_B: (out, 12)
                p[:, 4:] += 0.05
        assert not torch.allclose(grown.compress(DOCS), states)
    grown.save_pretrained(tmp_path / "r12")
    again = ClaraModel.from_pretrained(tmp_path / "r12")
    assert again.config.adapter_r == {"compressor": 12, "generator": 8}
    with torch.no_grad():
        torch.testing.assert_close(again.compress(DOCS), grown.compress(DOCS))
    with pytest.raises(CheckpointError, match=r"r12.*model.safetensors.*never shrink"):
        ClaraModel.from_pretrained(tmp_path / "r12", adapter_r={})
    narrow_qr = ClaraModel.from_pretrained(tmp_path / "r12", adapter_r={"compressor": 12, "generator": 8,
                                                                         "query_reasoner": 12})
    narrow_qr.init_query_reasoner_from_compressor()  # same rank: fine
    with pytest.raises(ValueError, match="adapter_r: unknown adapter 'reader'"):
        tiny_config(backbones["qwen2"], adapter_r={"reader": 8})
    with pytest.raises(ValueError, match=r"adapter_r.generator must be an integer >= 1"):
        tiny_config(backbones["qwen2"], adapter_r={"generator": 0})
    mixed = ClaraModel.from_backbone(tiny_config(backbones["qwen2"], adapter_r={"query_reasoner": 8}))
    with pytest.raises(ValueError, match=r"query reasoner \(rank 8\).*compressor's rank \(4\)"):
        mixed.init_query_reasoner_from_compressor()


def test_query_reasoner_left_as_the_compressors_copy_is_stored_once(backbones, tmp_path):
    """A query reasoner equal to the compressor (stage 3 with train_query_reasoner=false) is saved as
    a reference (shared_adapters, format version 2) and loads as the same weights; a distinct one
    is saved in full (format version 1, what older clara-rag reads)."""
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    perturb_lora(model)
    model.save_pretrained(tmp_path / "own")
    meta = json.loads((tmp_path / "own" / "config.json").read_text())
    assert meta["shared_adapters"] == {} and meta["format_version"] == 1
    full = load_file(str(tmp_path / "own" / "model.safetensors"))
    model.init_query_reasoner_from_compressor()
    model.save_pretrained(tmp_path / "copy")
    meta = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert meta["shared_adapters"] == {"query_reasoner": "compressor"} and meta["format_version"] == 2
    stored = load_file(str(tmp_path / "copy" / "model.safetensors"))
    assert not any(k.startswith("query_reasoner/") for k in stored)
    assert len(stored) == len(full) - sum(k.startswith("query_reasoner/") for k in full)
    loaded = ClaraModel.from_pretrained(tmp_path / "copy")
    for a, b in zip(loaded.adapter_parameters("query_reasoner"), model.adapter_parameters("query_reasoner"), strict=True):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        question = ["Where is the tower?"]
        torch.testing.assert_close(loaded.encode_query(question), model.encode_query(question))
    # the copy is read from whichever stored adapter config.json names
    meta["shared_adapters"] = {"query_reasoner": "generator"}
    (tmp_path / "copy" / "config.json").write_text(json.dumps(meta))
    loaded = ClaraModel.from_pretrained(tmp_path / "copy")  # a valid mapping: the generator's weights
    for a, b in zip(loaded.adapter_parameters("query_reasoner"), model.adapter_parameters("generator"), strict=True):
        torch.testing.assert_close(a, b)
    # an unknown source, or a copy whose own weights are stored too, is refused, naming the file
    meta["shared_adapters"] = {"query_reasoner": "reader"}
    (tmp_path / "copy" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"copy.*config.json: shared_adapters"):
        ClaraModel.from_pretrained(tmp_path / "copy")
    meta["shared_adapters"] = {"compressor": "generator"}
    (tmp_path / "copy" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"holds weights for compressor"):
        ClaraModel.from_pretrained(tmp_path / "copy")
