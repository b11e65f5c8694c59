"""Training stages on tiny models: losses fall, MSE is what the docs say, resume is exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clara import ClaraConfig, ClaraModel, tokens
from clara.io import DataError
from clara.score import SCORES, score_candidates
from clara.train import TrainConfig, train
from clara.train.bow import bow_loss, span_gap, span_loss, span_means, span_targets
from clara.train.batch import Batch
from clara.train.rows import read_scp, row_rng
from clara.train.scp import drawn, make_step, scp_prompts

from .conftest import DOCS, SHARED, perturb_lora, tiny_config

SCP = SHARED / "scp" / "clara_pretrain_qa_1k.jsonl"


def small_scp(tmp_path: Path, n: int = 8) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "scp.jsonl"
    with open(SCP) as f, open(out, "w") as g:
        for i, line in enumerate(f):
            if i >= n:
                break
            g.write(line)
    return out


def scp_cfg(tmp_path: Path, backbone: Path, **kw) -> TrainConfig:
    model = tiny_config(backbone).to_dict()
    base = dict(stage="scp", output_dir=str(tmp_path / "run"), model=model, data=[str(small_scp(tmp_path))],
                batch_size=4, lr=3e-2, warmup_ratio=0.0, max_steps=12, log_every=1, save_every=1000,
                task_weights={"reconstruct": 1.0}, max_target_len=32)
    base.update(kw)
    return TrainConfig(**base)


def metrics(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


def test_scp_loss_decreases(tmp_path, backbones):
    cfg = scp_cfg(tmp_path, backbones["llama"], max_rows=4)
    train(cfg)
    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2  # a loop that does not learn stays flat
    loaded = ClaraModel.from_pretrained(tmp_path / "run" / "final")
    assert loaded.config.n_mem == 4


def test_fewer_rows_than_a_batch_is_an_error_not_an_endless_loop(tmp_path, backbones):
    cfg = scp_cfg(tmp_path, backbones["llama"], max_rows=3, batch_size=4)
    with pytest.raises(ValueError, match="3 training rows make no batch of 4"):
        train(cfg)


def test_top_token_readout_trains_and_refuses_span_targets(tmp_path, backbones):
    """Stage 1 with mem_readout="top_tokens" (r rows per slot) learns, with memory dropout reading
    zeroed states' rows; the span-mean options, which need one row per slot, are refused by name."""
    model_cfg = tiny_config(backbones["qwen2"], mem_readout="top_tokens", readout_tokens=2).to_dict()
    cfg = scp_cfg(tmp_path, backbones["qwen2"], max_rows=4, bow_weight=1.0, memory_dropout=0.25, lr=1e-2, model=model_cfg)
    train(cfg)
    logged = metrics(tmp_path / "run")
    ce, bow = [m["ce"] for m in logged], [m["bow"] for m in logged]
    assert sum(ce[-3:]) / 3 < sum(ce[:3]) / 3 - 0.15  # 5.96 -> 5.71 when written (tiny random qwen2)
    assert bow[-1] < bow[0] - 0.2
    assert ClaraModel.from_pretrained(tmp_path / "run" / "final").config.n_read == 8
    rows = read_scp(cfg.data[0])[:4]
    batch = Batch(rows=rows, indices=list(range(4)), epoch=0)
    model = ClaraModel.from_backbone(ClaraConfig(**model_cfg))
    with pytest.raises(ValueError, match="oracle_mix"):
        make_step(TrainConfig(**{**cfg.to_dict(), "oracle_mix": 1.0}))(model, batch)
    with pytest.raises(ValueError, match="span_weight=0"):
        make_step(TrainConfig(**{**cfg.to_dict(), "span_weight": 1.0}))(model, batch)


