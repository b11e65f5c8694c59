"""Special tokens and every prompt template, in one readable place.

Token ids are added in Apple's order, ``<MEM0> .. <MEM{n-1}>, <AE>, <ENC>, <SEP>``, so
Apple's resized embedding rows map onto ours one to one.

Compressor input (documents and, under the query-reasoner adapter, questions)::

    <ENC> bos document eos <MEM0> ... <MEM{n-1}>

The memory tokens come *after* the text so that, under causal attention, each one
sees all of it. Generator prompts hold one placeholder run ``<MEM0>..<MEM{n-1}><SEP>``
per document; the model overwrites those rows of ``inputs_embeds`` with memory states.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable

from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

AE, ENC, SEP = "<AE>", "<ENC>", "<SEP>"
#: CLaRa's control tokens as they would appear in user text
CONTROL = re.compile(r"<MEM\d+>|<AE>|<ENC>|<SEP>")

QA_SYSTEM = (
    "You are a helpful assistant. Your task is to extract relevant information from provided "
    "documents and to answer to questions as briefly as possible."
)

#: The instruction after the background, per generator task. ``answer`` is the RAG task;
#: the others are stage-1 (SCP) pretraining tasks over a single document.
TASK_INSTRUCTIONS = {
    "qa": "Write questions about the background and answer them.",
    "paraphrase": "Paraphrase the background.",
    "reconstruct": "Repeat the background word for word.",
}
TASKS = ("answer", *TASK_INSTRUCTIONS)


def mem_token(i: int) -> str:
    return f"<MEM{i}>"


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the tokens CLaRa adds to a tokenizer; they are contiguous from ``first_new``."""

    mem: tuple[int, ...]
    ae: int
    enc: int
    sep: int

    @property
    def first_new(self) -> int:
        return self.mem[0]

    @property
    def n_new(self) -> int:
        return len(self.mem) + 3


def add_special_tokens(tokenizer: PreTrainedTokenizerBase, n_mem: int) -> SpecialTokens:
    """Add the memory and control tokens (idempotent) and set left padding."""
    names = [mem_token(i) for i in range(n_mem)] + [AE, ENC, SEP]
    tokenizer.add_special_tokens({"additional_special_tokens": names}, replace_extra_special_tokens=False)
    ids = tokenizer.convert_tokens_to_ids(names)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise ValueError(
            "CLaRa's special tokens must get contiguous new ids; the tokenizer already holds some of "
            f"{names[0]}..{names[-1]} out of order"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.bos_token
    tokenizer.padding_side = "left"
    return SpecialTokens(mem=tuple(ids[:n_mem]), ae=ids[n_mem], enc=ids[n_mem + 1], sep=ids[n_mem + 2])


def check_texts(texts: object, what: str, control_ok: bool = True) -> list[str]:
    """Validate a batch of input strings: a list (possibly empty) of non-empty strings.

    With ``control_ok=False`` a text may not contain CLaRa's control tokens (:data:`CONTROL`):
    questions go into the generator prompt as text, where a literal ``<MEM0>`` would become a
    memory slot with no document behind it. Documents may (the compressor reads them as text).
    """
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, not a single string (wrap it in a list)")
    texts = list(texts)  # type: ignore[call-overload]
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] must be a string, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"{what}[{i}] is empty; empty texts cannot be compressed")
        if not control_ok and (m := CONTROL.search(t)):
            raise ValueError(f"{what}[{i}] contains {m.group()!r}, one of CLaRa's control tokens, which a question cannot carry")
    return texts


def compressor_ids(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], max_len: int, special: SpecialTokens, style: str = "clara"
) -> tuple[list[list[int]], int]:
    """Token ids of the compressor input for each text, and how many texts were truncated.

    ``style="apple"`` gives Apple's layout (:func:`clara.apple.compressor_ids`).
    """
    if style == "apple":
        from . import apple  # Apple's layouts live with the rest of the Apple compatibility code

        return apple.compressor_ids(tokenizer, texts, max_len, special)
    # user text is read as text: a "<SEP>" or "<|im_end|>" in a document is not the special token
    bodies = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    head = [special.enc] + ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else [])
    tail = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    truncated = sum(len(b) > max_len for b in bodies)
    return [head + b[:max_len] + tail + list(special.mem) for b in bodies], truncated


