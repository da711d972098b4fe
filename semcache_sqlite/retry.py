"""Retries with exponential backoff for calls to OpenAI-compatible services.

Why our own loop rather than the ``openai`` client's ``max_retries``: the
client's backoff starts at 0.5 s and cannot be tuned, it knows nothing about a
total deadline, and its errors are the client's own. Here the clients are built
with ``max_retries=0`` and :func:`call_with_retries` / :func:`acall_with_retries`
retry what is worth retrying:

- HTTP 408, 409, 429 and every 5xx (rate limits, overload, transient faults);
- timeouts and lost connections (the request may never have arrived).

Anything else (400 bad request, 401/403 auth, 404 model not found, 422) fails
at once: sending it again cannot help. Waits grow ``initial_backoff * 2**n``
up to ``max_backoff``, minus up to ``jitter`` of it at random (so a crowd of
clients does not retry in lock-step), and a ``Retry-After``/``Retry-After-Ms``
header from the server wins when it is shorter than ``max_retry_after``. With a
``deadline``, no attempt starts, and no wait is scheduled, past it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

logger = logging.getLogger("semcache_sqlite")

T = TypeVar("T")

#: Statuses worth another attempt (the same set the openai client retries).
RETRYABLE_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a failed request (see module docstring)."""

    max_retries: int = 2
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    jitter: float = 0.25
    #: Longest server-requested wait we honour; a longer Retry-After is not retried.
    max_retry_after: float = 60.0
    #: Total seconds for all attempts and waits of one call; None = no limit.
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.initial_backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be in [0, 1]")

    def backoff(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry_number`` (0-based)."""
        if retry_after is not None and 0 < retry_after <= self.max_retry_after:
            return retry_after
        base = min(self.initial_backoff * math.pow(2.0, min(retry_number, 60)), self.max_backoff)
        return max(0.0, base * (1.0 - self.jitter * random.random()))


def status_code_of(exc: BaseException) -> int | None:
    """The HTTP status of an openai ``APIStatusError`` (None for anything else)."""
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def is_timeout(exc: BaseException) -> bool:
    import openai

    return isinstance(exc, (openai.APITimeoutError, TimeoutError))


def is_retryable(exc: BaseException) -> bool:
    """Whether a failed request may succeed if sent again (see module docstring)."""
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        return status in RETRYABLE_STATUSES or status >= 500
    return False


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's requested wait (``Retry-After-Ms`` or ``Retry-After`` in seconds)."""
    response = getattr(exc, "response", None)
    headers: Any = getattr(response, "headers", None)
    if headers is None:
        return None
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            continue  # an HTTP date: rare from APIs; fall back to our own backoff
        if math.isfinite(seconds):
            return seconds
    return None


def _next_wait(
    policy: RetryPolicy, attempt: int, exc: BaseException, started: float, now: float
) -> float | None:
    """Seconds to wait before the next attempt, or None to give up and raise ``exc``."""
    if attempt >= policy.max_retries or not is_retryable(exc):
        return None
    retry_after = retry_after_seconds(exc)
    if retry_after is not None and retry_after > policy.max_retry_after:
        return None  # the server asks for more patience than we are configured to have
    wait = policy.backoff(attempt, retry_after)
    if policy.deadline is not None and now + wait - started >= policy.deadline:
        return None
    return wait


def call_with_retries(
    call: Callable[[], T],
    policy: RetryPolicy,
    *,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``call()``; retry per ``policy``; raise the last error when giving up."""
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return call()
        except Exception as exc:
            wait = _next_wait(policy, attempt, exc, started, time.monotonic())
            if wait is None:
                raise
            attempt += 1
            logger.info("%s failed (%s); retry %d in %.3f s", what, _brief(exc), attempt, wait)
            sleep(wait)


async def acall_with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str,
) -> T:
    """Async twin of :func:`call_with_retries` (waits with ``asyncio.sleep``)."""
    started = time.monotonic()
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            wait = _next_wait(policy, attempt, exc, started, time.monotonic())
            if wait is None:
                raise
            attempt += 1
            logger.info("%s failed (%s); retry %d in %.3f s", what, _brief(exc), attempt, wait)
            await asyncio.sleep(wait)


def _brief(exc: BaseException) -> str:
    status = status_code_of(exc)
    return f"HTTP {status}" if status is not None else type(exc).__name__
