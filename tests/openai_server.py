"""A real HTTP server on 127.0.0.1 that speaks the parts of the OpenAI API we use.

``/v1/embeddings`` returns bag-of-words vectors (tests/fakes.py), and
``/v1/chat/completions`` answers "answer to: <last user message>" (or what
``answer`` returns), as one JSON body or, with ``"stream": true``, as
server-sent events, one word per chunk. Every request is recorded.

Knobs on ``server.state`` for scripting failures:

- ``fail_next`` (+ ``fail_path``): error statuses for the next requests (e.g.
  [500] then success), optionally only for one endpoint;
- ``delay`` (+ ``delay_path``): hang that long before answering, so a client
  timeout fires; the wait ends early when the server shuts down, so tests
  never wait for it;
- ``gate``: chat requests wait until this event is set (concurrency tests hold
  the leader's LLM call open with it, with no sleeps);
- ``finish_reason``, ``refusal``: how the answer ends (refusal: content null);
- ``tool_call``: the answer also calls a tool (``tool_calls`` in the message, or
  in a delta of the stream), whatever ``finish_reason`` says;
- ``wrong_dim``: embeddings of that length instead of the requested one;
- ``omit_index``: embeddings without their ``index`` field (in input order);
- embeddings come as the request's ``encoding_format`` asks (base64 of
  little-endian float32, or a list of floats); ``reject_base64`` answers a base64
  request with 400 (vLLM before 0.5.1, some gateways), ``force_encoding`` sends
  that format whatever was asked;
- ``stream_fail_after``: a stream stops after that many chunks, without its
  final chunk (a connection lost mid-answer);
- ``reply``: ``(path, body) -> RawReply | None``, an answer sent byte for byte
  instead of the normal one (None: the normal one). What other servers (vLLM,
  Ollama, llama.cpp, gateways) send: odd JSON, an error in a 200, raw
  server-sent events, a body cut short by a dropped connection.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fakes import bag_of_words_vector

#: The tool call a ``tool_call`` answer makes.
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "lookup_order", "arguments": '{"order": 42}'},
}


@dataclass
class RawReply:
    """An HTTP answer sent as is (see ``OpenAIServerState.reply``)."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    #: Content-Length to announce: None for len(body); more than len(body) makes the
    #: client see the connection drop mid-body; -1 sends none (ends at close, as SSE).
    length: int | None = None

    @classmethod
    def json(cls, payload: Any, status: int = 200, **options: Any) -> RawReply:
        return cls(json.dumps(payload).encode("utf-8"), status, **options)

    @classmethod
    def sse(cls, *events: Any, done: bool = True) -> RawReply:
        """Server-sent events: a dict is sent as ``data: <json>``, a str as a raw line."""
        lines = [
            e.encode("utf-8") if isinstance(e, str) else b"data: " + json.dumps(e).encode()
            for e in events
        ]
        body = b"".join(line + b"\n\n" for line in lines)
        if done:
            body += b"data: [DONE]\n\n"
        return cls(body, content_type="text/event-stream", length=-1)


@dataclass
class RecordedRequest:
    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased


@dataclass
class OpenAIServerState:
    embedding_dim: int = 64
    answer: Callable[[list[dict[str, Any]]], str] = field(
        default=lambda messages: f"answer to: {messages[-1]['content']}"
    )
    fail_next: list[int] = field(default_factory=list)
    fail_path: str = ""  # only requests whose path ends with this consume fail_next
    delay: float = 0.0
    delay_path: str = ""  # only requests whose path ends with this are delayed
    gate: threading.Event | None = None
    finish_reason: str = "stop"
    refusal: str | None = None
    tool_call: bool = False
    wrong_dim: int | None = None
    omit_index: bool = False
    reject_base64: bool = False
    max_inputs: int | None = None  # more inputs in one embeddings request: 413 (as TEI)
    force_encoding: str | None = None
    stream_fail_after: int | None = None
    reply: Callable[[str, dict[str, Any]], RawReply | None] | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(default_factory=threading.Condition)
    released: threading.Event = field(default_factory=threading.Event)

    def count(self, path_suffix: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r.path.endswith(path_suffix))

    def wait_for_requests(self, path_suffix: str, count: int, timeout: float = 10.0) -> bool:
        """Block until ``count`` requests to ``path_suffix`` have arrived."""
        with self.arrived:
            return self.arrived.wait_for(lambda: self.count(path_suffix) >= count, timeout)

    def bodies(self, path_suffix: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r.body for r in self.requests if r.path.endswith(path_suffix)]


