"""LangChain / LlamaIndex retrievers: run when those packages are installed."""

from __future__ import annotations

import pytest
import torch

from clara import ClaraModel, ClaraRAG
from clara.data.corpus import read_corpus
from clara.demo import CORPUS
from clara.index import add_documents, open_or_create

from .conftest import perturb_lora, tiny_config


@pytest.fixture(scope="module")
def rag(backbones, tmp_path_factory) -> ClaraRAG:
    torch.manual_seed(1)
    model = ClaraModel.from_backbone(tiny_config(backbones["llama"]))
    perturb_lora(model)
    index = open_or_create(model.eval(), tmp_path_factory.mktemp("int") / "idx")
    add_documents(model, index, list(read_corpus(CORPUS))[:30], progress=False)
    return ClaraRAG(model, index)


def test_langchain_retriever(rag):
    pytest.importorskip("langchain_core")
    from clara.integrations.langchain import ClaraRetriever

    docs = ClaraRetriever(rag=rag, k=4).invoke("Who was Teutberga?")
    want = rag.retrieve(["Who was Teutberga?"], k=4)[0]
    assert [d.metadata["id"] for d in docs] == [s.id for s in want]
    assert [d.page_content for d in docs] == [s.text for s in want]
    assert docs[0].metadata["score"] == pytest.approx(want[0].score)


def test_llamaindex_retriever(rag):
    pytest.importorskip("llama_index.core")
    from clara.integrations.llamaindex import ClaraLlamaRetriever

    nodes = ClaraLlamaRetriever(rag, k=3).retrieve("Who was Teutberga?")
    want = rag.retrieve(["Who was Teutberga?"], k=3)[0]
    assert [n.node.node_id for n in nodes] == [s.id for s in want]
    assert [n.score for n in nodes] == pytest.approx([s.score for s in want])
    assert [n.node.metadata for n in nodes] == [{**s.meta, "title": s.title} for s in want]
