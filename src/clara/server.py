"""HTTP API over a ClaraRAG: ask, retrieve, add documents, health. OpenAPI docs at /docs.

    POST /v1/ask        {"question", "k"?, "max_new_tokens"?}  -> answer + sources (id, title, score, meta)
    POST /v1/retrieve   {"query", "k"?}                        -> sources, with their text
    POST /v1/documents  {"documents": [{"id", "text", "title"?, "meta"?}]}  -> added, total
    GET  /health        status, document count, batching counters

Concurrent asks are gathered by a micro-batcher (up to ``max_batch`` questions or
``max_wait_ms``) into one ``ask_batch`` call: one query encoding, one search and one
generate for the whole group. Every model call runs on a single worker thread, so model
use never overlaps and the event loop stays free to accept requests.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from . import tokens
from .data.corpus import Document, chunk_document
from .index.store import DuplicateIdError
from .io import DataError
from .rag import Answer, ClaraRAG

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """Limits and batching of the HTTP API."""

    max_body_bytes: int = field(default=1_000_000, metadata={"help": "Larger request bodies get 413."})
    max_k: int = field(default=20, metadata={"help": "Largest k a request may ask for."})
    max_chars: int = field(default=2000, metadata={"help": "Longest question or query, in characters."})
    max_new_tokens: int = field(default=128, metadata={"help": "Largest max_new_tokens a request may ask for."})
    max_documents: int = field(default=256, metadata={"help": "Most documents one POST /v1/documents may add."})
    max_batch: int = field(default=16, metadata={"help": "Most questions answered by one generate call."})
    max_wait_ms: float = field(default=10.0, metadata={"help": "How long the first ask waits for company."})
    read_only: bool = field(default=False, metadata={"help": "Refuse POST /v1/documents (403)."})


# ---------------------------------------------------------------------- request / response bodies
class AskRequest(BaseModel):
    question: str = Field(..., min_length=1, description="The question.")
    k: int | None = Field(None, ge=1, description="Documents to read (default: the server's k).")
    max_new_tokens: int | None = Field(None, ge=1, description="Longest answer in tokens.")


class RetrieveRequest(BaseModel):
    query: str = Field(..., min_length=1, description="Question or query text.")
    k: int | None = Field(None, ge=1, description="Documents to return.")


class SourceOut(BaseModel):
    id: str
    title: str
    score: float
    text: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict, description="The document record's other fields.")


class AskResponse(BaseModel):
    question: str
    answer: str
    sources: list[SourceOut]
    timings: dict[str, float]


class RetrieveResponse(BaseModel):
    query: str
    sources: list[SourceOut]


class DocumentIn(BaseModel):
    id: str = Field(..., min_length=1)
    text: str = Field(..., min_length=1)
    title: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)


class DocumentsRequest(BaseModel):
    documents: list[DocumentIn] = Field(..., min_length=1)
    chunk: bool = Field(False, description="Cut documents longer than doc_max_len tokens into id#offset pieces.")
    chunk_overlap: int = Field(32, ge=0, description="Tokens two consecutive pieces share (with chunk).")


class DocumentsResponse(BaseModel):
    added: int
    total: int
    truncated: int = Field(0, description="Added documents longer than the model's doc_max_len tokens: only their start is in memory.")


# ---------------------------------------------------------------------- micro-batching
class MicroBatcher:
    """Collect concurrent asks and answer each group with one ``ClaraRAG.ask_batch``."""

    def __init__(self, rag: ClaraRAG, executor: ThreadPoolExecutor, max_batch: int, max_wait_s: float) -> None:
        self.rag, self.executor, self.max_batch, self.max_wait_s = rag, executor, max_batch, max_wait_s
        self.queue: asyncio.Queue[tuple[str, int, int, asyncio.Future[Answer]]] = asyncio.Queue()
        self.stats = {"asks": 0, "generate_calls": 0, "largest_batch": 0}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def ask(self, question: str, k: int, max_new_tokens: int) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        await self.queue.put((question, k, max_new_tokens, future))
        return await future

    async def _collect(self) -> list[tuple[str, int, int, asyncio.Future[Answer]]]:
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _one_by_one(self, questions: list[str], ks: list[int], max_new: int) -> list[Answer | Exception]:
        """Each question in its own generate call: its answer, or the exception it raised."""
        loop = asyncio.get_running_loop()
        answers: list[Answer | Exception] = []
        for question, k in zip(questions, ks):
            try:
                answers += await loop.run_in_executor(self.executor, self.rag.ask_batch, [question], [k], max_new)
            except Exception as e:  # noqa: BLE001 - this request's own error
                answers.append(e)
        return answers

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            # one generate call per answer length asked for (usually all the same)
            groups: dict[int, list[tuple[str, int, int, asyncio.Future[Answer]]]] = defaultdict(list)
            for item in batch:
                groups[item[2]].append(item)
            for max_new, items in groups.items():
                live = [it for it in items if not it[3].cancelled()]  # clients that hung up
                if not live:
                    continue
                questions, ks = [it[0] for it in live], [it[1] for it in live]
                answers: list[Answer | Exception]
                calls = 1
                try:
                    answers = list(await loop.run_in_executor(self.executor, self.rag.ask_batch, questions, ks, max_new))
                except Exception as e:  # noqa: BLE001 - handed to the waiting request(s)
                    log.exception("ask batch of %d failed", len(live))
                    # one bad question must not fail the others: answer them one at a time
                    answers = [e] if len(live) == 1 else await self._one_by_one(questions, ks, max_new)
                    calls += len(live) if len(live) > 1 else 0
                for it, answer in zip(live, answers):
                    if it[3].done():
                        continue
                    if isinstance(answer, Exception):
                        it[3].set_exception(answer)
                    else:
                        it[3].set_result(answer)
                ok = sum(not isinstance(a, Exception) for a in answers)
                self.stats["asks"] += ok
                self.stats["generate_calls"] += calls
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(live))


# ---------------------------------------------------------------------- app
def _sources(answer_sources: list[Any], with_text: bool) -> list[SourceOut]:
    return [SourceOut(id=s.id, title=s.title, score=s.score, text=s.text if with_text else None, meta=s.meta)
            for s in answer_sources]


def create_app(rag: ClaraRAG, config: ServerConfig | None = None) -> FastAPI:
    """A FastAPI app serving ``rag``; run it with uvicorn (``clara serve`` does)."""
    config = config or ServerConfig()
    if rag.k > config.max_k or rag.max_new_tokens > config.max_new_tokens:
        raise ValueError(
            f"the RAG's defaults (k={rag.k}, max_new_tokens={rag.max_new_tokens}) exceed the server's limits "
            f"(max_k={config.max_k}, max_new_tokens={config.max_new_tokens}): every request relying on them would fail"
        )
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clara-model")
    batcher = MicroBatcher(rag, executor, config.max_batch, config.max_wait_ms / 1000)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()
        executor.shutdown(wait=True)

    app = FastAPI(
        title="CLaRa RAG",
        version="1",
        description="Retrieval and generation over compressed memory tokens.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None:
                return JSONResponse({"detail": "a Content-Length header is required"}, status_code=411)
            if not length.isdigit() or int(length) > config.max_body_bytes:
                return JSONResponse(
                    {"detail": f"request body over the limit of {config.max_body_bytes} bytes"}, status_code=413
                )
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            msg = next(e for e in errors if e.get("type") == "json_invalid").get("ctx", {}).get("error", "")
            return JSONResponse({"detail": f"malformed JSON body: {msg}".rstrip(": ")}, status_code=400)
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return JSONResponse({"detail": detail}, status_code=422)

    def check_k(k: int | None) -> int:
        k = k or rag.k
        if k > config.max_k:
            raise HTTPException(422, f"k={k} is over this server's limit of {config.max_k}")
        return k

    def check_text(text: str, what: str) -> str:
        if not text.strip():
            raise HTTPException(422, f"{what} is blank")
        if len(text) > config.max_chars:
            raise HTTPException(422, f"{what} is {len(text)} characters; the limit is {config.max_chars}")
        if m := tokens.CONTROL.search(text):
            raise HTTPException(422, f"{what} contains {m.group()!r}, one of CLaRa's control tokens")
        return text

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, index size and batching counters."""
        return {"status": "ok", "documents": len(rag.index), "index": str(rag.index.path), **batcher.stats}

    @app.post("/v1/ask", response_model=AskResponse)
    async def ask(body: AskRequest) -> AskResponse:
        """Answer a question from the top-k documents' memory states."""
        question = check_text(body.question, "question")
        k = check_k(body.k)
        max_new = body.max_new_tokens or rag.max_new_tokens
        if max_new > config.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens={max_new} is over the limit of {config.max_new_tokens}")
        answer = await batcher.ask(question, k, max_new)
        return AskResponse(
            question=answer.question, answer=answer.answer, sources=_sources(answer.sources, False), timings=answer.timings
        )

    @app.post("/v1/retrieve", response_model=RetrieveResponse)
    async def retrieve(body: RetrieveRequest) -> RetrieveResponse:
        """Top-k documents by the retrieval score of memory states, with their text."""
        query = check_text(body.query, "query")
        k = check_k(body.k)
        found = await asyncio.get_running_loop().run_in_executor(executor, rag.retrieve, [query], k)
        return RetrieveResponse(query=query, sources=_sources(found[0], True))

    @app.post("/v1/documents", response_model=DocumentsResponse)
    async def add_documents(body: DocumentsRequest) -> DocumentsResponse:
        """Compress and add documents; searchable on return, and kept on disk across restarts."""
        if config.read_only:
            raise HTTPException(403, "this server is read-only (the demo index, or --read-only): documents cannot be added")
        if len(body.documents) > config.max_documents:
            raise HTTPException(413, f"{len(body.documents)} documents; at most {config.max_documents} per request")
        blank = [d.id for d in body.documents if not d.text.strip()]
        if blank:
            raise HTTPException(422, f"documents with blank text: {blank[:10]}")
        docs = [Document(id=d.id, text=d.text.strip(), title=d.title.strip(), meta=d.meta) for d in body.documents]
        if body.chunk:
            size = rag.model.config.doc_max_len
            if body.chunk_overlap >= size:
                raise HTTPException(422, f"chunk_overlap={body.chunk_overlap} must be below doc_max_len ({size})")
            count = tokens.document_length(rag.model.tokenizer)

            def cut() -> list[Document]:  # tokenizes every word: off the event loop
                return [p for d in docs for p in chunk_document(d, size, body.chunk_overlap, count)]

            try:
                docs = await asyncio.get_running_loop().run_in_executor(executor, cut)
            except DataError as e:
                raise HTTPException(422, str(e)) from None
            if len(docs) > config.max_documents:
                raise HTTPException(413, f"{len(docs)} pieces; at most {config.max_documents} per request")
        try:  # ids checked as added (the pieces' when cut), under the model lock against what is committed
            report = await asyncio.get_running_loop().run_in_executor(
                executor, functools.partial(rag.add_documents, docs, skip_existing=False)
            )
        except DuplicateIdError as e:
            raise HTTPException(409, f"document ids already present or repeated: {e.ids[:10]}") from None
        return DocumentsResponse(added=report.added, total=report.total, truncated=report.truncated)

    return app
