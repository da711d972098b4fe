"""The LLM the cache falls back to on a miss.

Anything callable works as an LLM: ``f(prompt) -> str`` (``prompt`` is what the
caller passed: a query string or a list of chat messages), or an ``async def``
for the async API. It may return a :class:`Completion` instead of a str to say
how the answer ended (a refusal or a truncated answer is returned to the caller
but not cached). An object may also expose ``cache_context`` (a JSON-
serialisable mapping: model, system prompt, generation parameters); the cache
hashes it into the context key of every entry it reads and writes, so an answer
produced under one model or system prompt is never served for another.
``OpenAIChat`` does all of this for you, plus ``acomplete``, ``stream`` and
``astream`` for the async and streaming APIs.

What counts as "not cacheable" (decided here, documented in the README):

- a **refusal**: the message's ``refusal`` field is set (OpenAI's structured
  refusal); its text is returned to the caller, never stored;
- a **content-filtered** answer (``finish_reason == "content_filter"``);
- a **truncated** answer (``finish_reason == "length"``: it hit ``max_tokens``;
  other servers' names in :data:`TRUNCATED`), unless the cache's policy says
  ``cache_truncated=True``;
- an answer that **calls a tool** (``tool_calls`` / ``function_call``): its text only
  leads into the call;
- an answer that ended any other way than :data:`FINISHED` (vLLM's "abort",
  OpenRouter's "error", ...): "unfinished";
- an empty or whitespace-only answer is an error (``LLMError``; a refusal or a
  filter with no text at all raises ``LLMRefusalError``), and so is text that is
  not a str or cannot be stored (a lone surrogate).

We do not guess refusals from wording ("I'm sorry, I can't..."): phrase lists
are language-specific and misfire; ``FallbackPolicy.should_cache`` is the
hook for such a rule.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, runtime_checkable

from .errors import InvalidInputError, LLMError, LLMRefusalError, LLMTimeoutError
from .openai_clients import OpenAIClients, error_in_answer, translate_error
from .prompts import Prompt, as_messages
from .retry import RetryPolicy, acall_with_retries, call_with_retries
from .validation import check_text

#: The seed tutorial's model and answer budget.
DEFAULT_CHAT_MODEL = "gpt-4o"
DEFAULT_MAX_TOKENS = 500


@runtime_checkable
class LLM(Protocol):
    """Minimal LLM interface: one prompt in, one answer out."""

    def __call__(self, prompt: str) -> str: ...


#: Anything ``get_or_compute`` accepts as ``llm``: ``f(prompt) -> str | Completion``,
#: an ``async def`` of the same shape (async API), or an object such as OpenAIChat.
LLMFunction: TypeAlias = Callable[[Any], Any]


@dataclass(frozen=True)
class Completion:
    """An LLM answer and how it ended."""

    text: str
    finish_reason: str | None = None  # "stop", "length", "content_filter", ...
    refusal: str | None = None  # the model's refusal message, if it refused
    model: str | None = None

    def uncacheable_reason(self, *, cache_truncated: bool = False) -> str | None:
        """Why this answer must not be cached: "refusal", "content_filter", "truncated",
        "tool_call" (the text only leads into a tool call), or "unfinished" (any other
        way of ending than :data:`FINISHED`, e.g. vLLM's "abort", OpenRouter's "error")."""
        reason = None if self.finish_reason is None else self.finish_reason.lower()
        if self.refusal:
            return "refusal"
        if reason is None or reason in FINISHED:
            return None
        if reason in TRUNCATED:
            return None if cache_truncated else "truncated"
        if reason == "content_filter":
            return "content_filter"
        return "tool_call" if reason in TOOL_CALL_FINISHES else "unfinished"


#: ``finish_reason`` values (compared in lower case: gateways pass Gemini's "STOP"
#: through) of an answer that ended as a whole, final answer: "stop" for OpenAI and
#: most compatible servers, the others from servers that pass their own through. None
#: (a plain callable's text) counts as finished too.
FINISHED = frozenset({"stop", "eos", "eos_token", "end_turn", "stop_sequence", "complete"})
#: ``finish_reason`` values of an answer cut by the token limit (OpenAI's "length",
#: Gemini's "MAX_TOKENS", Mistral's "model_length").
TRUNCATED = frozenset({"length", "max_tokens", "model_length"})
#: ``finish_reason`` values of an answer that hands over to a tool instead.
TOOL_CALL_FINISHES = frozenset({"tool_calls", "function_call", "tool_use"})


def as_completion(answer: object) -> Completion:
    """Check an LLM's return value: non-empty text, or a Completion with non-empty text.

    The text must also be storable (no lone surrogate, e.g. half of a JSON ``\\ud83d``
    escape): checked here so every path (sync, async, stream) raises the same LLMError
    before the store, instead of a raw UnicodeEncodeError from inside it.
    """
    completion = answer if isinstance(answer, Completion) else None
    if completion is None:
        if not isinstance(answer, str):
            raise LLMError(f"the LLM returned {type(answer).__name__}, not text; nothing cached")
        completion = Completion(answer)
    # None counts as no text: Completion(message.content) of a tool call has null content.
    text: object = "" if completion.text is None else completion.text
    if not isinstance(text, str):
        raise LLMError(
            f"the LLM returned a Completion whose text is {type(text).__name__}, not str; "
            "nothing cached"
        )
    if not text.strip():
        reason = completion.uncacheable_reason()
        if reason in ("refusal", "content_filter"):
            raise LLMRefusalError(f"the LLM gave no answer ({reason}); nothing was cached")
        raise LLMError(f"the LLM returned no text ({completion.text!r}), nothing was cached")
    try:
        check_text(text, "the LLM's answer")
    except InvalidInputError as exc:
        raise LLMError(f"{exc}; nothing was cached") from exc
    return completion


def llm_cache_context(llm: object | None) -> Mapping[str, Any] | None:
    """The part of the context key an LLM contributes (None for plain callables)."""
    context = getattr(llm, "cache_context", None)
    if context is None:
        return None
    if not isinstance(context, Mapping):
        raise TypeError(f"{type(llm).__name__}.cache_context must be a mapping")
    return context


def llm_error(exc: Exception) -> LLMError:
    """``exc`` as the LLMError to raise (``raise llm_error(exc)``, no ``from``): itself if
    typed already, keeping its own cause; else a new one caused by it. A TimeoutError
    of the LLM's own is an LLMTimeoutError, as the embedder's is an EmbedderTimeoutError."""
    if isinstance(exc, LLMError):
        return exc
    kind = LLMTimeoutError if isinstance(exc, TimeoutError) else LLMError
    error = kind(f"the LLM call failed, nothing was cached: {exc}")
    error.status_code = getattr(exc, "status_code", None)
    error.__cause__ = exc
    return error


def is_async_callable(llm: object) -> bool:
    call = getattr(llm, "__call__", None)  # noqa: B004 - instances with an async __call__
    return inspect.iscoroutinefunction(llm) or inspect.iscoroutinefunction(call)


def complete(llm: Any, prompt: Prompt) -> Completion:
    """Ask a sync LLM; every failure becomes LLMError."""
    method = getattr(llm, "complete", None)
    if is_async_callable(llm) and not callable(method):
        raise InvalidInputError("this LLM is async: use aget_or_compute()/astream()")
    try:
        answer = method(prompt) if callable(method) else llm(prompt)
    except Exception as exc:
        raise llm_error(exc)  # noqa: B904 - chained in llm_error
    if inspect.isawaitable(answer):
        if inspect.iscoroutine(answer):
            answer.close()  # never awaited: close it so Python does not warn
        raise InvalidInputError("this LLM is async: use aget_or_compute()/astream()")
    return as_completion(answer)


async def acomplete(llm: Any, prompt: Prompt) -> Completion:
    """Ask an LLM from async code: ``acomplete``, an async callable, or a sync one in a thread."""
    method = getattr(llm, "acomplete", None)
    try:
        if callable(method):
            answer = await method(prompt)
        elif is_async_callable(llm):
            answer = await llm(prompt)
        else:
            # A sync LLM would block the event loop: run it in a worker thread.
            answer = await asyncio.to_thread(llm, prompt)
            if inspect.isawaitable(answer):
                answer = await answer
    except Exception as exc:
        raise llm_error(exc)  # noqa: B904 - chained in llm_error
    return as_completion(answer)


class OpenAIChat:
    """Chat completions from OpenAI or any OpenAI-compatible server (Ollama, vLLM, ...).

    ``api_key`` / ``base_url`` default to ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL``
    (and the model to ``OPENAI_MODEL``, else gpt-4o). Model, system prompt,
    temperature, max_tokens and ``extra`` parameters (sent as extra JSON body
    fields, e.g. ``{"top_p": 0.9, "seed": 1}``) form ``cache_context``, so
    changing any of them never serves an answer made under the old ones.
    ``timeout`` is per request; failed requests are retried per ``retry``
    (default: ``max_retries`` retries with exponential backoff on 429/5xx,
    timeouts and lost connections). ``client`` / ``async_client`` let you pass
    configured ``openai.OpenAI`` / ``openai.AsyncOpenAI`` clients.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        system_prompt: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = DEFAULT_MAX_TOKENS,
        extra: Mapping[str, Any] | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        retry: RetryPolicy | None = None,
        client: Any = None,
        async_client: Any = None,
    ) -> None:
        self.model = model or os.environ.get("OPENAI_MODEL") or DEFAULT_CHAT_MODEL
        self.system_prompt = system_prompt
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra = dict(extra or {})
        self.retry = retry if retry is not None else RetryPolicy(max_retries=max_retries)
        self._clients = OpenAIClients(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            client=client,
            async_client=async_client,
        )

    @property
    def cache_context(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "system_prompt": self.system_prompt,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "extra": self.extra,
        }

    def __repr__(self) -> str:
        return f"OpenAIChat(model={self.model!r}, base_url={self._clients.base_url!r})"

    # -- requests ----------------------------------------------------------------

    def _request(self, prompt: Prompt, *, stream: bool) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "messages": as_messages(prompt, self.system_prompt),
        }
        if self.temperature is not None:
            params["temperature"] = self.temperature
        if self.max_tokens is not None:
            params["max_tokens"] = self.max_tokens
        if self.extra:
            # As raw body fields: the client's create() rejects keyword arguments it
            # does not know, and servers such as Ollama take options it has never heard of.
            params["extra_body"] = dict(self.extra)
        if stream:
            params["stream"] = True
        return params

    def _error(self, exc: Exception) -> LLMError:
        return translate_error(
            exc,
            f"chat completion with {self.model!r}",
            LLMError,
            LLMTimeoutError,
            self._clients.timeout,
        )

    def _completion(self, response: Any) -> Completion:
        problem = error_in_answer(response)
        if problem is not None:
            raise LLMError(f"chat completion with {self.model!r} answered HTTP 200: {problem}")
        if not getattr(response, "choices", None):
            raise LLMError(f"chat completion with {self.model!r} returned no choices")
        choice = response.choices[0]
        message = getattr(choice, "message", None)
        if message is None:  # a null choice or message: no text, and no AttributeError
            raise LLMError(
                f"chat completion with {self.model!r} returned a choice without a message"
            )
        refusal = getattr(message, "refusal", None) or None
        # Some servers say "stop" beside tool calls: the text is still not the answer.
        calls_tool = getattr(message, "tool_calls", None) or getattr(message, "function_call", None)
        return Completion(
            text=message.content or refusal or "",
            finish_reason="tool_calls" if calls_tool else choice.finish_reason,
            refusal=refusal,
            model=getattr(response, "model", None),
        )

    def _create(self, prompt: Prompt, *, stream: bool) -> Any:
        """One chat request (a completion, or the opening of a stream), with retries."""
        client = self._clients.sync()
        params = self._request(prompt, stream=stream)
        try:
            return call_with_retries(
                lambda: client.chat.completions.create(**params),
                self.retry,
                what=self._what(stream),
            )
        except Exception as exc:
            raise self._error(exc) from exc

    async def _acreate(self, prompt: Prompt, *, stream: bool) -> Any:
        """Async twin of :meth:`_create`, with ``openai.AsyncOpenAI``."""
        client = self._clients.for_running_loop()
        params = self._request(prompt, stream=stream)
        try:
            return await acall_with_retries(
                lambda: client.chat.completions.create(**params),
                self.retry,
                what=self._what(stream),
            )
        except Exception as exc:
            raise self._error(exc) from exc

    def _what(self, stream: bool) -> str:
        return f"chat {'stream' if stream else 'completion'} with {self.model!r}"

    def complete(self, prompt: Prompt) -> Completion:
        """One chat completion for ``prompt`` (a str or a list of messages)."""
        return self._completion(self._create(prompt, stream=False))

    async def acomplete(self, prompt: Prompt) -> Completion:
        """Async twin of :meth:`complete`, with ``openai.AsyncOpenAI``."""
        return self._completion(await self._acreate(prompt, stream=False))

    def __call__(self, prompt: Prompt) -> str:
        """The answer's text (an empty answer raises LLMError)."""
        return as_completion(self.complete(prompt)).text

    def stream(self, prompt: Prompt) -> ChatStream:
        """Stream the answer as text pieces; retries apply until the stream has opened."""
        return ChatStream(self._create(prompt, stream=True), self._error)

    async def astream(self, prompt: Prompt) -> AsyncChatStream:
        """Async twin of :meth:`stream`."""
        return AsyncChatStream(await self._acreate(prompt, stream=True), self._error)

    def close(self) -> None:
        """Close the HTTP client this object created."""
        self._clients.close()

    async def aclose(self) -> None:
        """Close the HTTP clients this object created (call it from the loop that used it)."""
        await self._clients.aclose()


