"""A small OpenAI-compatible chat endpoint over a local transformers model.

For users without vLLM or llama.cpp, and for tests: ``POST /v1/chat/completions`` (messages,
max_tokens, temperature; chat template applied) and ``GET /v1/models``. Concurrent requests
are batched by :class:`~.teacher.LocalTeacher`. Not a production server: no streaming, n=1.

(No ``from __future__ import annotations`` here: FastAPI must resolve the request model,
which is defined inside create_app, from real annotations.)
"""

import threading
import time
import uuid
from typing import Any

from .teacher import LocalTeacher


def create_app(teacher: LocalTeacher, model_name: str | None = None, default_max_tokens: int = 512) -> Any:
    """The FastAPI app serving ``teacher`` under ``model_name`` (default: the model's path or alias)."""
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel, Field

    name = model_name or teacher.name
    created = int(time.time())

    class ChatMessage(BaseModel):
        role: str
        content: str

    class ChatRequest(BaseModel):
        model: str | None = None
        messages: list[ChatMessage] = Field(min_length=1)
        max_tokens: int | None = Field(default=None, ge=1)
        max_completion_tokens: int | None = Field(default=None, ge=1)
        temperature: float = Field(default=1.0, ge=0.0, le=2.0)
        n: int = 1
        stream: bool = False
        # response_format, top_p, stop, ...: accepted and ignored, so stock clients work unchanged
        model_config = {"extra": "allow"}

    app = FastAPI(title="clara teacher", version="1")

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "clara"}]}

    # A plain def: FastAPI runs it in its thread pool, so concurrent requests meet in the teacher's batcher.
    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest) -> dict[str, Any]:
        if req.model not in (None, name):
            raise HTTPException(404, f"model {req.model!r} not served here; this server serves {name!r}")
        if req.n != 1 or req.stream:
            raise HTTPException(400, "only n=1 without streaming is supported")
        limit = req.max_completion_tokens or req.max_tokens or default_max_tokens
        messages = [m.model_dump(include={"role", "content"}) for m in req.messages]
        text = teacher.complete(messages, limit, req.temperature)
        tok = teacher.tokenizer
        completion = len(tok(text, add_special_tokens=False)["input_ids"])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length" if completion >= limit else "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": completion, "total_tokens": completion},
        }

    return app


class BackgroundServer:
    """Run an app with uvicorn on a thread (tests, notebooks); ``url`` is its /v1 base URL."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))  # port 0: the OS picks a free one, known before serving
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("teacher server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
