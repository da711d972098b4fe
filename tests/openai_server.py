"""A real HTTP server on 127.0.0.1 that speaks the parts of the OpenAI API we use.

``/v1/embeddings`` returns bag-of-words vectors (tests/fakes.py), and
``/v1/chat/completions`` answers "answer to: <last user message>" (or what
``answer`` returns). Every request is recorded. ``fail_next`` scripts error
statuses (e.g. [500] then success) and ``delay`` makes it hang, so tests can
drive the real ``openai`` client through retries and timeouts.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fakes import bag_of_words_vector


@dataclass
class RecordedRequest:
    path: str
    body: dict[str, Any]


@dataclass
class OpenAIServerState:
    embedding_dim: int = 64
    answer: Callable[[list[dict[str, Any]]], str] = field(
        default=lambda messages: f"answer to: {messages[-1]['content']}"
    )
    fail_next: list[int] = field(default_factory=list)
    delay: float = 0.0
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, path_suffix: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r.path.endswith(path_suffix))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        with state.lock:
            state.requests.append(RecordedRequest(self.path, body))
            status = state.fail_next.pop(0) if state.fail_next else 200
        if state.delay:
            time.sleep(state.delay)  # simulates a hung upstream; the client's timeout must fire
        if status != 200:
            self._send(status, {"error": {"message": f"scripted {status}", "type": "server_error"}})
        elif self.path.endswith("/embeddings"):
            self._send(200, self._embeddings(body, state))
        elif self.path.endswith("/chat/completions"):
            self._send(200, self._chat(body, state))
        else:
            self._send(404, {"error": {"message": "not found"}})

    def _embeddings(self, body: dict[str, Any], state: OpenAIServerState) -> dict[str, Any]:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dim = int(body.get("dimensions") or state.embedding_dim)
        data = [
            {"object": "embedding", "index": i, "embedding": bag_of_words_vector(t, dim).tolist()}
            for i, t in enumerate(inputs)
        ]
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }

    def _chat(self, body: dict[str, Any], state: OpenAIServerState) -> dict[str, Any]:
        content = state.answer(body["messages"])
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": content},
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: OpenAIServerState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class OpenAIServer:
    """Start with ``with OpenAIServer() as server:``; ``server.base_url`` ends in /v1."""

    def __init__(self, state: OpenAIServerState | None = None) -> None:
        self.state = state or OpenAIServerState()
        self._server = _Server(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