def document_length(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], int]:
    """Counts a text's tokens as :func:`compressor_ids` does against doc_max_len (chunking sizes pieces by it)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def placeholders(n_docs: int, n_mem: int, per_slot: int = 1) -> str:
    """One ``<MEM0>..<MEM{n-1}><SEP>`` run per document, each ``<MEMi>`` ``per_slot`` times."""
    run = "".join(mem_token(i) * per_slot for i in range(n_mem)) + SEP
    return "".join(run for _ in range(n_docs))


def chat(tokenizer: PreTrainedTokenizerBase, system: str, user: str) -> str:
    """Render a system+user turn with the backbone's chat template, ready for the answer.

    Templates that reject the system role (Gemma, Mistral v0.2) get the system text
    folded into the user turn; tokenizers without any template get a plain layout.
    """
    if not getattr(tokenizer, "chat_template", None):
        return f"{system}\n\n{user}\n\nAnswer: "
    try:
        return tokenizer.apply_chat_template(
            [{"role": "system", "content": system}, {"role": "user", "content": user}],
            tokenize=False,
            add_generation_prompt=True,
        )
    except Exception:  # jinja raises TemplateError("System role not supported") and similar
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{system}\n\n{user}"}], tokenize=False, add_generation_prompt=True
        )


def cut(tokenizer: PreTrainedTokenizerBase, text: str, max_len: int) -> str:
    """``text`` cut to its first ``max_len`` tokens: what the compressor would see of it."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_len else tokenizer.decode(ids[:max_len])


def text_prompt(tokenizer: PreTrainedTokenizerBase, question: str, docs: list[str], max_len: int | None = None) -> str:
    """The answer prompt with documents as raw text (full-text RAG baselines; none = closed-book).

    Same system text and question layout as CLaRa's ``answer`` prompt, so only the
    document representation differs between a text reader and CLaRa. With ``max_len`` each
    document is :func:`cut` to that many tokens, the text the compressor sees.
    """
    if max_len is not None:
        docs = [cut(tokenizer, d, max_len) for d in docs]
    if not docs:
        return chat(tokenizer, QA_SYSTEM, f"Question:{question}")
    background = "\n\n".join(f"[{i + 1}] {d}" for i, d in enumerate(docs))
    return chat(tokenizer, QA_SYSTEM, f"Background:\n{background}\n\nQuestion:{question}")


def build_prompt(
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    n_docs: int,
    n_mem: int,
    question: str | None = None,
    style: str = "clara",
    per_slot: int = 1,
) -> str:
    """The generator prompt for a task, with memory placeholders for ``n_docs`` documents
    (``per_slot`` generator rows per memory slot: ``ClaraConfig.readout_tokens``).

    ``answer`` is Apple's QA prompt exactly (no space after ``Question:``), so Apple's
    checkpoints and ours read the same layout. ``style="apple"`` renders Apple's prompts
    (:func:`clara.apple.build_prompt`), including its paraphrase and QA-generation tasks.
    """
    if style == "apple":
        from . import apple

        return apple.build_prompt(tokenizer, task, n_docs, n_mem, question=question)
    background = f"Background:\n{placeholders(n_docs, n_mem, per_slot)}"
    if task == "answer":
        if question is None:
            raise ValueError("the 'answer' task needs a question")
        return chat(tokenizer, QA_SYSTEM, f"{background}\n\nQuestion:{question}")
    if task not in TASK_INSTRUCTIONS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return chat(tokenizer, QA_SYSTEM, f"{background}\n\n{TASK_INSTRUCTIONS[task]}")
