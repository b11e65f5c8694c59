"""Teachers: an OpenAI-compatible server (vLLM, llama.cpp, hosted APIs) or a local transformers model.

Both expose ``complete(messages, max_tokens, temperature) -> str`` and are safe to call from
many threads: the pipeline runs one thread per document in flight. A server batches the
concurrent requests itself (vLLM's continuous batching); the local teacher gathers them
into padded ``generate`` batches on one worker thread.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Protocol, TypeVar

log = logging.getLogger(__name__)

Message = dict[str, str]
T = TypeVar("T")


class Teacher(Protocol):
    def complete(self, messages: list[Message], max_tokens: int, temperature: float) -> str: ...

    def close(self) -> None: ...


class TeacherUnavailable(RuntimeError):
    """The teacher kept failing after every retry (server down, quota, bad request)."""


class TeacherRejected(RuntimeError):
    """The teacher refused this one request (too long for its context, filtered, a failed local batch):
    the document fails, the run goes on, and a rerun tries it again."""


@dataclass
class TeacherConfig:
    """How to reach the teacher. ``base_url`` selects a server; otherwise ``model`` is loaded locally."""

    base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1."})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "Served model name, or local HF folder / hub id."})
    api_key: str = field(default="EMPTY", metadata={"help": "API key (vLLM and llama.cpp accept any string)."})
    timeout: float = field(default=300.0, metadata={"help": "Seconds before one HTTP request is abandoned and retried."})
    max_retries: int = field(default=6, metadata={"help": "Retries of a failed HTTP request, with exponential backoff."})
    backoff: float = field(default=1.0, metadata={"help": "First backoff in seconds; doubles each retry, with jitter."})
    json_mode: bool = field(default=False, metadata={"help": "Send response_format=json_object (vLLM guided decoding)."})
    device: str = field(default="auto", metadata={"help": "Local teacher: 'auto', 'cpu', 'cuda:0', ..."})
    dtype: str = field(default="float32", metadata={"help": "Local teacher weights dtype."})
    batch_size: int = field(default=8, metadata={"help": "Local teacher: most requests per generate() call."})
    threads: int | None = field(default=None, metadata={"help": "Local teacher on CPU: torch threads (1 is fastest on a busy machine)."})


def with_retries(
    call: Callable[[], T],
    retryable: tuple[type[BaseException], ...],
    max_retries: int,
    backoff: float,
    sleep: Callable[[float], None] = time.sleep,
    what: str = "request",
) -> T:
    """Run ``call``; on a retryable error wait backoff * 2**attempt (+-25% jitter) and retry.

    Jitter spreads the retries of many workers so a restarted server is not hit all at once.
    After ``max_retries`` retries the last error is raised as TeacherUnavailable.
    """
    for attempt in range(max_retries + 1):
        try:
            return call()
        except retryable as e:
            if attempt == max_retries:
                raise TeacherUnavailable(f"{what} failed after {max_retries + 1} attempts: {e}") from e
            wait = backoff * 2**attempt * random.uniform(0.75, 1.25)
            log.warning("%s failed (%s: %s); retry %d/%d in %.1fs", what, type(e).__name__, e, attempt + 1, max_retries, wait)
            sleep(wait)
    raise AssertionError("unreachable")


class OpenAITeacher:
    """A chat-completions client; thread-safe (the openai client shares one connection pool)."""

    def __init__(self, cfg: TeacherConfig) -> None:
        import openai  # imported here: the local teacher does not need it

        if not cfg.base_url:
            raise ValueError("OpenAITeacher needs base_url")
        self.cfg = cfg
        # The client's own retries are off: ours log, use jitter, and end in TeacherUnavailable.
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=cfg.api_key, timeout=cfg.timeout, max_retries=0)
        # 4xx other than 408/409/429 will not succeed on retry: a request the server refuses for
        # its content (400, 413, 422: context length, filters) fails its document, while a bad key
        # or model name (401, 403, 404) propagates and stops the run at once.
        self.retryable = (
            openai.APIConnectionError,  # includes APITimeoutError
            openai.RateLimitError,
            openai.InternalServerError,
            openai.ConflictError,
        )
        self.api_status_error = openai.APIStatusError

    def complete(self, messages: list[Message], max_tokens: int, temperature: float) -> str:
        extra = {"response_format": {"type": "json_object"}} if self.cfg.json_mode else {}

        def call() -> str:
            resp = self.client.chat.completions.create(
                model=self.cfg.model, messages=messages, max_tokens=max_tokens, temperature=temperature, **extra
            )
            return resp.choices[0].message.content or ""

        try:
            return with_retries(call, self.retryable, self.cfg.max_retries, self.cfg.backoff, what=f"teacher {self.cfg.base_url}")
        except self.api_status_error as e:
            if e.status_code in (400, 413, 422):
                raise TeacherRejected(f"teacher {self.cfg.base_url} refused the request ({e.status_code}): {e}") from e
            raise

    def close(self) -> None:
        self.client.close()


@dataclass
class _Request:
    messages: list[Message]
    max_tokens: int
    temperature: float
    future: Future = field(default_factory=Future)


class LocalTeacher:
    """A transformers chat model that batches concurrent requests.

    Callers block on a Future; one worker thread takes up to ``batch_size`` queued requests
    that share a temperature and runs a single left-padded ``generate`` for them.
    """

    def __init__(self, cfg: TeacherConfig, max_wait: float = 0.05) -> None:
        from ..backbone import load_backbone

        self.cfg = cfg
        self.max_wait = max_wait
        if cfg.threads:
            import torch

            # process-wide, so only when asked: on an oversubscribed CPU, OpenMP threads that
            # spin-wait on each other make generation several times slower than one thread
            torch.set_num_threads(cfg.threads)
        self.model, self.tokenizer = load_backbone(cfg.model, dtype=cfg.dtype, device=cfg.device)
        self.tokenizer.padding_side = "left"  # generation continues from the right end of every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name = cfg.model
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def complete(self, messages: list[Message], max_tokens: int, temperature: float) -> str:
        req = _Request(messages, max_tokens, temperature)
        with self._lock:  # the worker starts on first use, not at construction (no idle thread)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="local-teacher", daemon=True)
                self._thread.start()
        self._queue.put(req)
        try:
            return req.future.result()
        except TeacherUnavailable:
            raise
        except Exception as e:  # its generate batch failed (out of memory, a prompt the template refuses)
            raise TeacherRejected(f"local teacher {self.name}: {type(e).__name__}: {e}") from e

    def close(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join()
                self._thread = None

    def _work(self) -> None:
        held: list[_Request] = []
        while True:
            first = held.pop(0) if held else self._queue.get()
            if first is None:
                return
            batch, deadline = [first], time.monotonic() + self.max_wait
            # Requests with another temperature wait for the next batch (one sampling mode per generate).
            keep = [r for r in held if r.temperature == first.temperature][: self.cfg.batch_size - 1]
            held = [r for r in held if r not in keep]
            batch += keep
            stop = False
            while len(batch) < self.cfg.batch_size:
                try:
                    r = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if r is None:
                    stop = True
                    break
                (batch if r.temperature == first.temperature else held).append(r)
            try:
                texts = self.generate([r.messages for r in batch], [r.max_tokens for r in batch], first.temperature)
                for r, t in zip(batch, texts):
                    r.future.set_result(t)
            except BaseException as e:  # a failed batch fails its callers, not the worker
                for r in batch:
                    r.future.set_exception(e)
            if stop:
                for r in held:
                    r.future.set_exception(TeacherUnavailable("local teacher closed"))
                return

    def _prompt(self, messages: list[Message]) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:
            # Templates such as Gemma's and Mistral's reject a system turn: fold it into the first user turn.
            if not messages or messages[0]["role"] != "system":
                raise
            rest = [dict(m) for m in messages[1:]]
            if rest and rest[0]["role"] == "user":
                rest[0]["content"] = messages[0]["content"] + "\n\n" + rest[0]["content"]
            return self.tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True)

    def generate(self, conversations: list[list[Message]], max_tokens: list[int], temperature: float) -> list[str]:
        """Greedy (temperature 0) or sampled replies for a batch of conversations."""
        import torch

        prompts = [self._prompt(m) for m in conversations]
        # the chat template already holds the special tokens it needs
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        sample = temperature > 0
        start = time.monotonic()
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=max(max_tokens),
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=None,
                top_k=None,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new = out[:, enc["input_ids"].shape[1] :]
        log.debug("local teacher: batch %d x %d prompt tokens -> %d new tokens in %.1fs",
                  len(prompts), enc["input_ids"].shape[1], new.shape[1], time.monotonic() - start)
        return [
            self.tokenizer.decode(row[:limit], skip_special_tokens=True).strip() for row, limit in zip(new, max_tokens)
        ]


def make_teacher(cfg: TeacherConfig) -> Teacher:
    """A server client when ``base_url`` is set, else the local model."""
    return OpenAITeacher(cfg) if cfg.base_url else LocalTeacher(cfg)
