"""ClaraModel: one frozen causal LM, three LoRA adapters, learned memory tokens.

    compress(texts)        compressor adapter:     text      -> (N, n_mem, H) memory states
    encode_query(qs)       query-reasoner adapter: question  -> (B, n_mem, H), same space
    score(q, d)            retrieval score (clara.score)    -> (B, N)
    generate(qs, states)   generator adapter: placeholders in the prompt replaced by states

Training (``clara.train``) calls exactly these pieces plus :meth:`ClaraModel.generator_loss`,
so what is trained is what is served.
"""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from . import score as scoring
from . import tokens
from .backbone import load_backbone
from .config import ADAPTERS, ClaraConfig

log = logging.getLogger(__name__)

# Merging an adapter (ClaraModel.merged) costs about one short forward (~0.25 s for SmolLM2-135M
# on one CPU thread) and saves the LoRA branches' share of every forward after it: worth it
# for a batch of documents, not for one question.
MERGE_MIN_TEXTS = 16

# A one-question prompt reuses the key/value cache of its head (system prompt and the text
# before the first memory slot: ~40 tokens, the same for every question) when it is at least this long.
PREFIX_MIN_TOKENS = 8

#: Parameter-name prefixes of the learned readout maps (trained with the generator adapter).
READOUT_MAPS = ("mem_proj.", "mem_split.")


