"""Apple's checkpoint format: a folder written the way Apple's code writes it, loaded here.

The reference side is built independently of ClaraModel, the way Apple's model is: a plain HF
causal LM with the CLaRa tokens added to the tokenizer, ``resize_token_embeddings``, LoRA
adapters injected under Apple's names, inputs built from Apple's string templates, padded to
a fixed width and run without position ids, states read from ``hidden_states[-1]``, documents
injected at Apple's slot offsets and decoded with ``generate(inputs_embeds=...)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoModelForCausalLM, AutoTokenizer

from clara import ClaraModel
from clara import apple, tokens
from clara.checkpoint import CheckpointError, read_meta
from clara.tokens import QA_SYSTEM

from .conftest import DOCS

RATE, DOC_LEN, R = 8, 32, 4
N_MEM = DOC_LEN // RATE
LONG_DOC = " ".join(["The tower in Paris is made of iron and was built for the fair."] * 12)  # > DOC_LEN tokens
QUESTIONS = ["Where is the Eiffel Tower?", "Who edits Thrasher magazine in San Francisco?"]


class AppleReference:
    """Apple's model, rebuilt from its description with plain transformers + peft."""

    def __init__(self, backbone: Path, names: list[str], different_mem_tokens: bool = True, seed: int = 0) -> None:
        tok = AutoTokenizer.from_pretrained(backbone, padding_side="left")
        self.mem = [f"<MEM{i}>" for i in range(N_MEM)] if different_mem_tokens else ["<MEM>"] * N_MEM
        tok.add_special_tokens({"additional_special_tokens": list(dict.fromkeys(self.mem)) + ["<AE>", "<ENC>", "<SEP>"]})
        self.tok = tok
        self.mem_ids = tok.convert_tokens_to_ids(self.mem)
        torch.manual_seed(seed)
        lm = AutoModelForCausalLM.from_pretrained(backbone, dtype=torch.float32)
        n_base = lm.get_input_embeddings().weight.shape[0]
        lm.resize_token_embeddings(len(tok))
        with torch.no_grad():  # "trained" memory-token rows
            emb = lm.get_input_embeddings().weight
            emb[n_base:] += 0.5 * torch.randn_like(emb[n_base:])
        lora = LoraConfig(task_type="CAUSAL_LM", r=R, lora_alpha=2 * R, target_modules="all-linear", lora_dropout=0.1)
        for name in names:
            inject_adapter_in_model(lora, lm, adapter_name=name)
        with torch.no_grad():
            for pname, p in lm.named_parameters():
                if "lora_B" in pname:
                    p.normal_(0, 0.05)
        self.lm = lm.eval()
        self.names = names

    def save(self, folder: Path, stage: str, decoder_model_name: str, **cfg_extra) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({n: get_peft_model_state_dict(self.lm, adapter_name=n) for n in self.names}, folder / "adapters.pth")
        torch.save(
            {k: v.detach() for k, v in self.lm.named_parameters() if "lm_head.weight" in k or "embed_tokens.weight" in k},
            folder / "decoder_first_last_layers.pth",
        )
        cfg = {"decoder_model_name": decoder_model_name, "compr_rate": RATE, "doc_max_length": DOC_LEN,
               "training_stage": stage, "generation_top_k": 2, "lora": True, "lora_r": R, "sep": True,
               "different_mem_tokens": len(set(self.mem)) > 1, "optimize_mem_tokens": True, "model_type": "CLaRa"}
        cfg.update(cfg_extra)
        (folder / "config.json").write_text(json.dumps(cfg))
        return folder

    def use(self, name: str) -> None:
        for module in self.lm.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_adapter(name)

    @torch.no_grad()
    def encode(self, texts: list[str], adapter: str) -> torch.Tensor:
        self.use(adapter)
        t = self.tok
        enc = t([f"<ENC>{t.bos_token}{x}{t.eos_token}" for x in texts], padding="max_length", max_length=DOC_LEN + 3,
                truncation=True, add_special_tokens=False, return_tensors="pt")
        mem = torch.tensor([self.mem_ids] * len(texts))
        ids = torch.cat([enc["input_ids"], mem], 1)
        mask = torch.cat([enc["attention_mask"], torch.ones_like(mem)], 1)
        hidden = self.lm(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        return hidden[torch.isin(ids, mem[0])].reshape(len(texts), N_MEM, -1)

    def prompt(self, question: str, k: int) -> str:
        docs = ("".join(self.mem) + "<SEP>") * k
        messages = [{"role": "system", "content": QA_SYSTEM},
                    {"role": "user", "content": f"Background:\n{docs}\n\nQuestion:{question}"}]
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    @torch.no_grad()
    def inputs(self, questions: list[str], states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """states (B, k, n_mem, H) -> inputs_embeds, attention_mask with Apple's slot offsets."""
        k = states.shape[1]
        dec = self.tok([self.prompt(q, k) for q in questions], padding="longest", add_special_tokens=False,
                       return_tensors="pt")
        ids = dec["input_ids"]
        embeds = self.lm.get_input_embeddings()(ids).clone()
        first = (ids == self.mem_ids[0]).int().argmax(1)
        for b in range(len(questions)):
            for j in range(k):
                start = int(first[b]) + j * (N_MEM + 1)  # sep=True: one <SEP> after each run
                embeds[b, start : start + N_MEM] = states[b, j]
        return embeds, dec["attention_mask"]

    @torch.no_grad()
    def next_logits(self, questions: list[str], states: torch.Tensor) -> torch.Tensor:
        embeds, mask = self.inputs(questions, states)
        self.use("decoder_adapter")
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits[:, -1]

    @torch.no_grad()
    def generate(self, questions: list[str], states: torch.Tensor, max_new_tokens: int = 8) -> list[str]:
        embeds, mask = self.inputs(questions, states)
        self.use("decoder_adapter")
        out = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                               pad_token_id=self.tok.pad_token_id, temperature=None, top_p=None, top_k=None)
        return [s.strip() for s in self.tok.batch_decode(out, skip_special_tokens=True)]


E2E = ["encoder_adapter", "decoder_adapter", "query_reasoner_adapter"]


@pytest.fixture(scope="module")
def e2e(backbones, tmp_path_factory):
    ref = AppleReference(backbones["mistral"], E2E)
    folder = ref.save(tmp_path_factory.mktemp("apple") / "compression-8", "stage2", str(backbones["mistral"]))
    return ref, folder


@pytest.fixture(scope="module")
def loaded(e2e) -> ClaraModel:
    return ClaraModel.from_pretrained(e2e[1], dtype="float32", device="cpu")


def our_logits(model: ClaraModel, questions: list[str], states: list[torch.Tensor]) -> torch.Tensor:
    ids = model._tokenize_prompts(model.answer_prompts(questions, [s.shape[0] for s in states]))
    embeds, mask, _ = model._inputs(ids, states)
    with torch.no_grad(), model.adapter("generator"):
        hidden = model.lm.get_decoder()(inputs_embeds=embeds, attention_mask=mask,
                                        position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).last_hidden_state
        return model.lm.get_output_embeddings()(hidden[:, -1])


def test_config_mapping(loaded: ClaraModel, e2e):
    cfg = loaded.config
    assert (cfg.compression_ratio, cfg.doc_max_len, cfg.query_max_len, cfg.n_mem) == (RATE, DOC_LEN, DOC_LEN, N_MEM)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.prompt_style) == (R, 2 * R, "apple")
    assert not any(p.requires_grad for p in loaded.parameters())
    ref = e2e[0]
    # the CLaRa rows: Apple's resized embedding rows, one to one, in Apple's token order
    rows = ref.lm.get_input_embeddings().weight[loaded.special.first_new:]
    torch.testing.assert_close(loaded.mem_rows, rows)
    assert ref.tok.convert_tokens_to_ids(["<MEM0>", "<AE>", "<ENC>", "<SEP>"]) == [
        loaded.special.mem[0], loaded.special.ae, loaded.special.enc, loaded.special.sep]