def _encoded(vector: Any, encoding: str) -> Any:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        with state.lock:
            state.requests.append(
                RecordedRequest(self.path, body, {k.lower(): v for k, v in self.headers.items()})
            )
            scripted = state.fail_next and self.path.endswith(state.fail_path)
            status = state.fail_next.pop(0) if scripted else 200
        with state.arrived:
            state.arrived.notify_all()
        if state.delay and self.path.endswith(state.delay_path):
            # A hung upstream: the client's timeout must fire. Shutdown ends the wait.
            state.released.wait(state.delay)
        raw = state.reply(self.path, body) if state.reply is not None and status == 200 else None
        if raw is not None:
            self._send_raw(raw)
        elif status != 200:
            self._send(status, {"error": {"message": f"scripted {status}", "type": "server_error"}})
        elif self.path.endswith("/embeddings"):
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            if state.reject_base64 and body.get("encoding_format") == "base64":
                message = "base64 encoding is not currently supported"
                self._send(400, {"object": "error", "message": message, "code": 400})
            elif state.max_inputs is not None and len(inputs) > state.max_inputs:
                message = f"batch size {len(inputs)} > maximum allowed batch size"
                self._send(413, {"error": message, "error_type": "validation"})
            else:
                self._send(200, self._embeddings(body, state))
        elif self.path.endswith("/chat/completions"):
            if state.gate is not None:
                state.gate.wait(10.0)
            if body.get("stream"):
                self._stream(body, state)
            else:
                self._send(200, self._chat(body, state))
        else:
            self._send(404, {"error": {"message": "not found"}})

    def _embeddings(self, body: dict[str, Any], state: OpenAIServerState) -> dict[str, Any]:
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dim = state.wrong_dim or int(body.get("dimensions") or state.embedding_dim)
        encoding = state.force_encoding or body.get("encoding_format") or "float"
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(vector, encoding)}
            for i, vector in enumerate(bag_of_words_vector(t, dim) for t in inputs)
        ]
        if state.omit_index:
            for item in data:
                del item["index"]
        return {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }

    def _chat(self, body: dict[str, Any], state: OpenAIServerState) -> dict[str, Any]:
        content = None if state.refusal else state.answer(body["messages"])
        message: dict[str, Any] = {
            "role": "assistant",
            "content": content,
            "refusal": state.refusal,
        }
        if state.tool_call:
            message["tool_calls"] = [TOOL_CALL]
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "finish_reason": state.finish_reason,
                    "message": message,
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }

    def _stream(self, body: dict[str, Any], state: OpenAIServerState) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # HTTP/1.0: the body ends when the connection closes
        text = state.refusal or state.answer(body["messages"])
        words = text.split(" ")
        pieces = [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]
        field_name = "refusal" if state.refusal else "content"
        for number, piece in enumerate(pieces):
            if state.stream_fail_after is not None and number >= state.stream_fail_after:
                return  # connection dropped: no final chunk, no [DONE]
            self._event(self._chunk(body, {field_name: piece}, None))
        if state.tool_call:
            self._event(self._chunk(body, {"tool_calls": [{"index": 0, **TOOL_CALL}]}, None))
        self._event(self._chunk(body, {}, state.finish_reason))
        self.wfile.write(b"data: [DONE]\n\n")

    def _chunk(self, body: dict[str, Any], delta: dict[str, Any], finish: str | None) -> Any:
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def _event(self, payload: dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(payload).encode("utf-8") + b"\n\n")
        self.wfile.flush()

    def _send_raw(self, raw: RawReply) -> None:
        self.send_response(raw.status)
        self.send_header("Content-Type", raw.content_type)
        if raw.length != -1:
            length = len(raw.body) if raw.length is None else raw.length
            self.send_header("Content-Length", str(length))
        for name, value in raw.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw.body)
        self.wfile.flush()

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

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out or stopped reading closed its end: expected here.
        pass


class OpenAIServer:
    """Start with ``with OpenAIServer() as server:``; ``server.base_url`` ends in /v1."""

    def __init__(self, state: OpenAIServerState | None = None) -> None:
        self.state = state or OpenAIServerState()
        self._server = _Server(self.state)
        # A short poll interval: shutdown() waits for the serve loop's next poll.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def __enter__(self) -> OpenAIServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.released.set()  # end any scripted hang at once
        if self.state.gate is not None:
            self.state.gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
