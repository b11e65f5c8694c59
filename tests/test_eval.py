"""The evaluation runner end to end on a tiny random CLaRa model, plus pooling and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clara import ClaraModel
from clara.data.qa import load_qa
from clara.eval.runner import EvalConfig, _labels, candidates, pool_documents, run_eval, split_ids
from clara.io import DataError

from .conftest import perturb_lora, tiny_config

FIX = Path(__file__).parent / "fixtures" / "qa"
OUTPUTS = ["config.json", "predictions.jsonl", "metrics.json", "results.md", "f1_vs_ratio.png", "recall_at_k.png",
           "latency.png"]


@pytest.fixture(scope="module")
def tiny_checkpoints(backbones, tmp_path_factory) -> list[Path]:
    """Two tiny checkpoints at different compression ratios on one backbone."""
    root = tmp_path_factory.mktemp("ckpts")
    paths = []
    for ratio in (4, 8):
        torch.manual_seed(ratio)
        model = ClaraModel.from_backbone(tiny_config(backbones["llama"], compression_ratio=ratio))
        perturb_lora(model)
        model.save_pretrained(root / f"cr{ratio}")
        paths.append(root / f"cr{ratio}")
    return paths


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_pool_documents_dedups_by_text():
    ex = load_qa(FIX / "hotpot_distractor.json")
    pool, canonical = pool_documents(ex)
    # 'Eiffel Tower' paragraph 0 of hp2 is a shorter text than hp1's: not a duplicate
    assert len(pool) == len({d.full_text() for e in ex for d in e.docs})
    docs, gold = candidates(ex, "normal")
    assert docs[0] is docs[1] and all(g <= {d.id for d in pool} for g in gold)
    docs, gold = candidates(ex, "oracle")
    assert [len(d) for d in docs] == [3, 3] and gold[0] == {"hp1:0", "hp1:1"}


def test_end_to_end_run_writes_every_output(tiny_checkpoints, tmp_path: Path):
    out = tmp_path / "run"
    cfg = EvalConfig(
        data=str(FIX / "hotpot_distractor.json"), out_dir=str(out), setting="oracle",
        systems=["clara", "closed-book", "full-text", "gold-text", "bm25", "minilm"],
        checkpoints=[str(p) for p in tiny_checkpoints], top_k=2, limit=2, max_new_tokens=4, batch_size=2,
        device="cpu", progress=False,
    )
    metrics = run_eval(cfg)
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    systems = metrics["systems"]
    expected = {"clara@cr4", "clara@cr8", "closed-book", "full-text@cr4", "full-text@cr8", "gold-text", "bm25", "minilm"}
    assert set(systems) == expected
    rows = _rows(out / "predictions.jsonl")
    assert len(rows) == 2 * len(expected)
    for r in rows:
        assert isinstance(r["prediction"], str) and set(r["scores"]) >= {"em", "f1", "cover_em", "acc"}
        assert r["gold"] and r["question"]
    # the gold retriever finds every gold document; closed-book retrieves nothing
    assert systems["gold-text"]["recall@3"] == 100.0
    assert "recall@1" not in systems["closed-book"]
    by_id = {(r["system"], r["id"]): r for r in rows}
    assert by_id[("gold-text", "hp1")]["retrieved"] == ["hp1:0", "hp1:1"]
    # BM25 on 'Are the Eiffel Tower and Big Ben both in France?' ranks the two gold paragraphs first
    assert set(by_id[("bm25", "hp2")]["retrieved"]) == {"hp2:0", "hp2:1"}
    assert systems["clara@cr4"]["info"]["compression_ratio"] == 4
    assert set(systems["clara@cr4"]["by_type"]) == {"bridge", "comparison"}
    # metrics.json holds what run_eval returned; results.md names every system
    assert json.loads((out / "metrics.json").read_text())["systems"]["bm25"]["n"] == 2
    table = (out / "results.md").read_text()
    assert all(f"| {name} |" in table for name in expected)


def test_resume_skips_done_questions(tiny_checkpoints, tmp_path: Path):
    out = tmp_path / "run"
    cfg = EvalConfig(data=str(FIX / "nq_ctxs.jsonl"), out_dir=str(out), systems=["clara", "bm25"],
                     checkpoints=[str(tiny_checkpoints[1])], top_k=1, max_new_tokens=3, device="cpu",
                     progress=False, setting="normal")
    first = run_eval(cfg)
    rows = _rows(out / "predictions.jsonl")
    assert len(rows) == 4
    # simulate a kill during the last write: a torn final line
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(lines[:-1]) + lines[-1][:20])
    again = run_eval(cfg)
    text = (out / "predictions.jsonl").read_text()
    rows = [json.loads(x) for x in text.splitlines() if x.strip().endswith("}")]
    assert len(rows) == 4  # only the lost row was recomputed
    assert again["systems"]["bm25"]["recall@1"] == first["systems"]["bm25"]["recall@1"]
    # normal setting: both questions rank the same pooled 5 passages
    assert first["setting"] == "normal"
    changed = EvalConfig(**{**cfg.__dict__, "top_k": 2})
    with pytest.raises(ValueError, match="different settings"):
        run_eval(changed)


def test_retrieval_only(tiny_checkpoints, tmp_path: Path):
    cfg = EvalConfig(data=str(FIX / "2wiki_dev.jsonl"), out_dir=str(tmp_path), retrieval_only=True,
                     systems=["clara", "closed-book", "bm25"], checkpoints=[str(tiny_checkpoints[0])],
                     device="cpu", progress=False)
    metrics = run_eval(cfg)
    assert set(metrics["systems"]) == {"clara", "bm25"}
    for s in metrics["systems"].values():
        assert "f1" not in s and 0 <= s["recall@5"] <= 100
    # 3 gold paragraphs among 4: Recall@5 covers them all whatever the order
    assert metrics["systems"]["bm25"]["recall@5"] == 100.0
    assert (tmp_path / "recall_at_k.png").is_file()


def test_resume_refuses_a_checkpoint_retrained_in_place(tiny_checkpoints, tmp_path: Path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints[0], ckpt)
    cfg = EvalConfig(data=str(FIX / "2wiki_dev.jsonl"), out_dir=str(tmp_path / "run"), retrieval_only=True,
                     systems=["clara"], checkpoints=[str(ckpt)], device="cpu", progress=False)
    run_eval(cfg)
    run_eval(cfg)  # same weights: resumes
    model = ClaraModel.from_pretrained(ckpt, device="cpu")
    with torch.no_grad():  # only the generator changes: retrieval-only rows would still be stale answers elsewhere
        next(p for n, p in model.named_parameters() if ".generator." in n and "lora_B" in n).add_(0.1)
    model.save_pretrained(ckpt)
    with pytest.raises(ValueError, match="other weights under the checkpoint label"):
        run_eval(cfg)


def test_checkpoints_named_alike_get_distinct_labels(tiny_checkpoints, tmp_path: Path):
    import shutil

    # `clara train` writes every run to OUTPUT_DIR/final: two such checkpoints must not share predictions
    assert _labels(["runs/a/final", "runs/b/final", "default"]) == ["a/final", "b/final", "default"]
    assert _labels(["x/final", "y/x/final"]) == ["x/final", "y/x/final"]
    with pytest.raises(ValueError, match="given twice"):
        EvalConfig(data="q.json", checkpoints=["runs/a/final", "runs/a/final/"])
    for name, src in (("a", tiny_checkpoints[0]), ("b", tiny_checkpoints[1])):
        shutil.copytree(src, tmp_path / name / "final")
    cfg = EvalConfig(data=str(FIX / "2wiki_dev.jsonl"), out_dir=str(tmp_path / "run"), retrieval_only=True,
                     systems=["clara"], checkpoints=[str(tmp_path / n / "final") for n in "ab"], device="cpu",
                     progress=False)
    metrics = run_eval(cfg)
    assert set(metrics["systems"]) == {"clara@a/final", "clara@b/final"}
    assert [s["info"]["compression_ratio"] for s in metrics["systems"].values()] == [4, 8]


def test_resume_refuses_another_single_checkpoint(tiny_checkpoints, tmp_path: Path):
    # one checkpoint's systems are named 'clara' whatever the checkpoint: a second one must not reuse its rows
    def cfg(ckpt: Path) -> EvalConfig:
        return EvalConfig(data=str(FIX / "2wiki_dev.jsonl"), out_dir=str(tmp_path / "run"), retrieval_only=True,
                          systems=["clara"], checkpoints=[str(ckpt)], device="cpu", progress=False)

    run_eval(cfg(tiny_checkpoints[0]))
    with pytest.raises(ValueError, match="other weights"):
        run_eval(cfg(tiny_checkpoints[1]))


def test_eval_config_refuses_what_it_would_ignore():
    with pytest.raises(ValueError, match="pool_corpus"):
        EvalConfig(data="q.json", pool_corpus="c.jsonl")  # oracle setting: nothing is pooled
    for field_name in ("limit", "batch_size", "max_new_tokens", "top_k"):
        with pytest.raises(ValueError, match=field_name):
            EvalConfig(data="q.json", **{field_name: 0})


def test_split_ids_forms_and_errors(tmp_path: Path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"a": {"ids": ["1", "2"], "titles": []}, "b": {"ids": ["3"]}}))
    assert split_ids(f) == {"1", "2", "3"}
    f.write_text(json.dumps(["4", "5"]))
    assert split_ids(f) == {"4", "5"}
    f.write_text('{"a": {"ids": [1]}}')
    with pytest.raises(DataError, match="list of strings"):
        split_ids(f)
    f.write_text('{"a": \n oops}')
    with pytest.raises(DataError, match=r"s\.json: invalid JSON at line 2"):
        split_ids(f)


def test_cli_closed_book_on_flashrag(backbones, tmp_path: Path):
    from typer.testing import CliRunner

    from clara.cli import app

    out = tmp_path / "run"
    args = ["eval", str(FIX / "flashrag.jsonl"), "--out", str(out), "--system", "closed-book",
            "--backbone", str(backbones["qwen2"]), "--max-new-tokens", "3", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["systems"]["closed-book"]["n"] == 2 and "recall@1" not in metrics["systems"]["closed-book"]
    bad = CliRunner().invoke(app, ["eval", str(FIX / "flashrag.jsonl"), "--out", str(tmp_path / "x"),
                                   "--system", "nonsense"])
    assert bad.exit_code == 2 and "unknown systems" in bad.output  # a user error, as in every command


def test_split_file_limits_the_questions(tiny_checkpoints, tmp_path: Path):
    ids = [ex.id for ex in load_qa(FIX / "2wiki_dev.jsonl")]
    split = tmp_path / "dev.json"
    split.write_text(json.dumps({"2wikimultihopqa": {"ids": ids[-1:], "titles": []}}))
    cfg = EvalConfig(data=str(FIX / "2wiki_dev.jsonl"), out_dir=str(tmp_path / "run"), retrieval_only=True,
                     systems=["bm25"], split=str(split), device="cpu", progress=False)
    run_eval(cfg)
    rows = [json.loads(l) for l in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == {ids[-1]}


def test_full_text_lora_reads_text_with_the_text_checkpoint(tiny_checkpoints, tmp_path: Path):
    out = tmp_path / "run"
    base = dict(data=str(FIX / "hotpot_distractor.json"), out_dir=str(out), checkpoints=[str(tiny_checkpoints[0])],
                top_k=2, limit=2, max_new_tokens=4, batch_size=2, device="cpu", progress=False)
    with pytest.raises(ValueError, match="text_checkpoint"):
        EvalConfig(**base, systems=["full-text-lora"])
    # any CLaRa-format checkpoint works as the text reader; its generator adapter reads
    cfg = EvalConfig(**base, systems=["full-text", "full-text-lora", "gold-text-lora"], text_checkpoint=str(tiny_checkpoints[1]))
    systems = run_eval(cfg)["systems"]
    assert set(systems) == {"full-text", "full-text-lora", "gold-text-lora"}
    rows = {(r["system"], r["id"]): r for r in _rows(out / "predictions.jsonl")}
    # same retriever (CLaRa's top-k) as full-text, a different reader (perturbed LoRA vs plain backbone)
    assert rows[("full-text-lora", "hp1")]["retrieved"] == rows[("full-text", "hp1")]["retrieved"]
    assert rows[("gold-text-lora", "hp1")]["retrieved"] == ["hp1:0", "hp1:1"]


def test_clara_reader_on_gold_and_bm25_documents(tiny_checkpoints, tmp_path: Path):
    """gold-clara and bm25-clara: CLaRa's compressed reader on the gold documents / BM25's top-k,
    once per checkpoint; the answer is exactly what the model generates from those documents' memory."""
    out = tmp_path / "run"
    cfg = EvalConfig(data=str(FIX / "hotpot_distractor.json"), out_dir=str(out), checkpoints=[str(tiny_checkpoints[0])],
                     systems=["gold-clara", "bm25-clara", "bm25"], top_k=2, limit=2, max_new_tokens=4, batch_size=2,
                     device="cpu", progress=False)
    systems = run_eval(cfg)["systems"]
    assert set(systems) == {"gold-clara", "bm25-clara", "bm25"}
    assert systems["gold-clara"]["info"]["reader"] == "clara" and systems["gold-clara"]["info"]["compression_ratio"] == 4
    rows = {(r["system"], r["id"]): r for r in _rows(out / "predictions.jsonl")}
    assert rows[("gold-clara", "hp1")]["retrieved"] == ["hp1:0", "hp1:1"]
    assert rows[("bm25-clara", "hp2")]["retrieved"] == rows[("bm25", "hp2")]["retrieved"]
    model = ClaraModel.from_pretrained(tiny_checkpoints[0], device="cpu")
    ex = {e.id: e for e in load_qa(FIX / "hotpot_distractor.json")}["hp1"]
    gold = [d for d in ex.docs if d.id in ("hp1:0", "hp1:1")]
    with torch.no_grad():
        expected = model.generate([ex.question], [model.compress([d.full_text() for d in gold])], max_new_tokens=4)[0]
    assert rows[("gold-clara", "hp1")]["prediction"] == expected


def test_cli_names_the_checkpoint_with_model_as_other_commands_do(tiny_checkpoints, tmp_path: Path):
    from typer.testing import CliRunner

    from clara.cli import app

    out = tmp_path / "run"
    args = ["eval", str(FIX / "2wiki_dev.jsonl"), "--out", str(out), "--retrieval-only", "-s", "clara",
            "-m", str(tiny_checkpoints[1]), "--limit", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "metrics.json").read_text())["systems"]["clara"]["info"]
    assert info["compression_ratio"] == 8  # the checkpoint given (cr8), not the shipped one (ratio 4)