def test_compress_score_generate_equal_apple(loaded: ClaraModel, e2e):
    ref = e2e[0]
    docs = DOCS + [LONG_DOC]
    with torch.no_grad():
        d = loaded.compress(docs)
        q = loaded.encode_query(QUESTIONS)
    d_ref, q_ref = ref.encode(docs, "encoder_adapter"), ref.encode(QUESTIONS, "query_reasoner_adapter")
    torch.testing.assert_close(d, d_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(q, q_ref, atol=1e-4, rtol=1e-4)
    # Apple's score: cosine of the flattened states
    s_ref = F.normalize(q_ref.flatten(1), dim=-1) @ F.normalize(d_ref.flatten(1), dim=-1).T
    torch.testing.assert_close(loaded.score(q, d), s_ref, atol=1e-5, rtol=1e-5)
    # generation from two documents each, in rank order
    top = loaded.score(q, d).topk(2, dim=1).indices
    states = [d[top[b]] for b in range(len(QUESTIONS))]
    torch.testing.assert_close(our_logits(loaded, QUESTIONS, states), ref.next_logits(QUESTIONS, torch.stack(states))
                               [:, : loaded.special.first_new], atol=1e-4, rtol=1e-4)
    assert loaded.generate(QUESTIONS, states, max_new_tokens=8) == ref.generate(QUESTIONS, torch.stack(states))


def test_truncation_is_apples(loaded: ClaraModel):
    tok = loaded.tokenizer
    short = "Paris is in France."
    assert len(tok(short)["input_ids"]) < DOC_LEN
    ids, cut = apple.compressor_ids(tok, [LONG_DOC, short], DOC_LEN, loaded.special)
    body = tok(LONG_DOC, add_special_tokens=False)["input_ids"]
    assert cut == 1
    # Apple cuts "<ENC> bos text eos" to doc_max_length + 3: doc_max_length + 1 text tokens, no eos
    assert ids[0] == [loaded.special.enc, tok.bos_token_id] + body[: DOC_LEN + 1] + list(loaded.special.mem)
    assert ids[1][-N_MEM - 1] == tok.eos_token_id
    # this project's own layout keeps doc_max_len text tokens and the eos
    ours, _ = tokens.compressor_ids(tok, [LONG_DOC], DOC_LEN, loaded.special)
    assert ours[0] != ids[0] and ours[0][-N_MEM - 1] == tok.eos_token_id


def test_instruct_keeps_generator_and_inits_query_reasoner(backbones, tmp_path):
    ref = AppleReference(backbones["mistral"], E2E[:2], seed=3)
    folder = ref.save(tmp_path / "instruct", "stage1_2", str(backbones["mistral"]))
    model = ClaraModel.from_pretrained(folder, dtype="float32", device="cpu")
    gen = get_peft_model_state_dict(model.peft, adapter_name="generator")
    want = get_peft_model_state_dict(ref.lm, adapter_name="decoder_adapter")
    assert len(gen) == len(want)
    for key, value in want.items():
        torch.testing.assert_close(gen["base_model.model." + key], value)
    with torch.no_grad():
        d = model.compress(DOCS)
        # no query reasoner in an Instruct folder: it starts as the compressor
        torch.testing.assert_close(model.encode_query(QUESTIONS), ref.encode(QUESTIONS, "encoder_adapter"),
                                   atol=1e-4, rtol=1e-4)
    states = [d[:1], d[1:3]]
    assert model.generate(QUESTIONS[:1], states[:1], max_new_tokens=8) == ref.generate(QUESTIONS[:1], d[None, :1])


def test_single_mem_token_folders(backbones, tmp_path):
    """different_mem_tokens=false: one <MEM> row repeated; every <MEM{i}> here copies it."""
    ref = AppleReference(backbones["mistral"], E2E, different_mem_tokens=False, seed=5)
    folder = ref.save(tmp_path / "single", "stage2", str(backbones["mistral"]))
    model = ClaraModel.from_pretrained(folder, dtype="float32", device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model.compress(DOCS), ref.encode(DOCS, "encoder_adapter"), atol=1e-4, rtol=1e-4)


def test_backbone_override_and_errors(e2e, backbones, tmp_path):
    ref, folder = e2e
    moved = tmp_path / "moved"
    ref.save(moved, "stage2", "/mnt/ceph_rbd/model/Mistral-7B-Instruct-v0.2")
    with pytest.raises(CheckpointError, match="--backbone"):
        ClaraModel.from_pretrained(moved, device="cpu")
    model = ClaraModel.from_pretrained(moved, backbone=str(backbones["mistral"]), dtype="float32", device="cpu")
    assert model.config.backbone == str(backbones["mistral"])
    with pytest.raises(CheckpointError, match="rows|differ|hidden size"):
        ClaraModel.from_pretrained(folder, backbone=str(backbones["llama"]), device="cpu")
    bad = tmp_path / "bad"
    ref.save(bad, "stage2", str(backbones["mistral"]))
    torch.save({"encoder_adapter": {}, "mystery_adapter": {}}, bad / "adapters.pth")
    with pytest.raises(CheckpointError, match="unknown adapters"):
        ClaraModel.from_pretrained(bad, device="cpu")
    torch.save({"encoder_adapter": {}}, bad / "adapters.pth")
    with pytest.raises(CheckpointError, match="decoder_adapter"):
        ClaraModel.from_pretrained(bad, device="cpu")
    ref.save(bad, "stage2", str(backbones["mistral"]), lora_r=2 * R)
    with pytest.raises(CheckpointError, match="shape"):
        ClaraModel.from_pretrained(bad, device="cpu")


def test_convert_and_write_round_trip(loaded: ClaraModel, e2e, tmp_path):
    ref, folder = e2e
    apple.convert_apple_checkpoint(folder, tmp_path / "ours", store_dtype=torch.float32, dtype="float32",
                                   device="cpu")
    meta = read_meta(tmp_path / "ours")
    assert meta["converted_from"]["release"] == "E2E" and meta["clara_config"]["prompt_style"] == "apple"
    again = ClaraModel.from_pretrained(tmp_path / "ours", dtype="float32")
    with torch.no_grad():
        torch.testing.assert_close(again.compress(DOCS), loaded.compress(DOCS))
        torch.testing.assert_close(again.encode_query(QUESTIONS), loaded.encode_query(QUESTIONS))

    # and back to Apple's format: same keys, shapes and values as the folder Apple's code wrote
    apple.write_apple_checkpoint(again, tmp_path / "back", training_stage="stage2")
    src_a = torch.load(folder / "adapters.pth", weights_only=True)
    out_a = torch.load(tmp_path / "back" / "adapters.pth", weights_only=True)
    assert src_a.keys() == out_a.keys()
    for name in src_a:
        assert src_a[name].keys() == out_a[name].keys()
        for key in src_a[name]:
            torch.testing.assert_close(out_a[name][key], src_a[name][key])
    src_l = torch.load(folder / "decoder_first_last_layers.pth", weights_only=True)
    out_l = torch.load(tmp_path / "back" / "decoder_first_last_layers.pth", weights_only=True)
    assert src_l.keys() == out_l.keys()
    torch.testing.assert_close(out_l["model.embed_tokens.weight"], src_l["model.embed_tokens.weight"])
    assert out_l["lm_head.weight"].shape == src_l["lm_head.weight"].shape
    # Apple's generator reads raw states: a model that reads them otherwise cannot be written
    again.config.mem_readout = "soft_tokens"
    with pytest.raises(ValueError, match="raw memory states"):
        apple.write_apple_checkpoint(again, tmp_path / "soft", training_stage="stage2")
    assert not (tmp_path / "soft").exists()
    back = ClaraModel.from_pretrained(tmp_path / "back", dtype="float32", device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(back.compress(DOCS), loaded.compress(DOCS))


def test_convert_cli(e2e, tmp_path):
    from typer.testing import CliRunner

    from clara.cli import app

    result = CliRunner().invoke(app, ["convert", "--from-apple", str(e2e[1]), "--out", str(tmp_path / "c"),
                                      "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    assert read_meta(tmp_path / "c")["converted_from"]["training_stage"] == "stage2"


def test_apple_prompts(loaded: ClaraModel, e2e, backbones):
    ref = e2e[0]
    assert loaded.answer_prompts(["Who?"], [2])[0] == ref.prompt("Who?", 2)
    para = apple.build_prompt(loaded.tokenizer, "paraphrase", 1, N_MEM)
    assert "paraphrase the background information" in para
    assert "Background: <MEM0><MEM1><MEM2><MEM3><SEP> means the same as" in para
    with pytest.raises(ValueError, match="reconstruct"):
        apple.build_prompt(loaded.tokenizer, "reconstruct", 1, N_MEM)
    # a template without a system role: Apple folds the system text in with a single newline
    gemma = AutoTokenizer.from_pretrained(backbones["gemma3"])
    folded = apple.chat(gemma, "SYSTEM", "USER")
    assert "SYSTEM\nUSER" in folded and "SYSTEM\n\nUSER" not in folded