def test_sub_span_readout_anchors_narrower_spans_and_trains(tmp_path, backbones):
    """mem_readout="sub_spans": the anchoring and the span-mean targets have one span per
    generator row (n_mem * r), so oracle_mix and span_weight apply; stage 1 with all three learns."""
    model_cfg = tiny_config(backbones["mistral"], mem_readout="sub_spans", readout_tokens=2).to_dict()
    model = ClaraModel.from_backbone(ClaraConfig(**model_cfg))
    n_mem, n_spans = model.config.n_mem, model.config.n_spans
    assert n_spans == 2 * n_mem
    docs = ["one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"]
    rows, slots, ids = span_targets(model, docs)
    assert slots.tolist() == [j * n_spans // len(ids) for j in range(len(ids))]
    assert span_means(model, docs).shape == (1, n_spans, model.hidden_size)
    with torch.no_grad():  # by hand: each token's log-probability under its own sub-span's split state
        states = model.compress(docs)
        logp = F.log_softmax(model.logits(model.anchor_states(states)[0]), dim=-1)  # (n_spans, V)
        by_hand = -logp[slots, ids].mean()
        torch.testing.assert_close(bow_loss(model, docs, states), by_hand)
        assert span_loss(model, docs, states).item() > 0
    cfg = scp_cfg(tmp_path, backbones["mistral"], max_rows=4, bow_weight=1.0, span_weight=1.0, oracle_mix=0.5,
                  lr=1e-2, model=model_cfg)
    train(cfg)
    logged = metrics(tmp_path / "run")
    bow, span = [m["bow"] for m in logged], [m["span"] for m in logged]
    assert bow[-1] < bow[0] - 0.2
    assert span[-1] < span[0]
    loaded = ClaraModel.from_pretrained(tmp_path / "run" / "final")
    assert loaded.mem_split is not None and loaded.mem_split.up.abs().sum() > 0  # the maps trained and were saved


def test_mse_term_matches_hand_computation(backbones):
    model = ClaraModel.from_backbone(tiny_config(backbones["qwen2"]))
    docs = ["Paris is the capital of France.", "A much longer document about the history of the Eiffel tower in Paris."]
    with torch.no_grad():
        states, text_mean = model.compress_with_text_mean(docs)
        # by hand: run one document alone, average its non-memory final states
        ids = model.tokenizer(docs[1], add_special_tokens=False)["input_ids"]
        sp = model.special
        full = [sp.enc, model.tokenizer.bos_token_id] + ids + [model.tokenizer.eos_token_id] + list(sp.mem)
        x = torch.tensor([full])
        with model.adapter("compressor"):
            h = model.lm.get_decoder()(inputs_embeds=model.embed(x)).last_hidden_state[0]
        n = model.config.n_mem
        text_by_hand, mem_by_hand = h[:-n].mean(0), h[-n:]
    torch.testing.assert_close(text_mean[1], text_by_hand, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(states[1], mem_by_hand, atol=1e-5, rtol=1e-4)
    # the reduction the docs state: F.mse_loss of the two means = mean over hidden of squared differences
    expected = ((states.mean(1) - text_mean) ** 2).mean()
    torch.testing.assert_close(F.mse_loss(states.mean(1), text_mean), expected)


def test_resume_gives_the_same_next_loss(tmp_path, backbones):
    a = scp_cfg(tmp_path / "a", backbones["mistral"], max_steps=6, task_weights={"qa": 1.0, "reconstruct": 1.0},
                model={**tiny_config(backbones["mistral"]).to_dict(), "lora_dropout": 0.1})
    train(a)
    full = metrics(tmp_path / "a" / "run")
    b = scp_cfg(tmp_path / "b", backbones["mistral"], max_steps=6, save_every=3, task_weights={"qa": 1.0, "reconstruct": 1.0},
                model={**tiny_config(backbones["mistral"]).to_dict(), "lora_dropout": 0.1})
    # interrupt after step 3 by a time budget of zero minutes past the first save ...
    first = TrainConfig(**{**b.to_dict(), "max_steps": 6})
    first.max_minutes = 1e-9
    train(first)
    assert (tmp_path / "b" / "run" / "checkpoint").is_dir()
    part = metrics(tmp_path / "b" / "run")
    assert part[-1]["step"] < 6
    # ... then continue: the following losses equal the uninterrupted run's
    train(b)
    resumed = metrics(tmp_path / "b" / "run")
    by_step = {m["step"]: m["loss"] for m in resumed}
    for m in full:
        assert by_step[m["step"]] == pytest.approx(m["loss"], rel=1e-4, abs=1e-5), m["step"]


def test_epochs_count_the_short_last_accumulation_and_resume_inside_a_later_epoch(tmp_path, backbones):
    # 8 micro-batches of one row, 3 per step: steps end after micro-batches 3, 6 and 8 (accelerate
    # syncs at the loader's end), so an epoch is 3 steps, not 2, and a resume at step 4 skips 3
    kw = dict(batch_size=1, grad_accum=3, max_steps=0, epochs=2, task_weights={"qa": 1.0, "reconstruct": 1.0},
              model={**tiny_config(backbones["llama"]).to_dict(), "lora_dropout": 0.1})
    full = scp_cfg(tmp_path / "a", backbones["llama"], **kw)
    assert train(full)["step"] == 6
    rows = metrics(tmp_path / "a" / "run")
    assert [(m["step"], m["epoch"]) for m in rows] == [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1), (6, 1)]
    cut = scp_cfg(tmp_path / "b", backbones["llama"], **kw)
    for _ in range(4):  # four one-step sessions, each stopped by a zero time budget
        train(TrainConfig(**{**cut.to_dict(), "max_minutes": 1e-9}))
    assert metrics(tmp_path / "b" / "run")[-1]["step"] == 4
    train(cut)
    by_step = {m["step"]: m["loss"] for m in metrics(tmp_path / "b" / "run")}
    for m in rows:
        assert by_step[m["step"]] == pytest.approx(m["loss"], rel=1e-4, abs=1e-5), m["step"]


def test_resume_under_other_settings_warns(tmp_path, backbones, caplog):
    cfg = scp_cfg(tmp_path, backbones["llama"], max_steps=3)
    train(TrainConfig(**{**cfg.to_dict(), "max_minutes": 1e-9}))  # one step, then stopped
    with caplog.at_level("WARNING"):
        train(TrainConfig(**{**cfg.to_dict(), "max_minutes": 5.0}))  # another time budget: silent
    assert "settings other than" not in caplog.text
    cut = scp_cfg(tmp_path / "b", backbones["llama"], max_steps=3)
    train(TrainConfig(**{**cut.to_dict(), "max_minutes": 1e-9}))
    with caplog.at_level("WARNING"):
        train(TrainConfig(**{**cut.to_dict(), "lr": 1e-3}))
    assert "settings other than" in caplog.text and "lr: 0.03 -> 0.001" in caplog.text


def test_malformed_rows_fail_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"data_type": "qa", "question": ["q"], "answers": ["a"], "docs": ["d"]}\n{"data_type": "qa", "docs": ["d"]\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        read_scp(bad)
    bad.write_text('{"data_type": "qa", "question": ["q", "r"], "answers": ["a"], "docs": ["d"]}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: 'question' and 'answers'"):
        read_scp(bad)


def test_unknown_config_field_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown training config fields: lr_typo"):
        TrainConfig.load(None, ["lr_typo=1"])
    cfg = TrainConfig.load(None, ["model.compression_ratio=32", "lr=5e-4"])
    assert cfg.model == {"compression_ratio": 32} and cfg.lr == 5e-4
    with pytest.raises(ValueError, match="'max_steps=' has no value"):
        TrainConfig.load(None, ["max_steps="])  # an unset shell variable; it used to become None


FIXTURES = Path(__file__).parent / "fixtures" / "qa"


def qa_cfg(tmp_path: Path, stage: str, init: str = "", backbone: Path | None = None, **kw) -> TrainConfig:
    base = dict(stage=stage, output_dir=str(tmp_path / stage), init=init, data=[str(FIXTURES / "hotpot_distractor.json")],
                batch_size=2, lr=3e-2, warmup_ratio=0.0, max_steps=8, log_every=1, save_every=1000,
                k_docs=2, n_candidates=4, max_target_len=16)
    if backbone is not None:
        base["model"] = tiny_config(backbone).to_dict()
    base.update(kw)
    return TrainConfig(**base)


def test_instruct_then_e2e(tmp_path, backbones):
    train(qa_cfg(tmp_path, "instruct", backbone=backbones["gemma3"]))
    losses = [m["loss"] for m in metrics(tmp_path / "instruct")]
    assert losses[-1] < losses[0]
    result = train(qa_cfg(tmp_path, "e2e", init=str(tmp_path / "instruct" / "final"), lr=1e-2))
    rows = metrics(tmp_path / "e2e")
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert "recall@2" in rows[-1] and result["step"] == 8
    assert (tmp_path / "e2e" / "doc_states.safetensors").is_file()
    # the compressor is frozen in e2e: its weights are unchanged from the instruct checkpoint
    before = ClaraModel.from_pretrained(tmp_path / "instruct" / "final")
    after = ClaraModel.from_pretrained(tmp_path / "e2e" / "final")
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    comp = [n for n in a if ".compressor." in n]
    assert comp and all(torch.equal(a[n], b[n]) for n in comp)
    assert any(not torch.equal(a[n], b[n]) for n in a if ".query_reasoner." in n)


def test_e2e_from_a_stage3_checkpoint_keeps_its_query_reasoner(tmp_path, backbones, caplog):
    train(qa_cfg(tmp_path, "instruct", backbone=backbones["llama"], max_steps=2))
    train(qa_cfg(tmp_path, "e2e", init=str(tmp_path / "instruct" / "final"), lr=1e-2, max_steps=3))
    stage3 = tmp_path / "e2e" / "final"
    with caplog.at_level("WARNING"):  # a shape the checkpoint fixes cannot be overridden: said so
        train(qa_cfg(tmp_path / "more", "e2e", init=str(stage3), lr=1e-12, max_steps=1, model={"doc_max_len": 999}))
    assert "ignored: model.doc_max_len=999" in caplog.text
    before, after = ClaraModel.from_pretrained(stage3), ClaraModel.from_pretrained(tmp_path / "more" / "e2e" / "final")
    trained = list(before.adapter_parameters("query_reasoner"))
    assert any(not torch.equal(q, c) for q, c in zip(trained, before.adapter_parameters("compressor")))
    for q, q0 in zip(after.adapter_parameters("query_reasoner"), trained):  # not reset to the compressor's copy
        torch.testing.assert_close(q, q0, atol=1e-6, rtol=0)


def test_recon_mix_adds_reconstruction_of_a_read_document(tmp_path, backbones):
    """recon_mix=1: every question also reconstructs one document it read, from the same states;
    the CE grows by exactly the mean of those reconstruction losses, and a run learns."""
    from clara.data.qa import load_qa
    from clara.train import instruct

    cfg0 = qa_cfg(tmp_path, "instruct", backbone=backbones["mistral"], mse_weight=0.0)
    exs = load_qa(cfg0.data[0])[:2]
    batch = Batch(rows=exs, indices=[0, 1], epoch=0)
    model = ClaraModel.from_backbone(ClaraConfig(**cfg0.model)).eval()  # eval: no dropout between the two calls
    with torch.no_grad():
        _, plain = instruct.make_step(cfg0)(model, batch)
        cfg1 = TrainConfig(**{**cfg0.to_dict(), "recon_mix": 1.0})
        _, mixed = instruct.make_step(cfg1)(model, batch)
        sets = [instruct.read_set(ex, cfg1.k_docs, cfg1.seed, 0, i) for i, ex in enumerate(exs)]
        recon = []
        for i, docs in enumerate(sets):
            rng = row_rng(cfg1.seed + 2, 0, i)
            assert rng.random() < 1.0
            doc = docs[rng.randrange(len(docs))]
            states = model.compress([doc])  # (1, n_mem, H): the same states the step computed
            recon.append(model.generator_loss([model.prompt("reconstruct", 1)], [doc], [states], max_target_len=cfg1.recon_target_len))
    assert mixed["ce"] == pytest.approx(plain["ce"] + torch.stack(recon).mean().item(), rel=1e-4)
    with pytest.raises(ValueError, match="recon_mix"):
        TrainConfig(**{**cfg0.to_dict(), "recon_mix": 1.5})
    train(TrainConfig(**{**cfg0.to_dict(), "recon_mix": 1.0}))  # every step has the same parts: comparable losses
    losses = [m["loss"] for m in metrics(tmp_path / "instruct")]
    assert losses[-1] < losses[0]


def test_retrieval_nce_matches_hand_computation():
    from clara.train.instruct import retrieval_nce

    scores = torch.tensor([[0.9, 0.1, -0.2], [0.0, 0.5, 0.4], [0.3, 0.2, 0.1], [0.3, 0.2, 0.1], [0.7, 0.2, 0.1]],
                          requires_grad=True)
    gold = torch.tensor([[False, True, True], [True, False, False], [False, False, False], [True, True, False],
                         [True, False, True]])
    valid = torch.tensor([[True] * 3, [True] * 3, [True] * 3, [True, True, False], [True, True, False]])
    nce = retrieval_nce(scores, gold, temperature=0.5, valid=valid)
    for b, n in [(0, 3), (1, 3), (4, 2)]:  # row 4: candidate 2 is padding, gold or not
        e = [torch.exp(scores[b, i].detach() / 0.5) for i in range(n)]
        want = -torch.log(sum(e[i] for i in range(n) if gold[b, i]) / sum(e))
        assert nce[b].item() == pytest.approx(want.item(), rel=1e-5)
    # no gold candidate, or only gold among the real ones: nothing to learn, 0 and not inf
    assert nce[2].item() == 0.0 and nce[3].item() == 0.0
    assert torch.equal(retrieval_nce(scores[:2], gold[:2], 0.5), nce[:2])  # valid defaults to all
    nce.sum().backward()
    assert torch.isfinite(scores.grad).all() and torch.all(scores.grad[2:4] == 0) and scores.grad[4, 2] == 0
    # descent raises the gold candidates' scores and lowers the others'
    assert scores.grad[0, 0] > 0 > scores.grad[0, 1] and scores.grad[1, 0] < 0 < scores.grad[4, 1]


def test_retrieval_docs_ranks_more_of_the_questions_candidates_than_it_reads(backbones):
    """retrieval_docs=5 with k_docs=3: each question ranks the 3 documents it reads and 2 more of
    its own candidates (distinct, seeded); the InfoNCE is over all 5, the answer loss unchanged."""
    import dataclasses

    from clara.data.qa import load_qa
    from clara.train import instruct

    model = ClaraModel.from_backbone(tiny_config(backbones["qwen2"])).eval()
    perturb_lora(model)
    a, b = load_qa(FIXTURES / "hotpot_distractor.json")[:2]
    exs = [dataclasses.replace(a, docs=a.docs + b.docs), dataclasses.replace(b, docs=b.docs + a.docs)]  # 6 candidates each
    batch = Batch(rows=exs, indices=[0, 1], epoch=0)
    cfg = TrainConfig(stage="instruct", k_docs=3, mse_weight=0.0, retrieval_weight=2.0, retrieval_docs=5, retrieval_temperature=0.1)
    loss, parts = model(instruct.make_step(cfg), batch)
    plain, _ = model(instruct.make_step(TrainConfig(**{**cfg.to_dict(), "retrieval_weight": 0.0})), batch)
    with torch.no_grad():
        read = [instruct.read_docs(ex, 3, cfg.seed, 0, i) for i, ex in enumerate(exs)]
        ranked = [instruct.ranked_docs(ex, r, 5, cfg.seed, 0, i) for i, (ex, r) in enumerate(zip(exs, read))]
        cand = torch.stack([model.compress([d.full_text() for d in ds]) for ds in ranked])  # (2, 5, n_mem, H)
        scores = score_candidates(model.compress([ex.question for ex in exs]), cand, model.config.retrieval_score)
        gold = torch.tensor([[d.id in ex.gold_ids for d in ds] for ex, ds in zip(exs, ranked)])
        nce = instruct.retrieval_nce(scores, gold, 0.1).mean()
    for ex, r, ds in zip(exs, read, ranked):
        assert ds[:3] == r and len({d.id for d in ds}) == 5 and {d.id for d in ds} <= {d.id for d in ex.docs}
    assert parts["retrieval"] == pytest.approx(nce.item(), rel=1e-4)
    assert loss.item() == pytest.approx(plain.item() + 2.0 * nce.item(), rel=1e-4)
    # fewer candidates than asked for: all of them, no repeats; 0 = the documents read
    assert sorted(d.id for d in instruct.ranked_docs(exs[0], read[0], 99, 0, 0, 0)) == sorted(d.id for d in exs[0].docs)
    assert instruct.ranked_docs(exs[0], read[0], 0, 0, 0, 0) == read[0]
    with pytest.raises(ValueError, match="retrieval_docs"):
        TrainConfig(retrieval_docs=-1)


def test_retrieval_in_batch_ranks_the_other_questions_documents_as_negatives(backbones):
    """retrieval_in_batch: each question ranks its own documents and the batch's others; a
    question reading only its gold passage (NQ) now has negatives and a loss, and another
    question's copy of a document it reads is not counted twice."""
    import dataclasses

    from clara.data.qa import load_qa
    from clara.score import score
    from clara.train import instruct

    model = ClaraModel.from_backbone(tiny_config(backbones["llama"])).eval()
    perturb_lora(model)
    a, b = load_qa(FIXTURES / "hotpot_distractor.json")[:2]
    nq = dataclasses.replace(b, id="nq1", docs=[d for d in b.docs if d.id in b.gold_ids][:1])  # one gold passage
    exs = [a, nq, dataclasses.replace(a, id="a2")]  # the third reads a's documents again
    docs = [a.docs, nq.docs, a.docs]
    per_q = [model.compress([d.full_text() for d in ds]) for ds in docs]
    with torch.no_grad():
        alone, _ = instruct.retrieval_loss(model, exs, docs, per_q, 0.1)
        nce, top1 = instruct.retrieval_loss(model, exs, docs, per_q, 0.1, in_batch=True)
        flat = torch.cat(per_q)  # (7, n_mem, H): a's 3, nq's 1, a's 3 again
        scores = score(model.compress([ex.question for ex in exs]), flat, model.config.retrieval_score)  # (3, 7)
    own_a, other_a = [0, 1, 2, 3], [3, 4, 5, 6]  # each copy of a ranks its own 3 and nq's passage
    gold_a = [d.id in a.gold_ids for d in a.docs]
    expected = torch.stack([
        instruct.retrieval_nce(scores[0:1, own_a], torch.tensor([gold_a + [False]]), 0.1),
        instruct.retrieval_nce(scores[1:2, :4], torch.tensor([[False] * 3 + [True]]), 0.1),  # one copy of a's 3
        instruct.retrieval_nce(scores[2:3, other_a], torch.tensor([[False] + gold_a]), 0.1),
    ]).mean()
    assert nce.item() == pytest.approx(expected.item(), rel=1e-5)
    single = instruct.retrieval_nce(scores[1:2, :4], torch.tensor([[False] * 3 + [True]]), 0.1)
    assert single.item() > 0  # the single-passage question learns only with in-batch negatives
    assert alone.item() == pytest.approx(instruct.retrieval_nce(scores[0:1, :3], torch.tensor([gold_a]), 0.1).item() * 2 / 3, rel=1e-5)
    assert 0.0 <= top1 <= 1.0


@pytest.mark.parametrize("kind", SCORES)
def test_instruct_retrieval_weight_trains_the_compressor_to_rank_the_gold_documents(backbones, kind):
    """Stage 2 with retrieval_weight: the loss adds weight x the InfoNCE of the compressor
    encoding the question against the documents the question reads (gold positive); its
    gradient reaches the compressor, and training on it ranks the gold documents higher."""
    from clara.data.qa import load_qa
    from clara.train import instruct

    model = ClaraModel.from_backbone(tiny_config(backbones["mistral"], retrieval_score=kind)).eval()  # no dropout between calls
    perturb_lora(model)
    model.set_trainable(("compressor", "generator"), mem_rows=True)
    exs = load_qa(FIXTURES / "hotpot_distractor.json")[:2]
    batch = Batch(rows=exs, indices=[0, 1], epoch=0)
    cfg = TrainConfig(stage="instruct", k_docs=4, mse_weight=0.0, retrieval_weight=3.0, retrieval_temperature=0.1)
    plain, _ = model(instruct.make_step(TrainConfig(**{**cfg.to_dict(), "retrieval_weight": 0.0})), batch)
    loss, parts = model(instruct.make_step(cfg), batch)
    with torch.no_grad():
        docs = [instruct.read_docs(ex, 4, cfg.seed, 0, i) for i, ex in enumerate(exs)]
        cand = torch.stack([model.compress([d.full_text() for d in ds]) for ds in docs])  # (2, 4, n_mem, H)
        scores = score_candidates(model.compress([ex.question for ex in exs]), cand, kind)
        gold = torch.tensor([[d.id in ex.gold_ids for d in ds] for ex, ds in zip(exs, docs)])
        nce = instruct.retrieval_nce(scores, gold, 0.1).mean()
    assert gold.any(-1).all() and not gold.all(-1).any()  # every question reads gold and negatives
    assert parts["retrieval"] == pytest.approx(nce.item(), rel=1e-4)
    assert loss.item() == pytest.approx(plain.item() + 3.0 * nce.item(), rel=1e-4)
    top1 = gold.gather(1, scores.argmax(-1, keepdim=True)).float().mean().item()
    assert parts["retrieval_top1_gold"] == pytest.approx(top1)
    # a question reading one (gold) document, as NQ's: ranked among its own documents only, adds 0
    single = [exs[0], exs[1], exs[0]]
    single_docs = docs + [[d for d in docs[0] if d.id in exs[0].gold_ids][:1]]
    per_q = [c for c in cand] + [model.compress([single_docs[2][0].full_text()])]
    with torch.no_grad():
        mixed, _ = instruct.retrieval_loss(model, single, single_docs, per_q, 0.1)
    assert mixed.item() == pytest.approx(nce.item() * 2 / 3, rel=1e-4)
    model.zero_grad()
    instruct.retrieval_loss(model, exs, docs, list(cand.requires_grad_(False)), 0.1)[0].backward()
    named = dict(model.named_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in named.items() if ".compressor." in n)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for n, p in named.items() if ".generator." in n)

    model.zero_grad()
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if ".compressor." in n], lr=1e-2)
    only = TrainConfig(**{**cfg.to_dict(), "retrieval_weight": 1e3})  # the answer loss becomes negligible
    nces = []
    for _ in range(8):
        opt.zero_grad()
        loss, parts = model(instruct.make_step(only), batch)
        loss.backward()
        opt.step()
        nces.append(parts["retrieval"])
    assert nces[-1] < 0.7 * nces[0]
    for bad, match in [({"retrieval_weight": -1.0}, "retrieval_weight"), ({"retrieval_temperature": 0.0}, "retrieval_temperature")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(stage="instruct", **bad)


def test_e2e_state_cache_is_reused_only_for_the_same_compressor_and_texts(backbones, tmp_path):
    from clara.data.corpus import Document
    from clara.data.qa import QAExample
    from clara.train.e2e import cache_doc_states

    model = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    perturb_lora(model)
    docs = [Document(id=f"d{i}", text=t) for i, t in enumerate(DOCS[:3])]
    examples = [QAExample(id="q", question="who?", answers=["x"], docs=docs)]
    path = tmp_path / "doc_states.safetensors"
    first = cache_doc_states(model, examples, path)
    assert cache_doc_states(model, examples, path)["d0"].data_ptr() != first["d0"].data_ptr()  # read back
    torch.testing.assert_close(cache_doc_states(model, examples, path)["d1"], first["d1"])
    # the same ids with another text (two NQ files numbered alike): compressed again
    other = [QAExample(id="q", question="who?", answers=["x"], docs=[Document(id="d0", text="The Danube flows into the Black Sea."), *docs[1:]])]
    assert not torch.equal(cache_doc_states(model, other, path)["d0"], first["d0"])
    # another compressor (a different init checkpoint): compressed again
    perturb_lora(model)
    again = cache_doc_states(model, examples, path)
    assert not torch.equal(again["d1"], first["d1"])
    torch.testing.assert_close(again["d1"], model.compress([docs[1].full_text()])[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", SCORES)
def test_e2e_gradients_reach_query_reasoner_not_compressor(backbones, kind):
    from clara.data.qa import load_qa
    from clara.train import e2e
    from clara.train.batch import Batch

    model = ClaraModel.from_backbone(tiny_config(backbones["llama"], retrieval_score=kind))
    model.set_trainable(("query_reasoner", "generator"), mem_rows=False)
    exs = e2e.add_candidates(load_qa(FIXTURES / "hotpot_distractor.json")[:2], 4, 0)
    cache = {d.id: s for ex in exs for d, s in zip(ex.docs, model.compress([d.full_text() for d in ex.docs]).detach())}
    step = e2e.make_step(TrainConfig(stage="e2e", k_docs=2, tau=1.0), cache)
    loss, _ = model(step, Batch(exs, [0, 1], 0))
    loss.backward()
    named = dict(model.named_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in named.items() if ".query_reasoner." in n)
    assert all(p.grad is None for n, p in named.items() if ".compressor." in n)
    assert named["mem_rows"].grad is None


def test_e2e_recon_mix_rehearses_from_cached_states_and_leaves_the_compressor_frozen(backbones):
    """Stage 3 with recon_mix=1: the loss adds the reconstruction of one cached candidate per
    question (logged as "recon"); the generator trains on it, the compressor still gets nothing."""
    from clara.data.qa import load_qa
    from clara.train import e2e
    from clara.train.batch import Batch

    model = ClaraModel.from_backbone(tiny_config(backbones["qwen2"])).eval()  # eval: no dropout between calls
    model.set_trainable(("query_reasoner", "generator"), mem_rows=False)
    exs = e2e.add_candidates(load_qa(FIXTURES / "hotpot_distractor.json")[:2], 4, 0)
    cache = {d.id: s for ex in exs for d, s in zip(ex.docs, model.compress([d.full_text() for d in ex.docs]).detach())}
    batch = Batch(exs, [0, 1], 0)
    plain, _ = model(e2e.make_step(TrainConfig(stage="e2e", k_docs=2), cache), batch)
    loss, parts = model(e2e.make_step(TrainConfig(stage="e2e", k_docs=2, recon_mix=1.0), cache), batch)
    assert parts["recon"] > 0 and loss.item() == pytest.approx(plain.item() + parts["recon"], rel=1e-4)
    loss.backward()
    named = dict(model.named_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in named.items() if ".generator." in n)
    assert all(p.grad is None for n, p in named.items() if ".compressor." in n)


def test_distillation_kl_matches_hand_computation():
    from clara.train.e2e import distillation_kl

    scores = torch.tensor([[0.9, 0.1, -0.2], [0.0, 0.5, 0.4]], requires_grad=True)
    losses = torch.tensor([[1.0, 2.0, 3.0], [2.5, 2.0, 2.1]])
    kl = distillation_kl(scores, losses, score_temperature=0.5, teacher_temperature=0.25)
    for b in range(2):
        p = [torch.exp(-losses[b, i] / 0.25) for i in range(3)]
        p = [x / sum(p) for x in p]
        q = [torch.exp(scores[b, i].detach() / 0.5) for i in range(3)]
        q = [x / sum(q) for x in q]
        assert kl[b].item() == pytest.approx(sum(float(p[i] * torch.log(p[i] / q[i])) for i in range(3)), rel=1e-5)
    kl.sum().backward()
    # d KL / d score_i = (q_i - p_i) / T_s: descent raises the score of the candidate the teacher prefers
    assert scores.grad[0, 0] < 0 < scores.grad[0, 2]
    same = distillation_kl(torch.tensor([[2.0, -1.0]]), torch.tensor([[-2.0 * 0.3, 1.0 * 0.3]]), 1.0, 0.3)
    assert same.item() == pytest.approx(0.0, abs=1e-6)  # identical distributions


@pytest.mark.parametrize("arch", ["mistral", "gemma3"])
def test_candidate_losses_score_each_candidate_alone(backbones, arch):
    from clara.data.qa import load_qa
    from clara.train import e2e

    model = ClaraModel.from_backbone(tiny_config(backbones[arch])).eval()
    perturb_lora(model)
    ex = load_qa(FIXTURES / "hotpot_distractor.json")[0]
    with torch.no_grad():
        cand = model.compress([d.full_text() for d in ex.docs[:3]])  # (3, n_mem, H)
        texts = [d.full_text() for d in ex.docs[:3]]
        by_kind = {kind: e2e.candidate_losses(model, ex, cand, kind, texts) for kind in e2e.TEACHERS}
        alone = model.generator_loss(model.answer_prompts([ex.question], [1]), ex.answers[:1], [cand[1:2]])
        written = model.generator_loss([model.prompt("qa", 1)], [f"Question: {ex.question}"], [cand[2:3]])
        # the text teacher reads text with the plain backbone: the states and the adapters do not matter
        from_text = e2e.candidate_losses(model, ex, torch.randn_like(cand), "question_text", texts)
        shuffled = e2e.candidate_losses(model, ex, cand, "question_text", texts[::-1])
    assert all(v.shape == (3,) and torch.isfinite(v).all() for v in by_kind.values())
    assert by_kind["answer"][1].item() == pytest.approx(alone.item(), rel=1e-4)  # candidate 1, read alone
    assert by_kind["question"][2].item() == pytest.approx(written.item(), rel=1e-4)
    assert not torch.allclose(by_kind["question"], by_kind["question_answer"])
    assert torch.allclose(from_text, by_kind["question_text"]) and torch.allclose(shuffled, from_text.flip(0))
    with model.adapter("generator"):  # adapter=None switches the active generator off
        assert torch.allclose(e2e.candidate_losses(model, ex, cand, "question_text", texts), from_text)
    assert not torch.allclose(by_kind["question_text"], by_kind["question"])
    with pytest.raises(ValueError, match="teacher must be one of"):
        e2e.candidate_losses(model, ex, cand, "relevance")
    with pytest.raises(ValueError, match="needs the 3 candidates' texts"):
        e2e.candidate_losses(model, ex, cand, "question_text")


def test_e2e_distillation_adds_the_kl_towards_the_generators_ranking(backbones):
    """Stage 3 with distill_weight: the loss is the answer loss plus weight x the KL from the
    teacher (candidate_losses) to the scores; its gradient reaches the query reasoner only, and
    training on it makes the query reasoner's ranking approach the teacher's."""
    from clara.data.qa import load_qa
    from clara.train import e2e

    torch.manual_seed(0)  # the random weights, not the tests run before, decide where the KL starts
    model = ClaraModel.from_backbone(tiny_config(backbones["qwen2"])).eval()  # eval: no dropout between calls
    perturb_lora(model)
    model.set_trainable(("query_reasoner",), mem_rows=False)
    exs = e2e.add_candidates(load_qa(FIXTURES / "hotpot_distractor.json")[:2], 4, 0)
    cache = {d.id: s for ex in exs for d, s in zip(ex.docs, model.compress([d.full_text() for d in ex.docs]).detach())}
    batch = Batch(exs, [0, 1], 0)
    cfg = TrainConfig(stage="e2e", k_docs=2, distill_weight=2.0, distill_teacher="question",
                      distill_teacher_temperature=0.05, distill_score_temperature=0.1)
    plain, _ = model(e2e.make_step(TrainConfig(stage="e2e", k_docs=2), cache), batch)
    loss, parts = model(e2e.make_step(cfg, cache), batch)
    cand = torch.stack([torch.stack([cache[d.id] for d in ex.docs]) for ex in exs])
    with torch.no_grad():
        teacher = torch.stack([e2e.candidate_losses(model, ex, cand[b], "question") for b, ex in enumerate(exs)])
        scores = score_candidates(model.encode_query([ex.question for ex in exs]), cand, model.config.retrieval_score)
    kl = e2e.distillation_kl(scores, teacher, 0.1, 0.05).mean()
    assert parts["distill"] == pytest.approx(kl.item(), rel=1e-4)
    assert loss.item() == pytest.approx(plain.item() + 2.0 * kl.item(), rel=1e-4)
    assert "teacher_recall@2" in parts
    # distill_top=3: the KL over each question's 3 best-scored candidates only, their own softmaxes
    top = scores.topk(3, dim=-1).indices
    sub = torch.stack([e2e.candidate_losses(model, ex, cand[b, top[b]], "question") for b, ex in enumerate(exs)])
    _, parts3 = model(e2e.make_step(TrainConfig(**{**cfg.to_dict(), "distill_top": 3}), cache), batch)
    assert parts3["distill"] == pytest.approx(e2e.distillation_kl(scores.gather(1, top), sub, 0.1, 0.05).mean().item(), rel=1e-4)
    assert parts3["distill"] != pytest.approx(parts["distill"], rel=1e-3)
    loss.backward()
    named = dict(model.named_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in named.items() if ".query_reasoner." in n)
    assert all(p.grad is None for n, p in named.items() if ".compressor." in n or ".generator." in n)

    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    only_kl = TrainConfig(**{**cfg.to_dict(), "distill_weight": 1e3})  # the answer loss becomes negligible
    kls = []
    for _ in range(8):
        opt.zero_grad()
        loss, parts = model(e2e.make_step(only_kl, cache), batch)
        loss.backward()
        opt.step()
        kls.append(parts["distill"])
    assert kls[-1] < 0.7 * kls[0]
    for bad, match in [({"distill_teacher": "labels"}, "distill_teacher"), ({"distill_weight": -1.0}, "distill_weight"),
                       ({"distill_score_temperature": 0.0}, "distill_score_temperature"), ({"distill_top": 1}, "distill_top")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(stage="e2e", **bad)


def test_e2e_without_query_reasoner_training_keeps_the_compressors_ranking(tmp_path, backbones):
    """train_query_reasoner=False: stage 3 still copies the compressor into the query reasoner,
    then trains only the generator, so the query reasoner ends equal to the compressor (it ranks
    as the compressor does) while the generator learns. Distillation needs it trained: refused."""
    train(qa_cfg(tmp_path, "instruct", backbone=backbones["qwen2"], max_steps=2))
    init = str(tmp_path / "instruct" / "final")
    train(qa_cfg(tmp_path, "e2e", init=init, lr=1e-2, train_query_reasoner=False, max_steps=4))
    start = ClaraModel.from_pretrained(init)
    end = ClaraModel.from_pretrained(tmp_path / "e2e" / "final")
    for c, q in zip(end.adapter_parameters("compressor"), end.adapter_parameters("query_reasoner")):
        assert torch.equal(c, q)
    assert any(not torch.equal(c, q) for c, q in  # stage 2 left them different: the copy happened
               zip(start.adapter_parameters("compressor"), start.adapter_parameters("query_reasoner")))
    assert any(not torch.equal(a, b) for a, b in zip(end.adapter_parameters("generator"), start.adapter_parameters("generator")))
    losses = [m["loss"] for m in metrics(tmp_path / "e2e")]
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="distill_weight trains the query reasoner"):
        TrainConfig(stage="e2e", distill_weight=1.0, train_query_reasoner=False)


def test_adapter_lr_trains_each_adapter_at_its_own_rate(tmp_path, backbones):
    """Stage 3 with adapter_lr={query_reasoner: 1e-2} and lr=1e-9: after the run the query
    reasoner has moved far, the generator by no more than its own tiny rate allows. Unknown
    adapters and non-positive rates are refused; YAML overrides reach the field."""
    train(qa_cfg(tmp_path, "instruct", backbone=backbones["mistral"], max_steps=1))
    init = str(tmp_path / "instruct" / "final")
    train(qa_cfg(tmp_path, "e2e", init=init, lr=1e-9, adapter_lr={"query_reasoner": 1e-2}, max_steps=3))
    start = ClaraModel.from_pretrained(init)
    start.init_query_reasoner_from_compressor()  # where stage 3 starts the query reasoner
    end = ClaraModel.from_pretrained(tmp_path / "e2e" / "final")

    def moved(adapter: str) -> float:
        return max((a - b).abs().max().item()
                   for a, b in zip(end.adapter_parameters(adapter), start.adapter_parameters(adapter)))

    assert moved("query_reasoner") > 1e-3  # Adam moves each weight by ~lr per step
    assert moved("generator") < 1e-7
    assert moved("compressor") == 0.0
    with pytest.raises(ValueError, match="unknown adapter 'retriever'"):
        TrainConfig(adapter_lr={"retriever": 1e-3})
    with pytest.raises(ValueError, match="adapter_lr.generator"):
        TrainConfig(adapter_lr={"generator": 0})
    assert TrainConfig.load(None, ["adapter_lr.query_reasoner=5e-4"]).adapter_lr == {"query_reasoner": 5e-4}
    yaml_file = tmp_path / "e2e.yaml"
    yaml_file.write_text("stage: e2e\nadapter_lr: {query_reasoner: 1e-3}\n")  # a string to YAML 1.1
    assert TrainConfig.load(yaml_file).adapter_lr == {"query_reasoner": 1e-3}
    with pytest.raises(ValueError, match="adapter_lr.query_reasoner"):
        TrainConfig(adapter_lr={"query_reasoner": "fast"})


def _run_cli(args: list[str], nproc: int, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CLARA_SHARED_DATA": str(SHARED)}
    if nproc == 1:
        cmd = [sys.executable, "-m", "clara", "train", *args]
    else:  # what `accelerate launch` does on CPU: torch.distributed processes with the gloo backend
        import socket

        with socket.socket() as sock:  # a free loopback port for the rendezvous
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
               "-m", "clara", "train", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)


def test_two_processes_match_one_process(tmp_path, backbones):
    """DDP over 2 gloo processes with batch 2 each = 1 process with batch 4: same losses."""
    import yaml

    cfg = scp_cfg(tmp_path, backbones["llama"], max_steps=3, lr=1e-2, task_weights={"qa": 1.0, "reconstruct": 1.0})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    one = _run_cli(["scp", "-c", "cfg.yaml", "output_dir=one", "batch_size=4"], 1, tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run_cli(["scp", "-c", "cfg.yaml", "output_dir=two", "batch_size=2"], 2, tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3]
    for x, y in zip(a, b):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4), (x, y)


def test_bow_loss_matches_hand_computation(backbones):
    model = ClaraModel.from_backbone(tiny_config(backbones["gemma3"]))  # gemma3: also checks logit soft-capping
    docs = ["Paris is the capital of France.", "A much longer document about the history of the Eiffel tower in Paris."]
    n = model.config.n_mem
    with torch.no_grad():
        states = model.compress(docs)  # (2, n_mem, H)
        got = bow_loss(model, docs, states)
        per_doc = []
        for b, doc in enumerate(docs):
            ids = model.tokenizer(doc, add_special_tokens=False)["input_ids"][: model.config.doc_max_len]
            logp = torch.log_softmax(model.logits(states[b]), -1)  # (n_mem, V)
            # token j of L belongs to span floor(j * n_mem / L): n_mem equal spans in order
            per_doc.append(torch.stack([-logp[j * n // len(ids), t] for j, t in enumerate(ids)]).mean())
    torch.testing.assert_close(got, torch.stack(per_doc).mean())
    rows, slots, _ = span_targets(model, docs)
    assert slots[rows == 1].unique().tolist() == list(range(n))  # every slot owns a span of a long document


def test_bow_weight_adds_the_bow_term_and_trains_it(tmp_path, backbones):
    cfg = scp_cfg(tmp_path, backbones["mistral"], max_rows=4, bow_weight=1.0, train_generator=False)
    train(cfg)
    logged = metrics(tmp_path / "run")
    assert all("bow" in m for m in logged)
    for m in logged[:1]:  # the logged loss is CE + lambda * MSE + bow
        assert abs(m["loss"] - (m["ce"] + cfg.mse_weight * m["mse"] + m["bow"])) < 1e-3 * max(1.0, m["loss"])
    assert logged[-1]["bow"] < logged[0]["bow"] - 0.2  # 6.02 -> 5.75 when written


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_span_means_is_the_soft_token_of_a_perfect_anchoring(backbones, arch):
    """span_means = each span's mean input embedding (Gemma's sqrt(H) scale included), which is
    also the soft token of an output distribution equal to the span's token frequencies."""
    model = ClaraModel.from_backbone(tiny_config(backbones[arch], mem_readout="soft_tokens"))
    docs = ["Paris is the capital of France.", "A much longer document about the history of the Eiffel tower in Paris."]
    got = span_means(model, docs)  # (2, n_mem, H)
    rows, slots, ids = span_targets(model, docs)
    emb = model.lm.get_input_embeddings()
    for b in range(2):
        for i in range(model.config.n_mem):
            span = ids[(rows == b) & (slots == i)]
            torch.testing.assert_close(got[b, i], emb(span).mean(0))  # emb(): HF's own scaling
    b, i = 1, 0
    span = ids[(rows == b) & (slots == i)]
    freq = torch.bincount(span, minlength=emb.weight.shape[0]).float() / len(span)  # (V,)
    soft = model._embed_scaled(freq @ emb.weight)
    torch.testing.assert_close(got[b, i], soft)


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_span_loss_matches_hand_computation(backbones, arch):
    """span_loss: per document, sum |soft token - span mean|^2 / sum |span mean|^2, averaged;
    zero when the generator would read exactly the span means."""
    model = ClaraModel.from_backbone(tiny_config(backbones[arch], mem_readout="soft_tokens"))
    docs = ["Paris is the capital of France.", "A much longer document about the history of the Eiffel tower in Paris."]
    with torch.no_grad():
        states = model.compress(docs)  # (2, n_mem, H)
        got = span_loss(model, docs, states)
        target = span_means(model, docs)
        per_doc = []
        for b in range(2):
            read = torch.stack([model.read_memory(states[b, i : i + 1])[0] for i in range(model.config.n_mem)])
            per_doc.append(((read - target[b]) ** 2).sum() / (target[b] ** 2).sum())
        torch.testing.assert_close(got, torch.stack(per_doc).mean())
        assert got > 0.05  # a random compressor is far from the oracle
        gap = span_gap(model, docs)  # the benchmark's numbers (benchmarks/info_flow.py --span-gap)
        assert gap["span_loss"] == pytest.approx(got.item(), rel=1e-5)
        assert gap["bow"] == pytest.approx(bow_loss(model, docs, states).item(), rel=1e-5)
        swapped = target.roll(1, 0)
        other = [((read_b - swapped[b]) ** 2).sum() / (swapped[b] ** 2).sum() for b, read_b in enumerate(
            torch.stack([model.read_memory(states[b]) for b in range(2)]))]
        assert gap["span_loss_other"] == pytest.approx(torch.stack(other).mean().item(), rel=1e-5)
        assert -1.0 <= gap["cosine"] <= 1.0
    with pytest.raises(ValueError, match="at least 2"):
        span_gap(model, docs[:1])
    # a readout that returns the span means exactly scores zero
    model.read_memory = lambda flat: target.flatten(0, 1)
    assert span_loss(model, docs, states).item() == pytest.approx(0.0, abs=1e-6)


def test_span_weight_adds_the_span_term_and_trains_it(tmp_path, backbones):
    cfg = scp_cfg(tmp_path, backbones["llama"], max_rows=4, span_weight=1.0, train_generator=False,
                  model=tiny_config(backbones["llama"], mem_readout="soft_tokens").to_dict())
    train(cfg)
    logged = metrics(tmp_path / "run")
    assert all("span" in m and "bow" not in m for m in logged)
    m = logged[0]  # the logged loss is CE + lambda * MSE + span
    assert abs(m["loss"] - (m["ce"] + cfg.mse_weight * m["mse"] + m["span"])) < 1e-3 * max(1.0, m["loss"])
    assert logged[-1]["span"] < logged[0]["span"] - 0.03  # 0.996 -> 0.940 when written (tiny random model)
    with pytest.raises(ValueError, match="span_weight"):
        TrainConfig(**{**cfg.to_dict(), "span_weight": -1.0})


def test_oracle_mix_swaps_the_generators_input_not_the_compressors_losses(tmp_path, backbones):
    """oracle_mix=1: the generator reads span means, so its CE no longer depends on (or trains)
    the compressor; the anchoring still does. oracle_mix=0: the CE reaches the compressor. A mixed
    run still learns."""
    cfg0 = scp_cfg(tmp_path, backbones["llama"], bow_weight=0.0, mse_weight=0.0,
                   model=tiny_config(backbones["llama"], mem_readout="soft_tokens").to_dict())
    rows = read_scp(cfg0.data[0])[:4]
    batch = Batch(rows=rows, indices=list(range(4)), epoch=0)
    for mix, reaches in ((0.0, True), (1.0, False)):
        torch.manual_seed(0)
        model = ClaraModel.from_backbone(ClaraConfig(**cfg0.model))
        model.set_trainable(("compressor", "generator"), mem_rows=True)
        loss, parts = make_step(TrainConfig(**{**cfg0.to_dict(), "oracle_mix": mix}))(model, batch)
        loss.backward()
        grads = [p.grad for n, p in model.named_parameters() if ".compressor." in n and p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads) == reaches
        gen = [p.grad for n, p in model.named_parameters() if ".generator." in n and "lora_B" in n]
        assert all(g is not None and g.abs().sum() > 0 for g in gen)
    with pytest.raises(ValueError, match="oracle_mix"):
        TrainConfig(**{**cfg0.to_dict(), "oracle_mix": 1.5})
    cfg = TrainConfig(**{**cfg0.to_dict(), "oracle_mix": 0.5, "bow_weight": 1.0, "max_rows": 4})
    train(cfg)
    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2


def test_memory_dropout_reads_zeroed_memory_for_a_reproducible_share(tmp_path, backbones):
    """memory_dropout=1: every example's generator reads what zeroed states read as, so the CE is
    exactly info flow's zeroed-states loss and none of it reaches the compressor. The draw is per
    (seed, epoch, row), independent of oracle_mix's; a bad share is refused; a mixed run learns."""
    cfg0 = scp_cfg(tmp_path, backbones["llama"], bow_weight=0.0, mse_weight=0.0,
                   model=tiny_config(backbones["llama"], mem_readout="soft_tokens").to_dict())
    rows = read_scp(cfg0.data[0])[:4]
    batch = Batch(rows=rows, indices=list(range(4)), epoch=0)
    torch.manual_seed(0)
    model = ClaraModel.from_backbone(ClaraConfig(**cfg0.model))
    perturb_lora(model)
    model.set_trainable(("compressor", "generator"), mem_rows=True)
    loss, parts = make_step(TrainConfig(**{**cfg0.to_dict(), "memory_dropout": 1.0}))(model, batch)
    loss.backward()
    compressor = [p.grad for n, p in model.named_parameters() if ".compressor." in n and p.requires_grad]
    assert all(g is None or g.abs().sum() == 0 for g in compressor)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if ".generator." in n)
    # the same loss by hand: the stage-1 prompts and targets, reading all-zero states through read_memory
    prompts, targets = scp_prompts(model, rows, cfg0, 0, list(range(4)))
    with torch.no_grad():
        zeroed = model.generator_loss(prompts, targets, [torch.zeros(1, model.config.n_mem, model.hidden_size)] * 4,
                                      per_example=True, max_target_len=cfg0.max_target_len).mean()
    assert abs(parts["ce"] - zeroed.item()) < 1e-5
    # the share: reproducible, close to its value over many rows, and drawn apart from oracle_mix
    many = Batch(rows=[rows[0]] * 400, indices=list(range(400)), epoch=3)
    drop, oracle = drawn(7 + 2, many, 0.3), drawn(7 + 1, many, 0.3)
    assert drop == drawn(9, many, 0.3) and 0.24 < sum(drop) / 400 < 0.36
    assert drop != oracle and abs(sum(a and b for a, b in zip(drop, oracle)) / 400 - 0.09) < 0.04
    with pytest.raises(ValueError, match="memory_dropout"):
        TrainConfig(**{**cfg0.to_dict(), "memory_dropout": -0.1})
    cfg = TrainConfig(**{**cfg0.to_dict(), "memory_dropout": 0.5, "bow_weight": 1.0, "max_rows": 4})
    train(cfg)
    losses = [m["loss"] for m in metrics(tmp_path / "run")]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.2


def test_stage_continues_at_a_lower_compression_ratio(tmp_path, backbones):
    """init= a ratio-8 checkpoint with model.compression_ratio=4: the run trains and saves 8 memory tokens."""
    first = scp_cfg(tmp_path / "a", backbones["qwen2"], max_rows=4, max_steps=2)
    train(first)
    second = scp_cfg(tmp_path / "b", backbones["qwen2"], max_rows=4, max_steps=2, init=str(tmp_path / "a" / "run" / "final"),
                     model={"compression_ratio": 4})
    train(second)
    assert ClaraModel.from_pretrained(tmp_path / "b" / "run" / "final").config.n_mem == 8


def test_stage_continues_with_a_higher_adapter_rank(tmp_path, backbones):
    """init= a checkpoint with model.adapter_r.compressor raised: the first step's loss is the
    plain continuation's (the grown adapter starts as the same function), the run trains the new
    directions and saves the higher rank."""
    first = scp_cfg(tmp_path / "a", backbones["gemma3"], max_rows=4, max_steps=2)
    train(first)
    init = str(tmp_path / "a" / "run" / "final")
    plain = scp_cfg(tmp_path / "b", backbones["gemma3"], max_rows=4, max_steps=3, init=init)
    train(plain)
    grown = scp_cfg(tmp_path / "c", backbones["gemma3"], max_rows=4, max_steps=3, init=init,
                    model={"adapter_r": {"compressor": 8}})
    train(grown)
    a, b = metrics(tmp_path / "b" / "run"), metrics(tmp_path / "c" / "run")
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=1e-5)
    assert b[-1]["loss"] != pytest.approx(a[-1]["loss"], rel=1e-5)  # the new directions trained
    saved = ClaraModel.from_pretrained(tmp_path / "c" / "run" / "final")
    assert saved.config.rank("compressor") == 8 and saved.config.rank("generator") == 4
    b_cols = [p for p in saved.adapter_parameters("compressor") if p.shape[-1] == 8]  # lora_B: (out, 8)
    assert b_cols and any(p[:, 4:].abs().max() > 0 for p in b_cols)


def test_text_stage_trains_the_generator_on_raw_text(tmp_path, backbones):
    from clara.train import text
    from clara.train.batch import Batch
    from clara.data.qa import load_qa

    train(qa_cfg(tmp_path, "text", backbone=backbones["qwen2"]))
    losses = [m["loss"] for m in metrics(tmp_path / "text")]
    assert losses[-1] < losses[0]
    after = ClaraModel.from_pretrained(tmp_path / "text" / "final")
    a = dict(after.named_parameters())
    assert any(n for n in a if ".generator." in n and "lora_B" in n and a[n].abs().sum() > 0)
    # only the generator trains: the other adapters' lora_B stay at their zero init
    assert all(a[n].abs().sum() == 0 for n in a if "lora_B" in n and ".generator." not in n)
    assert after.config.n_mem == tiny_config(backbones["qwen2"]).n_mem
    # the prompt holds the documents' text (the gold paragraphs of the fixture question are in it)
    exs = load_qa(FIXTURES / "hotpot_distractor.json")[:1]
    seen: list[str] = []
    after.generator_loss = lambda prompts, *a, **k: seen.extend(prompts) or torch.zeros(len(prompts))  # type: ignore[method-assign]
    text.make_step(qa_cfg(tmp_path, "text", k_docs=3))(after, Batch(exs, [0], 0))
    assert all(d.text[:20] in seen[0] for d in exs[0].docs) and "<MEM0>" not in seen[0]


def test_dev_split_rows_stay_out_of_stage1(tmp_path, caplog):
    """Split ids are "file stem:line": the file under its own name keeps its dev rows out of training
    (they become the held-out rows), a renamed copy matches none and says so."""
    from clara.train.run import scp_data

    split = json.loads((Path(__file__).parents[1] / "splits" / "dev.json").read_text())
    dev_ids = set(split["scp"]["ids"])
    named = tmp_path / Path(split["scp"]["file"]).name
    named.write_text(SCP.read_text())
    cfg = TrainConfig(stage="scp", output_dir=str(tmp_path / "run"), data=[str(named)], eval_every=10, eval_rows=8)
    rows, held = scp_data(cfg, dev_ids)
    assert len(held) == 8 and all(r.doc_id in dev_ids for r in held)
    assert not any(r.doc_id in dev_ids for r in rows) and len(rows) == 1000 - len(dev_ids)
    renamed = tmp_path / "scp.jsonl"
    renamed.write_text(SCP.read_text())
    with caplog.at_level("WARNING", logger="clara.train.run"):
        rows, held = scp_data(TrainConfig(**{**cfg.to_dict(), "data": [str(renamed)]}), dev_ids)
    assert "no SCP row is in the dev split" in caplog.text and len(rows) == 1000 - 8


def test_default_configs_read_the_split_file_by_its_name():
    root = Path(__file__).parents[1]
    split_name = Path(json.loads((root / "splits" / "dev.json").read_text())["scp"]["file"]).name
    for name in ("scp.yaml", "scp_cpu.yaml"):
        cfg = TrainConfig.load(root / "configs" / "default" / name)
        assert [Path(p).name for p in cfg.data] == [split_name]


def test_corpus_negatives_reach_the_training_questions(tmp_path: Path):
    """corpus_negatives: questions of a file with a passage corpus read BM25's answer-free
    negatives next to their gold passages; files without a corpus are loaded unchanged."""
    from clara.train.run import qa_data

    corpus = [{"title": t, "text": f"{t} is a river in the north. {t} flows east."} for t in ("Avon", "Tees", "Wear")]
    corpus.append({"title": "Tyne", "text": "Tyne is a river in the north; it flows east into the sea at Tynemouth."})
    (tmp_path / "corpus.json").write_text(json.dumps(corpus))
    questions = [{"id": "q", "question_type": "compositional", "question": "Where does the river Tyne flow into the sea?",
                  "answer": "Tynemouth", "evidence": [["Tyne", "mouth", "Tynemouth"]]}]
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (ex,) = qa_data(TrainConfig(stage="instruct", data=[str(tmp_path / "q.json")], corpus_negatives=2), set())
    assert ex.gold_ids == ["Tyne"] and len(ex.docs) == 3 and {d.id for d in ex.docs[1:]} <= {"Avon", "Tees", "Wear"}
    (plain,) = qa_data(TrainConfig(stage="instruct", data=[str(tmp_path / "q.json")]), set())
    assert [d.id for d in plain.docs] == ["Tyne"]
    with pytest.raises(ValueError, match="needs QA training data"):  # the only question is excluded
        qa_data(TrainConfig(stage="instruct", data=[str(tmp_path / "q.json")], corpus_negatives=2), {"q"})
    with pytest.raises(ValueError, match="corpus_negatives"):
        TrainConfig(corpus_negatives=-1)


def test_token_kl_matches_hand_computation():
    from clara.train.reader_distill import token_kl

    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    teacher = torch.tensor([[0.0, 2.0, 0.0], [0.5, 0.5, 2.0]])
    for t in (1.0, 2.0):
        p = torch.softmax(teacher / t, -1)
        q = torch.softmax(student / t, -1)
        hand = t * t * (p * (p.log() - q.log())).sum(-1)
        assert torch.allclose(token_kl(student, teacher, t), hand, atol=1e-6)
    kl = token_kl(student, teacher, 1.0)
    assert kl[0] > 0.5 and abs(kl[1]) < 1e-6  # same distribution: no loss
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    token_kl(student, teacher, 1.0).sum().backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None  # the teacher is a constant


def test_reader_teacher_reads_the_same_documents_as_text(backbones):
    from clara.train.reader_distill import ReaderTeacher, answer_losses

    model = ClaraModel.from_backbone(tiny_config(backbones["mistral"]))
    perturb_lora(model, 0.5)  # peaked distributions, so reading memory instead of text shows
    teacher = ReaderTeacher(model, temperature=2.0)
    questions, answers = ["Who edits Thrasher?", "Where is the tower?"], ["Jake Phelps", "Paris"]
    texts = [DOCS[:2], DOCS[1:]]
    # a student that reads the very same text prompts with the teacher's weights matches it exactly
    prompts = [tokens.text_prompt(model.tokenizer, q, t, model.config.doc_max_len) for q, t in zip(questions, texts)]
    none = [torch.zeros(0, model.config.n_mem, model.hidden_size)] * 2
    ce, kl = answer_losses(model, prompts, answers, none, 16, teacher, questions, texts)
    assert kl is not None and kl.shape == (2,) and kl.abs().max() < 1e-5
    assert torch.allclose(ce, model.generator_loss(prompts, answers, none, per_example=True, max_target_len=16))
    # reading compressed memory instead, it does not, and the KL is per question
    states = model.compress(DOCS).detach()
    mem = [states[:2], states[1:]]
    ce2, kl2 = answer_losses(model, model.answer_prompts(questions, [2, 2]), answers, mem, 16, teacher, questions, texts)
    assert (kl2 > 1e-3).all(), kl2
    ce1, kl1 = answer_losses(model, model.answer_prompts(questions[:1], [2]), answers[:1], mem[:1], 16, teacher,
                             questions[:1], texts[:1])
    assert torch.allclose(kl1, kl2[:1], atol=1e-5) and torch.allclose(ce1, ce2[:1], atol=1e-5)
    with pytest.raises(ValueError, match="questions and document texts"):
        answer_losses(model, prompts, answers, none, 16, teacher)
    # the teacher reads the text cut where the student's compressor cuts it, not at its own length
    short = ClaraModel.from_backbone(tiny_config(backbones["mistral"], doc_max_len=8))
    seen: list = []
    real = model.target_logits
    model.target_logits = lambda p, *a, **k: seen.extend(p) or real(p, *a, **k)  # type: ignore[method-assign]
    st = short.compress(DOCS).detach()
    answer_losses(short, short.answer_prompts(questions, [2, 2]), answers, [st[:2], st[1:]], 16, teacher, questions, texts)
    assert seen == [tokens.text_prompt(model.tokenizer, q, t, 8) for q, t in zip(questions, texts)]


def test_reader_teacher_distils_into_instruct_and_e2e(tmp_path, backbones):
    from clara.data.qa import load_qa
    from clara.train import e2e
    from clara.train.reader_distill import ReaderTeacher

    train(qa_cfg(tmp_path, "text", backbone=backbones["qwen2"], max_steps=3))
    teacher_dir = tmp_path / "text" / "final"
    teacher_files = {p.name: p.read_bytes() for p in teacher_dir.iterdir() if p.is_file()}
    train(qa_cfg(tmp_path, "instruct", backbone=backbones["qwen2"], reader_teacher=str(teacher_dir), max_steps=6))
    rows = metrics(tmp_path / "instruct")
    assert all("reader_kl" in r and r["reader_kl"] > 0 for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    # the loss is the cross-entropy plus the weighted KL plus stage 2's memory terms
    assert all(r["loss"] == pytest.approx(r["ce"] + r["reader_kl"] + 0.1 * r["mse"], rel=1e-4) for r in rows)
    assert {p.name: p.read_bytes() for p in teacher_dir.iterdir() if p.is_file()} == teacher_files  # frozen

    # stage 3: the teacher reads the text of the candidates the student picked, in rank order
    model = ClaraModel.from_pretrained(tmp_path / "instruct" / "final")
    model.init_query_reasoner_from_compressor()
    model.set_trainable(("query_reasoner", "generator"), mem_rows=False)
    exs = e2e.add_candidates(load_qa(FIXTURES / "hotpot_distractor.json")[:2], 4, 0)
    cache = {d.id: s for ex in exs for d, s in zip(ex.docs, model.compress([d.full_text() for d in ex.docs]).detach())}
    teacher = ReaderTeacher.load(str(teacher_dir))
    seen: list = []
    real = teacher.logits
    teacher.logits = lambda q, texts, *a: seen.append(texts) or real(q, texts, *a)  # type: ignore[method-assign]
    cfg = TrainConfig(stage="e2e", k_docs=2, tau=1.0, reader_teacher=str(teacher_dir), reader_distill_weight=0.5)
    loss, parts = model(e2e.make_step(cfg, cache, teacher), Batch(exs, [0, 1], 0))
    loss.backward()
    q = model.encode_query([ex.question for ex in exs])
    picks = score_candidates(q, e2e.cached_candidates(cache, exs), model.config.retrieval_score).topk(2, -1).indices
    assert seen == [[[ex.docs[i].full_text() for i in row] for ex, row in zip(exs, picks.tolist())]]
    assert loss.item() == pytest.approx(parts["ce"] + 0.5 * parts["reader_kl"], rel=1e-4)
    named = dict(model.named_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in named.items() if ".generator." in n)
    assert all(p.grad is None for p in teacher.model.parameters())


def test_reader_teacher_config_is_checked():
    with pytest.raises(ValueError, match="reader_teacher distils answers in stages instruct and e2e"):
        TrainConfig(stage="scp", reader_teacher="runs/text/final")
    with pytest.raises(ValueError, match="reader_distill_weight must be >= 0"):
        TrainConfig(stage="instruct", reader_distill_weight=-1)
    with pytest.raises(ValueError, match="reader_distill_temperature must be > 0"):
        TrainConfig(stage="instruct", reader_distill_temperature=0)
