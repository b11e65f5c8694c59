"""Index builds fold the compressor LoRA into the weights (ClaraModel.merged): same states, weights restored."""

from __future__ import annotations

import pytest
import torch

from clara import ClaraModel
from clara.index import MemoryIndex, add_documents, open_or_create
from clara.model import MERGE_MIN_TEXTS

from .conftest import DOCS

TEXTS = DOCS * 6  # 18 texts: at least MERGE_MIN_TEXTS, so compress merges
QUESTIONS = ["Who edited Thrasher?", "Where is the Eiffel Tower?"]


def _snapshot(model: ClaraModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@torch.no_grad()
def _other_adapters(model: ClaraModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Outputs that depend on the query reasoner, the generator and the plain backbone."""
    q = model._encode(QUESTIONS, "query_reasoner", model.config.query_max_len)[0]
    states = model._encode(DOCS[:2], "compressor", model.config.doc_max_len)[0]
    prompts = model.answer_prompts(QUESTIONS, [1, 1])
    loss = model.generator_loss(prompts, ["Jake Phelps", "Paris"], [states[:1], states[1:]], per_example=True)
    with model.adapter(None):
        plain = model.lm(input_ids=torch.tensor([[5, 6, 7, 8]], device=model.device)).logits
    return q, loss, plain


def test_merged_gives_unmerged_states_and_restores_every_weight(arch_model):
    model = arch_model.eval()
    assert MERGE_MIN_TEXTS <= len(TEXTS)
    before = _snapshot(model)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    others = _other_adapters(model)
    with torch.no_grad():
        want = model._encode(TEXTS, "compressor", model.config.doc_max_len)[0]  # unmerged LoRA branches
        with model.merged("compressor"):
            inside = model._encode(TEXTS, "compressor", model.config.doc_max_len)[0]
            nested = model.compress(TEXTS, batch_size=len(TEXTS))  # nested merge of the same adapter: a no-op
        got = model.compress(TEXTS, batch_size=len(TEXTS))  # merges by itself (no grad, enough texts)
    for states in (inside, nested, got):
        torch.testing.assert_close(states, want, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # the adapter matters: another one gives other states
        other = model._encode(TEXTS, "query_reasoner", model.config.doc_max_len)[0]
    assert (other - want).abs().max() > 1e-2
    # the original tensors are put back: bit for bit, not W + d - d
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
        assert p.requires_grad == flags[name], name
    for a, b in zip(others, _other_adapters(model)):
        assert torch.equal(a, b)


def test_merged_restores_weights_after_an_error_and_refuses_misuse(model):
    before = _snapshot(model)
    with torch.no_grad():
        with pytest.raises(KeyError):
            with model.merged("compressor"):
                raise KeyError("boom")
        with model.merged("compressor"):
            with pytest.raises(RuntimeError, match="cannot be merged inside"):
                with model.merged("generator"):
                    pass
            for other in ("generator", None):  # LoRA branches on over merged weights would count twice
                with pytest.raises(RuntimeError, match="cannot run inside merged"):
                    with model.adapter(other):
                        pass
        with pytest.raises(ValueError, match="unknown adapter"):
            with model.merged("nope"):
                pass
    with pytest.raises(RuntimeError, match="inference only"):
        with model.merged("compressor"):
            pass
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_compress_under_grad_does_not_merge_and_keeps_gradients(model):
    model.set_trainable(["compressor"])
    try:
        states = model.compress(TEXTS, batch_size=len(TEXTS))
        states.sum().backward()
        grads = [p.grad for n, p in model.named_parameters() if ".compressor." in n and "lora_B" in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    finally:
        model.zero_grad(set_to_none=True)
        model.set_trainable([])


def test_index_build_stores_the_unmerged_states(model, tmp_path):
    texts = [f"{t} (copy {i})" for i, t in enumerate(TEXTS)]
    from clara.data.corpus import Document

    docs = [Document(id=str(i), text=t) for i, t in enumerate(texts)]
    index = open_or_create(model, tmp_path / "idx")
    add_documents(model, index, docs, batch_size=4, progress=False)
    with torch.no_grad():
        want = torch.stack([model._encode([t], "compressor", model.config.doc_max_len)[0][0] for t in texts])
    stored = MemoryIndex.open(tmp_path / "idx").states(list(range(len(texts))))
    torch.testing.assert_close(stored, want.half().float(), atol=2e-3, rtol=2e-3)


def _ask_path(model: ClaraModel) -> tuple[torch.Tensor, list[str]]:
    """One question through the query reasoner and one greedy answer through the generator."""
    with torch.no_grad():
        q = model.encode_query(QUESTIONS[:1])
        states = model._encode(DOCS[:2], "compressor", model.config.doc_max_len)[0]
    return q, model.generate(QUESTIONS[:1], [states], max_new_tokens=6)


def test_premerge_answers_one_question_merged_and_like_unmerged(arch_model, monkeypatch):
    model = arch_model.eval()
    before = _snapshot(model)
    want_q, want_answer = _ask_path(model)  # one question: no merge without premerge
    model.premerge("query_reasoner", "generator")
    assert set(model._premerged) == {"query_reasoner", "generator"}

    def no_merging(name):  # a pre-merged adapter must not be merged again per call
        raise AssertionError(f"merged {name} again")

    monkeypatch.setattr(model, "_merged_weights", no_merging)
    seen = []
    real_merged = model.merged
    monkeypatch.setattr(model, "merged", lambda name: seen.append(name) or real_merged(name))
    got_q, got_answer = _ask_path(model)
    assert seen == ["query_reasoner", "generator"]
    assert model._prefix is not None  # the prompt head's key/value cache was used
    torch.testing.assert_close(got_q, want_q, atol=1e-4, rtol=1e-4)
    assert got_answer == want_answer
    for name, p in model.named_parameters():  # originals back after each call
        assert torch.equal(p, before[name]), name
    model.premerge()
    assert model._premerged == {}


def test_premerged_copy_follows_changed_adapter_weights(model):
    model.premerge("query_reasoner")
    try:
        with torch.no_grad():
            first = model.encode_query(QUESTIONS[:1])
            lora_b = next(p for n, p in model.named_parameters() if ".query_reasoner." in n and "lora_B" in n)
            lora_b.add_(0.5)  # an optimiser step or a load changes the adapter in place
            want = model._encode(QUESTIONS[:1], "query_reasoner", model.config.query_max_len)[0]  # unmerged
            got = model.encode_query(QUESTIONS[:1])
            lora_b.sub_(0.5)
        assert (want - first).abs().max() > 1e-3  # the change matters
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # and the pre-merged copy followed it
    finally:
        model.premerge()
    with pytest.raises(ValueError, match="unknown adapter"):
        model.premerge("nope")


def test_clara_rag_premerges_small_backbones_unless_told_not_to(model, tmp_path):
    from clara import ClaraRAG
    from clara.data.corpus import Document

    index = open_or_create(model, tmp_path / "idx")
    add_documents(model, index, [Document(id=str(i), text=t) for i, t in enumerate(DOCS)], progress=False)
    try:
        ClaraRAG(model, index, premerge=False)
        assert model._premerged == {}
        rag = ClaraRAG(model, index)
        assert set(model._premerged) == {"query_reasoner", "generator"}
        answer = rag.ask(QUESTIONS[0], max_new_tokens=3)
        assert len(answer.sources) == min(5, len(DOCS))
    finally:
        model.premerge()


def test_prompt_head_cache_is_reused_and_follows_the_generator(arch_model):
    model = arch_model.eval()
    with torch.no_grad():
        states = model._encode(DOCS[:2], "compressor", model.config.doc_max_len)[0]
    asks = [(QUESTIONS[0], states), (QUESTIONS[1], states[:1])]  # another question and k: the same head
    want = [model.generate([q], [s], max_new_tokens=5)[0] for q, s in asks]  # not pre-merged: no cache
    assert model._prefix is None
    model.premerge("generator")
    got = [model.generate([asks[0][0]], [asks[0][1]], max_new_tokens=5)[0]]
    cache = model._prefix[1]
    got.append(model.generate([asks[1][0]], [asks[1][1]], max_new_tokens=5)[0])
    assert model._prefix[1] is cache  # reused, not rebuilt
    assert got == want
    # exact check: the cached head plus the rest of the prompt gives the full prompt's next-token logits
    prompt = model.answer_prompts([asks[0][0]], [2])
    embeds, _, ids = model._inputs(model._tokenize_prompts(prompt), [states])
    with torch.no_grad(), model.merged("generator"):
        full = model.lm(inputs_embeds=embeds).logits[:, -1]
        head_cache = model._prefix_cache("generator", ids, embeds)
        head = head_cache.get_seq_length()
        rest = model.lm(inputs_embeds=embeds[:, head:], cache=head_cache).logits[:, -1]
    assert 8 <= head < ids.shape[1] - 2 * model.config.n_mem
    torch.testing.assert_close(rest, full, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # a changed generator (training, a reload) must not read the old cache
        lora_b = next(p for n, p in model.named_parameters() if ".generator." in n and "lora_B" in n)
        lora_b.add_(0.5)
    changed = model.generate([QUESTIONS[0]], [states], max_new_tokens=5)[0]
    assert model._prefix[1] is not cache
    model.premerge()
    assert changed == model.generate([QUESTIONS[0]], [states], max_new_tokens=5)[0]  # unmerged, uncached
    pair = model.generate(QUESTIONS, [states, states], max_new_tokens=5)  # a batch: no cache, same answers
    assert pair[0] == changed