class _Accumulator:
    """Collects a streamed answer's pieces and how it ended."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.refusal: list[str] = []
        self.finish_reason: str | None = None
        self.calls_tool = False  # a delta carried tool_calls / function_call
        self.model: str | None = None

    def feed(self, chunk: Any) -> str:
        self.model = getattr(chunk, "model", None) or self.model
        choices = getattr(chunk, "choices", None) or []
        # With n > 1 (extra={"n": 2}) the choices' deltas interleave, one choice a chunk:
        # only the first choice is the answer, as choices[0] is for complete().
        choice = next((c for c in choices if getattr(c, "index", None) in (0, None)), None)
        if choice is None:
            return ""
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        delta = choice.delta
        if delta is not None and (
            getattr(delta, "tool_calls", None) or getattr(delta, "function_call", None)
        ):
            self.calls_tool = True
        piece = ""
        if delta is not None and delta.content:
            piece = delta.content
            self.parts.append(piece)
        refusal = getattr(delta, "refusal", None) if delta is not None else None
        if refusal:
            self.refusal.append(refusal)
            piece += refusal
        return piece

    def finished(self) -> Completion:
        """The whole answer, once the stream has ended."""
        if self.finish_reason is None:
            # Every OpenAI-compatible server ends a stream with a finish_reason; a
            # stream without one was cut (a close-delimited body cannot say so).
            raise LLMError("the chat stream ended before the model finished (connection lost?)")
        refusal = "".join(self.refusal) or None
        text = "".join(self.parts) or refusal or ""
        finish = "tool_calls" if self.calls_tool else self.finish_reason
        return Completion(text, finish, refusal, self.model)


def _answered_json(raw: Any) -> bool:
    """Whether a stream request was answered with one JSON body instead of events."""
    headers = getattr(getattr(raw, "response", None), "headers", None)
    content_type = str(headers.get("content-type", "")) if headers is not None else ""
    return content_type.split(";")[0].strip().endswith("json")


def _not_a_stream(body: bytes) -> LLMError:
    """The error for a stream answered with one JSON body (HTTP 200): a gateway's error
    (read as events it was no chunk at all: "connection lost?"), or a server that
    does not stream. Nothing is made of a whole answer: it is not what was asked."""
    try:
        answer: Any = json.loads(body)
    except ValueError:
        answer = body.decode("utf-8", "replace")
    problem = error_in_answer(answer) or "a whole answer; does this server stream?"
    return LLMError(f"the chat stream came as one JSON body, not events: {problem}")


class ChatStream:
    """Text pieces of a streamed chat answer; ``completion`` is set once it ended normally."""

    def __init__(self, raw: Any, error: Callable[[Exception], LLMError]) -> None:
        self._raw = raw
        self._error = error
        self._acc = _Accumulator()
        self._pieces = self._generate()
        self.completion: Completion | None = None

    def _generate(self) -> Generator[str, None, None]:
        try:
            body = self._raw.response.read() if _answered_json(self._raw) else None
            if body is None:
                for chunk in self._raw:
                    piece = self._acc.feed(chunk)
                    if piece:
                        yield piece
        except Exception as exc:
            raise self._error(exc) from exc
        if body is not None:
            raise _not_a_stream(body)
        self.completion = self._acc.finished()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        """Stop reading and release the connection."""
        self._pieces.close()
        self._raw.close()


class AsyncChatStream:
    """Async twin of :class:`ChatStream`."""

    def __init__(self, raw: Any, error: Callable[[Exception], LLMError]) -> None:
        self._raw = raw
        self._error = error
        self._acc = _Accumulator()
        self._pieces = self._generate()
        self.completion: Completion | None = None

    async def _generate(self) -> AsyncGenerator[str, None]:
        try:
            body = await self._raw.response.aread() if _answered_json(self._raw) else None
            if body is None:
                async for chunk in self._raw:
                    piece = self._acc.feed(chunk)
                    if piece:
                        yield piece
        except Exception as exc:
            raise self._error(exc) from exc
        if body is not None:
            raise _not_a_stream(body)
        self.completion = self._acc.finished()

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        return await self._pieces.__anext__()

    async def aclose(self) -> None:
        """Stop reading and release the connection."""
        await self._pieces.aclose()
        await self._raw.close()
