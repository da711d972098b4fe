"""The ``openai`` clients behind OpenAIChat and OpenAIEmbedder, and their errors.

- Credentials: ``api_key`` / ``base_url`` arguments win, else the standard
  ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` environment variables (read by us,
  so a local server such as Ollama or vLLM works with no key: a placeholder is
  sent, which they ignore).
- Retries are ours (see retry.py), so every client is used with
  ``max_retries=0``; a client passed in by the caller is wrapped with
  ``with_options(max_retries=0)`` for the same reason (two retry loops would
  multiply the attempts).
- The async client is created lazily, once per event loop: an httpx async
  connection pool belongs to the loop that opened it, and a program may run
  several loops (one after the other with ``asyncio.run``, or one per thread).
- Errors become this library's: a timeout becomes ``timeout_error``, anything
  else ``base_error``, with ``status_code`` set and the original chained.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import weakref
from typing import Any, TypeVar

from .errors import EmbedderError, InvalidInputError, LLMError
from .retry import is_timeout, status_code_of
from .validation import as_seconds

#: Sent when no key is configured: local OpenAI-compatible servers ignore it,
#: and OpenAI itself answers 401, which surfaces as a clear typed error.
PLACEHOLDER_API_KEY = "not-needed"

E = TypeVar("E", EmbedderError, LLMError)


def _resolve(api_key: str | None, base_url: str | None) -> tuple[str, str | None]:
    key = api_key or os.environ.get("OPENAI_API_KEY") or PLACEHOLDER_API_KEY
    url = base_url or os.environ.get("OPENAI_BASE_URL") or None
    return key, url


def check_request_timeout(value: Any) -> float:
    """``timeout=`` of the OpenAI clients: a positive, finite number of seconds. None (no
    timeout) is refused: a server that never answers would hang the lookup for good."""
    seconds = as_seconds(value)
    if seconds is None or not 0 < seconds < math.inf:
        raise InvalidInputError(
            f"timeout must be a positive number of seconds, got {value!r}"
            + (" (a request must end: pass a large number instead)" if value is None else "")
        )
    return seconds


def our_options(client: Any, timeout: float) -> Any:
    """``client`` (the caller's) with its built-in retries off (ours run instead) and our
    ``timeout``, which the errors then report truly; if it is an openai client."""
    with_options = getattr(client, "with_options", None)
    return with_options(max_retries=0, timeout=timeout) if callable(with_options) else client


class OpenAIClients:
    """One sync client and one async client per event loop, built on first use."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        timeout: float,
        client: Any = None,
        async_client: Any = None,
    ) -> None:
        self._api_key, self._base_url = _resolve(api_key, base_url)
        self.timeout = check_request_timeout(timeout)
        self._lock = threading.Lock()  # lazy creation from several threads builds one client
        self._sync = None if client is None else our_options(client, self.timeout)
        self._owns_sync = client is None
        self._given_async = (
            None if async_client is None else our_options(async_client, self.timeout)
        )
        # Weak keys: a loop that is closed and gone takes its client with it.
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def base_url(self) -> str | None:
        return self._base_url

    def sync(self) -> Any:
        with self._lock:
            if self._sync is None:
                import openai

                self._sync = openai.OpenAI(
                    api_key=self._api_key,
                    base_url=self._base_url,
                    timeout=self.timeout,
                    max_retries=0,
                )
            return self._sync

    def for_running_loop(self) -> Any:
        if self._given_async is not None:
            return self._given_async
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.get(loop)
            if client is None:
                import openai

                client = openai.AsyncOpenAI(
                    api_key=self._api_key,
                    base_url=self._base_url,
                    timeout=self.timeout,
                    max_retries=0,
                )
                self._async[loop] = client
            return client

    def close(self) -> None:
        """Close the sync client we created (a client passed in is the caller's to close)."""
        with self._lock:
            client, self._sync = (self._sync, None) if self._owns_sync else (None, self._sync)
        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the running loop's async client (if we created it), and the sync one."""
        with self._lock:
            client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.close()
        self.close()


def translate_error(
    exc: BaseException,
    what: str,
    base_error: type[E],
    timeout_error: type[E],
    timeout: float,
) -> E:
    """Map an openai (or network) exception to ``base_error`` / ``timeout_error``."""
    status = status_code_of(exc)
    if is_timeout(exc):
        error = timeout_error(f"{what}: no answer within the {timeout:g} s timeout")
    elif status is not None:
        message = _server_message(exc)
        error = base_error(f"{what}: HTTP {status}: {message}")
    else:
        error = base_error(f"{what}: {exc}")
    error.status_code = status
    return error


def error_in_answer(answer: Any) -> str | None:
    """What is wrong with an HTTP 200 answer that is not the expected object, or None.

    Gateways and proxies (LiteLLM, Azure-like ones) and some servers answer an error
    with status 200 and ``{"error": {...}}`` (vLLM's older form: ``{"object":
    "error", "message": ...}`` at the top level), or an HTML page: the openai client
    hands those on as an object without data, or as the text. Their own message is
    the diagnosis (quota, model not loaded, ...), not "no data".
    """
    if isinstance(answer, (str, bytes)):
        return f"not JSON: {answer[:200]!r}"
    if isinstance(answer, list):
        return "a JSON list, not an object"
    error = _field(answer, "error")
    if not error and _field(answer, "object") == "error":
        error = answer
    if not error:
        return None
    message = _field(error, "message")
    return str(message or error)


def _field(value: Any, name: str) -> Any:
    """``value[name]`` of a JSON object, as a parsed mapping or an openai model."""
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _server_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if body.get("message"):
            return str(body["message"])
    return str(getattr(exc, "message", exc))