def row_means(values: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of ``values`` (T,) per row index ``rows`` (T,): (n,); rows with no value get 0.

    Losses are averaged per example first, so a batch split over processes averages the same.
    """
    sums = torch.zeros(n, device=values.device, dtype=values.dtype).index_add_(0, rows, values)
    counts = torch.zeros(n, device=values.device, dtype=values.dtype).index_add_(0, rows, torch.ones_like(values))
    return sums / counts.clamp(min=1)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists: returns input_ids (B, T) and attention_mask (B, T)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


class SpanSplit(nn.Module):
    """``mem_readout="sub_spans"``: each memory state (H,) -> ``r`` states (r, H), one per sub-span.

    Low-rank residual maps on the unit state, in units of the state's norm::

        state_j = state + |state| * (unit(state) @ down[j]) @ up[j]

    with ``up`` at zero at first: every sub-state starts as the state itself, so a
    ``soft_tokens`` checkpoint continues as if each slot were read r times. Trained with the
    bag-of-words anchoring on r narrower spans (clara.train.bow), slot i's j-th row learns the
    words of the j-th of r parts of slot i's span: word order at a finer grain than one averaged
    row per slot, while the index stores and searches the n_mem states alone. (A LoRA-style
    map on the raw state, ``down`` at 1/sqrt(H), moved the rows by 1.5% of the state's norm
    in 125 steps at lr 5e-4: far too slow to learn anything; docs/training.md, session 20.)
    """

    def __init__(self, hidden: int, r: int, rank: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.randn(r, hidden, rank, dtype=dtype))  # (r, H, rank): unit state -> N(0, 1) codes
        self.up = nn.Parameter(torch.zeros(r, rank, hidden, dtype=dtype))  # (r, rank, H)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(M, H) -> (M, r, H)."""
        x = states.to(self.down.dtype)
        norm = x.norm(dim=-1, keepdim=True)  # (M, 1); zeroed states stay zero
        low = torch.einsum("mh,jhk->mjk", x / norm.clamp_min(1e-6), self.down)  # (M, r, rank)
        delta = torch.einsum("mjk,jkh->mjh", low, self.up) * norm.unsqueeze(1)  # (M, r, H)
        return (x.unsqueeze(1) + delta).to(states.dtype)


class ClaraModel(nn.Module):
    """A CLaRa model. Build with :meth:`from_backbone` or :meth:`from_pretrained`."""

    def __init__(
        self,
        config: ClaraConfig,
        lm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        special: tokens.SpecialTokens,
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.special = special

        def lora(name: str) -> LoraConfig:
            rank = config.rank(name)
            return LoraConfig(
                r=rank,
                # every adapter keeps the scale lora_alpha / lora_r whatever its rank, so a checkpoint's
                # adapter grown to a higher rank (checkpoint.load_weights) starts as the same function
                lora_alpha=config.lora_alpha * rank / config.lora_r,
                lora_dropout=config.lora_dropout,
                target_modules=config.lora_target_modules,
            )

        # peft injects LoRA layers into `lm` in place; `self.lm` keeps the plain HF interface
        self.peft: PeftModel = get_peft_model(lm, lora(ADAPTERS[0]), adapter_name=ADAPTERS[0])
        for name in ADAPTERS[1:]:
            self.peft.add_adapter(name, lora(name))
        self.lm = lm
        emb = lm.get_input_embeddings().weight  # (V, H)
        # New rows start at the mean embedding: in-distribution inputs from step 0.
        init = emb.detach().float().mean(0, keepdim=True).repeat(special.n_new, 1)
        init += 0.01 * emb.detach().float().std() * torch.randn_like(init)
        self.mem_rows = nn.Parameter(init.to(emb.dtype))  # (n_new, H): <MEM*>, <AE>, <ENC>, <SEP>
        # soft_tokens_linear: a learned map of the (unit) state, added to the soft token. It starts
        # at zero, so a soft_tokens checkpoint continues exactly where it was and the generator
        # can learn to read what the output head's softmax throws away (word order, for one).
        self.mem_proj: nn.Linear | None = None
        if config.mem_readout == "soft_tokens_linear":
            self.mem_proj = nn.Linear(emb.shape[1], emb.shape[1], bias=False).to(emb.dtype)
            nn.init.zeros_(self.mem_proj.weight)
        self.mem_split: SpanSplit | None = None
        if config.mem_readout == "sub_spans":
            self.mem_split = SpanSplit(emb.shape[1], config.readout_tokens, config.lora_r, emb.dtype)
        # adapter switching walks this list, not the whole module tree (peft's model-level
        # set_adapter/disable_adapter cost tens of ms per call: as much as a decode step on CPU)
        self._lora_layers = [m for m in self.peft.modules() if isinstance(m, LoraLayer)]
        self._lora_params: dict[str, list[nn.Parameter]] = {  # adapter -> its LoRA weights
            name: [
                p
                for layer in self._lora_layers
                for attr in layer.adapter_layer_names
                if name in getattr(layer, attr)
                for p in getattr(layer, attr)[name].parameters()
            ]
            for name in ADAPTERS
        }
        self._active: str | None = None  # the adapter the LoRA layers point at (None: branches off)
        self._activate(ADAPTERS[0])
        self._trainable: frozenset[str] = frozenset()  # adapters whose LoRA weights train (set_trainable)
        self._merged_adapter: str | None = None  # inside merged(name)
        self._said_truncated = False
        self._prefix: tuple[tuple, DynamicCache] | None = None  # (key, cache) of the last prompt head: _prefix_cache
        # adapter -> (LoRA parameter versions when merged, [(base weight, merged tensor)]): premerge()
        self._premerged: dict[str, tuple[tuple[int, ...], list[tuple[nn.Parameter, torch.Tensor]]]] = {}
        self.set_trainable(ADAPTERS, mem_rows=True)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(cls, config: ClaraConfig) -> "ClaraModel":
        """Fresh adapters and memory tokens on a frozen backbone (LoRA and memory rows trainable)."""
        lm, tokenizer = load_backbone(config.backbone, config.dtype, config.device)
        special = tokens.add_special_tokens(tokenizer, config.n_mem)
        model = cls(config, lm, tokenizer, special)
        return model.to(lm.device)

    @classmethod
    def from_pretrained(
        cls, path: str | Path | None = None, backbone: str | None = None, **overrides: object
    ) -> "ClaraModel":
        """Load a CLaRa checkpoint (this project's format or Apple's); None = the shipped default.

        ``backbone`` replaces the backbone recorded in the checkpoint (for example a local
        folder when the recorded hub id is unreachable); ``overrides`` set ClaraConfig fields
        such as ``device`` or ``dtype``.
        """
        from .checkpoint import load_checkpoint

        return load_checkpoint(cls, path, backbone=backbone, **overrides)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` (adapters and memory rows only)."""
        from .checkpoint import save_checkpoint

        save_checkpoint(self, path, dtype=dtype)

    # ------------------------------------------------------------------ adapters
    @property
    def device(self) -> torch.device:
        return self.mem_rows.device

    @property
    def hidden_size(self) -> int:
        return self.mem_rows.shape[1]

    def set_trainable(self, adapters: Sequence[str] = (), mem_rows: bool = False) -> None:
        """Make exactly these adapters (and optionally the memory rows) trainable; freeze the rest.

        The readout maps (``mem_proj``, ``mem_split``, if any) are the generator's side of reading
        memory: they train with the generator adapter.
        """
        unknown = set(adapters) - set(ADAPTERS)
        if unknown:
            raise ValueError(f"unknown adapters {sorted(unknown)}; expected some of {ADAPTERS}")
        self._trainable = frozenset(adapters)
        for name, p in self.named_parameters():  # the backbone stays frozen
            p.requires_grad_(
                (name == "mem_rows" and mem_rows) or (name.startswith(READOUT_MAPS) and "generator" in adapters)
            )
        self._restore_grad_flags()

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        """The LoRA weights of adapter ``name`` (for per-adapter optimiser settings)."""
        if name not in ADAPTERS:
            raise ValueError(f"unknown adapter {name!r}; expected one of {ADAPTERS}")
        return list(self._lora_params[name])

    def _restore_grad_flags(self) -> None:
        """LoRA weights train iff their adapter is in ``set_trainable``'s list (peft's own calls flip them)."""
        for adapter, params in self._lora_params.items():
            for p in params:
                if p.requires_grad != (adapter in self._trainable):
                    p.requires_grad_(adapter in self._trainable)

    def _activate(self, name: str | None) -> None:
        """Point every LoRA layer at adapter ``name`` (None: LoRA branches off).

        Sets peft's per-layer state directly: its set_adapter/enable_adapters also rewrite
        every LoRA weight's requires_grad (which set_trainable owns) and cost about as much
        as a decode step of a small model on CPU, twice per question.
        """
        for layer in self._lora_layers:
            layer._disable_adapters = name is None
            if name is not None:
                layer._active_adapter = [name]
        if name is not None:
            self.peft.base_model.active_adapter = name  # keep peft's own record in step
        self._active = name

    @contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        """Run the block with one adapter active (None: the plain backbone)."""
        if name is not None and name not in ADAPTERS:
            raise ValueError(f"unknown adapter {name!r}; expected one of {ADAPTERS}")
        folded = self._merged_adapter
        if folded is not None:  # the merged weights already carry that adapter, LoRA branches stay off
            if name != folded:
                raise RuntimeError(f"adapter {folded!r} is merged; {name!r} cannot run inside merged()")
            yield
            return
        previous = self._active
        if name == previous:
            yield
            return
        self._activate(name)
        try:
            yield
        finally:
            self._activate(previous)

    @contextmanager
    def merged(self, name: str) -> Iterator[None]:
        """Run the block (under ``torch.no_grad()``) with adapter ``name`` folded into the base weights.

        Unmerged, every LoRA'd linear runs its base matmul plus two small ones (on CPU
        10-20% over a plain forward for one question, more for batches); merged, a forward
        costs what a plain one does. Each LoRA'd linear gets a new weight tensor
        W + scale*B@A (computed now, or kept from :meth:`premerge`) and the LoRA branches
        are switched off; on exit the original tensors are put back, so the base weights
        and the other adapters come back bit for bit (no W + d - d rounding), at the price of
        one extra copy of the adapted weights while inside. A nested call for the same
        adapter is a no-op. Inside, ``adapter(name)`` is a no-op and any other adapter an error.
        """
        if torch.is_grad_enabled():
            raise RuntimeError("merged() is for inference only: call it under torch.no_grad()")
        current = self._merged_adapter
        if current is not None:
            if current != name:
                raise RuntimeError(f"adapter {current!r} is merged; {name!r} cannot be merged inside it")
            yield
            return
        if name not in ADAPTERS:
            raise ValueError(f"unknown adapter {name!r}; expected one of {ADAPTERS}")
        merged = self._premerged_weights(name) or self._merged_weights(name)
        originals: list[tuple[nn.Parameter, torch.Tensor]] = []
        with self.adapter(None):  # LoRA branches off: the weights themselves carry the adapter
            try:
                for weight, tensor in merged:
                    originals.append((weight, weight.data))
                    weight.data = tensor
                self._merged_adapter = name
                yield
            finally:
                for weight, original in originals:
                    weight.data = original
                self._merged_adapter = None

    def _merged_weights(self, name: str) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(base weight, W + scale*B@A) for every linear that adapter ``name`` adapts."""
        out = []
        for layer in self._lora_layers:
            if name in layer.lora_A:
                weight = layer.get_base_layer().weight
                out.append((weight, weight.data + layer.get_delta_weight(name).to(weight.dtype)))
        return out

    def _lora_versions(self, name: str) -> tuple[int, ...]:
        """In-place version counters and storage of an adapter's LoRA weights: they change on every
        optimiser step, load, copy or move, so a pre-merged copy knows when it is stale."""
        return tuple(v for p in self._lora_params[name] for v in (p._version, p.data_ptr()))

    def _premerged_weights(self, name: str) -> list[tuple[nn.Parameter, torch.Tensor]] | None:
        entry = self._premerged.get(name)
        if entry is None:
            return None
        versions, weights = entry
        fresh = versions == self._lora_versions(name) and all(
            t.device == w.device and t.dtype == w.dtype and t.shape == w.shape for w, t in weights
        )
        if not fresh:  # trained, reloaded or moved since premerge(): merge again, once
            weights = self._merged_weights(name)
            self._premerged[name] = (self._lora_versions(name), weights)
        return weights

    @torch.no_grad()
    def premerge(self, *names: str) -> None:
        """Keep these adapters' merged weights in memory, so that :meth:`merged` is a pointer swap.

        Then every no-grad ``encode_query``/``compress``/``generate`` through these adapters
        runs at the cost of the plain backbone, one question at a time too (merging on the fly
        only pays for a batch of ``MERGE_MIN_TEXTS``). Costs one extra copy of the adapted
        linear weights per adapter. A copy goes stale by itself when the adapter's weights
        change, and is re-merged at next use; ``premerge()`` with no names frees them all.
        """
        unknown = set(names) - set(ADAPTERS)
        if unknown:
            raise ValueError(f"unknown adapters {sorted(unknown)}; expected some of {ADAPTERS}")
        self._premerged = {name: (self._lora_versions(name), self._merged_weights(name)) for name in names}

    def _inference_merge(self, name: str | None, n_texts: int) -> Any:
        """``merged(name)`` where it pays (no grad; a pre-merged adapter or a big enough batch), else a no-op."""
        if name is None or torch.is_grad_enabled() or self._merged_adapter not in (None, name):
            return nullcontext()
        return self.merged(name) if name in self._premerged or n_texts >= MERGE_MIN_TEXTS else nullcontext()

    def init_query_reasoner_from_compressor(self) -> None:
        """Copy the compressor's LoRA weights into the query reasoner (CLaRa stage 3 init)."""
        if self.config.rank("query_reasoner") != self.config.rank("compressor"):
            raise ValueError(
                f"the query reasoner (rank {self.config.rank('query_reasoner')}) can only start as a copy of "
                f"the compressor with the compressor's rank ({self.config.rank('compressor')}): set adapter_r to match"
            )
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, p in params.items():
                if ".query_reasoner." in name:
                    p.copy_(params[name.replace(".query_reasoner.", ".compressor.")])

    def forward(self, step: Callable[["ClaraModel", Any], Any], batch: Any) -> Any:
        """Run a training step function on this model.

        Training goes through ``model(step, batch)`` so that wrappers such as DDP (which
        only synchronise gradients for work done inside ``forward``) see the whole step.
        """
        return step(self, batch)

    # ------------------------------------------------------------------ embedding
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> input embeddings (B, T, H); CLaRa's new tokens read ``mem_rows``."""
        emb = self.lm.get_input_embeddings()
        is_new = input_ids >= self.special.first_new  # (B, T)
        base = emb(input_ids.masked_fill(is_new, 0))
        new = F.embedding((input_ids - self.special.first_new).clamp(min=0), self.mem_rows)
        return torch.where(is_new.unsqueeze(-1), self._embed_scaled(new).to(base.dtype), base)

    def _embed_scaled(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows (..., H) times the input embedding's own scale (Gemma multiplies embeddings by sqrt(H))."""
        scale = getattr(self.lm.get_input_embeddings(), "embed_scale", None)
        if scale is None:
            return rows
        return rows * scale.to(rows.dtype) if torch.is_tensor(scale) else rows * scale

    # ------------------------------------------------------------------ compressor / query reasoner
    def _encode(
        self, texts: list[str], adapter: str, max_len: int, with_text_mean: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One batch through the compressor template: memory states (N, n_mem, H).

        With ``with_text_mean`` also returns the mean final state over the text tokens
        (N, H), padding and memory positions excluded: the MSE target of SCP.
        """
        ids, truncated = tokens.compressor_ids(
            self.tokenizer, texts, max_len, self.special, style=self.config.prompt_style
        )
        if truncated:  # said once at INFO (training would repeat it every step), then at DEBUG
            log.log(
                logging.DEBUG if self._said_truncated else logging.INFO,
                "%d of %d texts were longer than %d tokens and were truncated%s", truncated, len(texts), max_len,
                "" if self._said_truncated else " (later truncations are logged at DEBUG level)",
            )
            self._said_truncated = True
        input_ids, mask = left_pad(ids, self.tokenizer.pad_token_id, self.device)
        with self.adapter(adapter):
            out = self.lm.get_decoder()(
                inputs_embeds=self.embed(input_ids), attention_mask=mask, position_ids=positions(mask)
            )
        hidden = out.last_hidden_state  # (N, T, H), after the final norm
        n_mem = self.config.n_mem
        states = hidden[:, -n_mem:]  # left padding puts every row's memory tokens last
        if not with_text_mean:
            return states, None
        text_mask = mask.clone()
        text_mask[:, -n_mem:] = 0
        w = text_mask.unsqueeze(-1).to(hidden.dtype)
        return states, (hidden * w).sum(1) / w.sum(1)

    def _encode_batched(self, texts: list[str], adapter: str, max_len: int, batch_size: int, progress: bool) -> torch.Tensor:
        if not texts:  # (0, n_mem, H): callers stack and score it like any other batch
            return torch.empty(0, self.config.n_mem, self.hidden_size, device=self.device, dtype=self.lm.dtype)
        if len(texts) <= batch_size:
            return self._encode(texts, adapter, max_len)[0]
        # length-bucketed batches: sort by length so each batch pads little, then restore order
        lengths = [len(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        out: list[torch.Tensor] = [None] * len(texts)  # type: ignore[list-item]
        bar = tqdm(total=len(texts), desc=f"{adapter}", unit="doc", disable=not progress)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            states, _ = self._encode([texts[i] for i in chunk], adapter, max_len)
            for i, s in zip(chunk, states):
                out[i] = s
            bar.update(len(chunk))
        bar.close()
        return torch.stack(out)

    def compress_with_text_mean(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of documents: memory states (N, n_mem, H) and mean text-token states (N, H) for the MSE loss."""
        states, text_mean = self._encode(tokens.check_texts(texts, "texts"), "compressor", self.config.doc_max_len, True)
        assert text_mean is not None
        return states, text_mean

    def compress(self, texts: Sequence[str], batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        """Compress documents into memory states: (N, n_mem, H).

        Documents longer than ``doc_max_len`` tokens are truncated (the count is logged).
        Gradients flow when grad mode is on and the compressor is trainable.
        """
        texts = tokens.check_texts(texts, "texts")
        with self._inference_merge("compressor", len(texts)):
            return self._encode_batched(texts, "compressor", self.config.doc_max_len, batch_size, progress)

    def encode_query(self, questions: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Encode questions with the query-reasoner adapter: (B, n_mem, H), the documents' space."""
        questions = tokens.check_texts(questions, "questions")
        with self._inference_merge("query_reasoner", len(questions)):
            return self._encode_batched(questions, "query_reasoner", self.config.query_max_len, batch_size, False)

    def score(self, q_states: torch.Tensor, doc_states: torch.Tensor) -> torch.Tensor:
        """Retrieval scores under ``config.retrieval_score``: (B, n_mem, H) x (N, n_mem, H) -> (B, N)."""
        return scoring.score(q_states, doc_states, self.config.retrieval_score)

    # ------------------------------------------------------------------ generator
    def _check_states(self, states: Sequence[torch.Tensor], n: int, what: str, pre_read: bool = False) -> list[torch.Tensor]:
        """Per prompt (k, n_mem, H) memory states, or with ``pre_read`` (k, n_read, H) generator rows."""
        states = list(states)
        if len(states) != n:
            raise ValueError(f"{what}: got {len(states)} entries of document states for {n} prompts")
        shape = (self.config.n_read if pre_read else self.config.n_mem, self.hidden_size)
        for i, s in enumerate(states):
            if not torch.is_tensor(s) or s.dim() != 3 or tuple(s.shape[1:]) != shape:
                got = tuple(s.shape) if torch.is_tensor(s) else type(s).__name__
                raise ValueError(f"{what}[{i}] must be a tensor (k, {shape[0]}, {shape[1]}), got {got}")
        return states

    def _inputs(
        self, token_ids: list[list[int]], states: list[torch.Tensor], pre_read: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-pad prompts and inject states: (inputs_embeds (B, T, H), attention_mask, input_ids).

        Every memory-token position of row b, in order, receives the rows of
        ``read_memory(states[b].reshape(-1, H))``: document 0's n_read rows, then document
        1's, ...; with ``pre_read`` the states already are those rows.
        """
        input_ids, mask = left_pad(token_ids, self.tokenizer.pad_token_id, self.device)
        embeds = self.embed(input_ids)  # (B, T, H)
        slots = torch.isin(input_ids, torch.tensor(self.special.mem, device=self.device))  # (B, T)
        want = [s.shape[0] * self.config.n_read for s in states]
        have = slots.sum(1).tolist()
        if have != want:
            raise ValueError(f"prompt memory slots per row {have} do not match the documents given {want}")
        if sum(want):
            flat = torch.cat([s.reshape(-1, s.shape[-1]).to(embeds.device) for s in states]).to(embeds.dtype)  # (sum k*n_mem, H), or n_read rows pre-read
            rows = flat if pre_read else self.read_memory(flat)  # (sum k*n_read, H)
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), rows.to(embeds.dtype))
        return embeds, mask, input_ids

    def read_memory(self, states: torch.Tensor) -> torch.Tensor:
        """Memory states (M, H) -> the generator's input rows (M * readout_tokens, H), per ``config.mem_readout``.

        ``states`` (the paper) injects them as they are, times ``mem_scale``. ``soft_tokens``
        injects the expected input embedding under the output head's next-token distribution
        of each state: always in the embedding distribution, so a small backbone can read
        memory from the first step (see docs/training.md for why and what it measured).
        ``soft_tokens_linear`` adds ``mem_proj(state / |state|)``, a learned linear map (zero at first).
        ``top_tokens`` gives each state ``readout_tokens`` rows: the input embeddings of its most
        likely tokens, most likely first (slot-major: state 0's rows, then state 1's, ...).
        ``sub_spans`` splits each state into ``readout_tokens`` states (``SpanSplit``) and reads
        each as a soft token (slot-major as well).
        """
        if self.config.mem_readout == "states":
            return states * self.config.mem_scale
        emb = self.lm.get_input_embeddings()
        if self.config.mem_readout == "top_tokens":
            return self._top_token_rows(states, emb.weight) * self.config.mem_scale
        states = self.anchor_states(states)
        probs = torch.softmax(self.logits(states), dim=-1)  # (M, V)
        soft = self._embed_scaled(probs.to(emb.weight.dtype) @ emb.weight)  # (M, H)
        if self.mem_proj is not None:
            # on the unit state: final states have norms of ~50, and AdamW moves every entry of
            # the map by ~lr per step, so on raw states the map would swamp the soft token
            # (norm ~1) within tens of steps instead of adding to it
            unit = F.normalize(states.to(self.mem_proj.weight.dtype), dim=-1)
            soft = soft + self.mem_proj(unit).to(soft.dtype)
        return soft * self.config.mem_scale

    def _top_token_rows(self, states: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """States (M, H) -> (M * r, H): the embeddings of each state's r most likely tokens.

        A soft token averages a slot's distribution into one row, dominated by its top word;
        here the generator sees the next words too, as real tokens (at the price of r rows per
        slot). The value is exactly the token embeddings; the gradient reaches the logits
        through ``1 + p - p.detach()`` (straight-through), p each token's probability.
        """
        r = self.config.readout_tokens
        probs = torch.softmax(self.logits(states), dim=-1)  # (M, V)
        p, ids = probs.topk(r, dim=-1)  # (M, r)
        rows = table[ids] * (1 + p - p.detach()).unsqueeze(-1).to(table.dtype)  # (M, r, H)
        return self._embed_scaled(rows.reshape(-1, rows.shape[-1]))

    def anchor_states(self, states: torch.Tensor) -> torch.Tensor:
        """States -> the states whose output-head distributions the generator reads: under
        ``sub_spans`` each split by ``mem_split`` into ``readout_tokens`` (slot-major), so (M, H) ->
        (M * r, H) and (..., n, H) -> (..., n * r, H); otherwise unchanged.
        """
        if self.mem_split is None:
            return states
        split = self.mem_split(states.reshape(-1, states.shape[-1]))  # (M, r, H)
        return split.reshape(*states.shape[:-2], -1, states.shape[-1])

    def read_rows(self, states: torch.Tensor) -> torch.Tensor:
        """Memory states (N, n_mem, H) -> the generator's input rows (N, n_read, H)."""
        return self.read_memory(states.flatten(0, 1)).view(states.shape[0], self.config.n_read, -1)

    def _tokenize_prompts(self, prompts: Sequence[str], literal: Sequence[str] | None = None) -> list[list[int]]:
        """Prompt ids; ``literal[i]`` (a user's question inside ``prompts[i]``) is read as plain text:
        an "<|im_end|>" typed in a question must not end the chat turn there."""
        tok = self.tokenizer
        ids = tok(list(prompts), add_special_tokens=False)["input_ids"]
        if not literal:  # training and scoring prompts: nothing typed by a user
            return ids
        special = [t.content for t in tok.added_tokens_decoder.values() if t.special]
        for i, text in enumerate(literal):
            if not any(s in text for s in special):  # the common case: no token string to read as text
                continue
            as_text = tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            at = prompts[i].rfind(text)
            # only texts that hold a special token's string are cut out, so every other prompt
            # keeps exactly the tokenization its checkpoint was trained on
            if at >= 0 and as_text != tok(text, add_special_tokens=False)["input_ids"]:
                head, tail = prompts[i][:at], prompts[i][at + len(text):]
                ids[i] = (tok(head, add_special_tokens=False)["input_ids"] + as_text
                          + tok(tail, add_special_tokens=False)["input_ids"])
        return ids

    def prompt(self, task: str, n_docs: int, question: str | None = None) -> str:
        """A generator prompt (``tokens.TASKS``) in this model's prompt style, with placeholders."""
        return tokens.build_prompt(
            self.tokenizer, task, n_docs, self.config.n_mem, question=question, style=self.config.prompt_style,
            per_slot=self.config.readout_tokens,
        )

    def answer_prompts(self, questions: Sequence[str], n_docs: Sequence[int]) -> list[str]:
        """Generator prompts for questions reading ``n_docs[i]`` documents each."""
        return [self.prompt("answer", k, question=q) for q, k in zip(questions, n_docs)]

    def generator_loss(
        self,
        prompts: Sequence[str],
        targets: Sequence[str],
        doc_states: Sequence[torch.Tensor],
        per_example: bool = False,
        adapter: str | None = "generator",
        max_target_len: int | None = None,
        pre_read: bool = False,
    ) -> torch.Tensor:
        """Next-token loss of ``targets`` after ``prompts`` reading ``doc_states`` (prompt masked).

        Returns the mean over target tokens, or with ``per_example`` a (B,) tensor of each
        example's mean. Arguments as :meth:`target_logits`.
        """
        logits, labels, rows = self.target_logits(prompts, targets, doc_states, adapter, max_target_len, pre_read)
        tok_loss = F.cross_entropy(logits, labels, reduction="none")
        return row_means(tok_loss, rows, len(prompts)) if per_example else tok_loss.mean()

    def target_logits(
        self,
        prompts: Sequence[str],
        targets: Sequence[str],
        doc_states: Sequence[torch.Tensor],
        adapter: str | None = "generator",
        max_target_len: int | None = None,
        pre_read: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The generator's logits where it predicts ``targets`` after ``prompts`` reading ``doc_states``.

        Returns logits (N, V) for the N target tokens of all examples (example by example, in
        order), their labels (N,) and each one's example index (N,). Only target positions go
        through the output head (memory-cheap). Targets longer than ``max_target_len`` tokens are
        cut (and then get no end token). With ``pre_read`` the states already are generator input
        rows (``read_memory``'s output).
        """
        doc_states = self._check_states(doc_states, len(prompts), "doc_states", pre_read)
        if len(targets) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        prompt_ids = self._tokenize_prompts(prompts)
        target_ids = [
            (t + eos)[:max_target_len] if max_target_len else t + eos
            for t in self.tokenizer(list(targets), add_special_tokens=False)["input_ids"]
        ]
        embeds, mask, _ = self._inputs([p + t for p, t in zip(prompt_ids, target_ids)], doc_states, pre_read)
        # labels[b, t] = token at t+1 when t+1 is a target token
        width = embeds.shape[1]
        labels = torch.full((len(prompts), width), -100, dtype=torch.long, device=self.device)
        for b, t in enumerate(target_ids):
            labels[b, width - len(t) - 1 : width - 1] = torch.tensor(t, device=self.device)
        with self.adapter(adapter):
            hidden = self.lm.get_decoder()(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions(mask)
            ).last_hidden_state
        sel = labels != -100
        return self.logits(hidden[sel]), labels[sel], sel.nonzero()[:, 0]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final states (..., H) -> float32 next-token logits (..., V) of the backbone's output head."""
        logits = self.lm.get_output_embeddings()(hidden).float()
        cap = getattr(self.lm.config, "final_logit_softcapping", None)  # Gemma
        return torch.tanh(logits / cap) * cap if cap else logits

    @torch.no_grad()
    def generate_from_prompts(
        self,
        prompts: Sequence[str],
        doc_states: Sequence[torch.Tensor],
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        adapter: str | None = "generator",
        streamer: object | None = None,
        pre_read: bool = False,
        literal: Sequence[str] | None = None,
    ) -> list[str]:
        """Generate from ready prompts whose placeholders are filled with ``doc_states``
        (with ``pre_read``: rows that already went through :meth:`read_memory`; ``literal[i]``:
        text inside ``prompts[i]`` to read as plain text, special-token strings included)."""
        doc_states = self._check_states(doc_states, len(prompts), "doc_states_per_question", pre_read)
        embeds, mask, input_ids = self._inputs(self._tokenize_prompts(prompts, literal), doc_states, pre_read)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {
            "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with self._inference_merge(adapter, 0), self.adapter(adapter):
            out = self.lm.generate(
                inputs_embeds=embeds,
                attention_mask=mask,
                cache=self._prefix_cache(adapter, input_ids, embeds),
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self._stop_ids(),
                streamer=streamer,
                **sampling,
            )  # (B, new_tokens): with inputs_embeds only new tokens come back
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def _prefix_cache(self, adapter: str | None, input_ids: torch.Tensor, embeds: torch.Tensor) -> DynamicCache | None:
        """A copy of the key/value cache of the prompt's head (everything before the first memory
        slot), kept from the previous question with the same head; None where it does not apply.

        Only for one question (a left-padded batch shifts the head) with a pre-merged adapter
        (inference mode); the key includes the adapter's weight versions, so a trained or
        reloaded adapter never reads a stale cache. ``input_ids`` (1, T), ``embeds`` (1, T, H).
        """
        if adapter is None or adapter not in self._premerged or input_ids.shape[0] != 1:
            return None
        slots = torch.isin(input_ids[0], torch.tensor(self.special.mem, device=input_ids.device)).nonzero()
        if len(slots) == 0 or int(slots[0]) < PREFIX_MIN_TOKENS:
            return None
        head = int(slots[0])
        key = (
            adapter, tuple(input_ids[0, :head].tolist()), self._lora_versions(adapter),
            self.mem_rows._version, embeds.dtype, embeds.device,
        )
        if self._prefix is None or self._prefix[0] != key:
            cache = DynamicCache(config=self.lm.config)
            self.lm(inputs_embeds=embeds[:, :head], cache=cache, use_cache=True, logits_to_keep=1)
            self._prefix = (key, cache)
        return copy.deepcopy(self._prefix[1])  # generate() appends to the cache it is given

    def _stop_ids(self) -> list[int]:
        """Tokens that end an answer: the tokenizer's eos plus the model's own generation eos ids."""
        ids = {self.tokenizer.eos_token_id}
        gen = getattr(self.lm, "generation_config", None)
        extra = getattr(gen, "eos_token_id", None)
        ids.update(extra if isinstance(extra, list) else [extra])
        return sorted(i for i in ids if i is not None)

    def generate(
        self,
        questions: Sequence[str],
        doc_states_per_question: Sequence[torch.Tensor],
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        streamer: object | None = None,
        pre_read: bool = False,
    ) -> list[str]:
        """Answer each question from its documents' memory states (k_i, n_mem, H); greedy by default.

        ``pre_read``: the states already are the generator's input rows (:meth:`read_memory`
        applied, as a memory index stores them), which saves one output-head pass.
        """
        questions = tokens.check_texts(questions, "questions", control_ok=False)
        states = self._check_states(doc_states_per_question, len(questions), "doc_states_per_question", pre_read)
        prompts = self.answer_prompts(questions, [s.shape[0] for s in states])
        return self.generate_from_prompts(
            prompts, states, max_new_tokens, do_sample, temperature, top_p, streamer=streamer, pre_read=pre_read,
            literal=questions,
        )
