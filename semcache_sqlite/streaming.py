"""Streaming: use the cache with an LLM that answers piece by piece.

>>> with cache.stream("How do I reset my password?") as answer:   # doctest: +SKIP
...     for piece in answer:
...         print(piece, end="")
>>> answer.is_cached, answer.result.timings.total                 # doctest: +SKIP

Semantics (sync ``stream`` and async ``astream`` alike):

- The lookup runs when the stream is entered (``with``/``async with``) or first
  iterated, so ``is_cached`` is known before the first piece is read.
- **Hit**: the cached answer is replayed as one piece.
- **Miss**: the LLM's pieces are passed through as they arrive; once the stream
  has *completed* normally, the full text is stored (unless it is not cacheable:
  refusal, content filter, truncated, see llms.py). On an error nothing is
  stored and ``LLMError`` is raised from the iteration. If the caller stops
  early (``break``, ``close()``, leaving the ``with`` block, task cancelled),
  the LLM stream is closed and nothing is stored.
- The LLM is streamed through its ``stream``/``astream`` method (``OpenAIChat``);
  any other LLM may return an iterable of text pieces (sync), an async iterable
  (async), or simply a whole string, which is passed on as one piece. Anything
  else (a mapping, bytes, a set, None) raises ``LLMError`` and stores nothing.
- **Single-flight** applies as in ``get_or_compute``: while one stream is
  producing a miss, identical concurrent requests wait for it to complete and
  then replay its answer. A stream holds its flight until it is exhausted or
  closed, so close streams you do not finish (use ``with``); an abandoned one
  releases its waiters when garbage-collected.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .aio import afind
from .errors import InvalidInputError, LLMError, SemCacheError
from .fallback import (
    Found,
    Request,
    _as_cache,
    conclude,
    conclude_answer,
    conclude_error,
    conclude_follower,
    conclude_hit,
    find,
    prepare,
    store_answer,
)
from .llms import Completion, as_completion, is_async_callable, llm_error
from .prompts import Prompt
from .singleflight import FLIGHTS, Flight
from .timing import CacheResult, logger

if TYPE_CHECKING:
    from .cache import Context, SemanticCache


def open_stream(llm: Any, prompt: Prompt) -> Any:
    """A sync iterable of text pieces from ``llm`` (see module docstring)."""
    method = getattr(llm, "stream", None)
    if is_async_callable(llm) and not callable(method):
        raise InvalidInputError("this LLM is async: use astream()")
    source = method(prompt) if callable(method) else llm(prompt)
    if inspect.isawaitable(source) or hasattr(source, "__aiter__"):
        if inspect.iscoroutine(source):
            source.close()
        raise InvalidInputError("this LLM is async: use astream()")
    if isinstance(source, (str, Completion)):
        return _Whole(source)
    check_pieces_source(source)
    # An iterator as is (it may carry ``completion`` and ``close``), an iterable made one.
    return source if isinstance(source, Iterator) else iter(source)


def check_pieces_source(source: object) -> None:
    """Refuse what is not a stream of text pieces, as get_or_compute refuses it.

    A mapping (a raw JSON response) would stream its keys, bytes their ints, a set its
    items in no fixed order; None and numbers are not iterable at all.
    """
    if isinstance(source, _NOT_PIECES) or not isinstance(source, Iterable):
        raise LLMError(
            f"the LLM returned {type(source).__name__}, not text or an iterable of text "
            "pieces; nothing cached"
        )


#: Iterables that are not streams of text pieces (see check_pieces_source).
_NOT_PIECES = (Mapping, AbstractSet, bytes, bytearray, memoryview)


class _Whole:
    """A whole answer presented as a stream of one piece."""

    def __init__(self, answer: str | Completion) -> None:
        self.completion = as_completion(answer)
        self._pieces = iter([self.completion.text])

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def __next__(self) -> str:
        return next(self._pieces)

    def __aiter__(self) -> _Whole:
        return self

    async def __anext__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration:
            raise StopAsyncIteration from None


async def open_astream(llm: Any, prompt: Prompt) -> Any:
    """An async iterable of text pieces from ``llm``."""
    method = getattr(llm, "astream", None)
    sync_method = getattr(llm, "stream", None)
    if callable(method):
        source = method(prompt)
    elif inspect.isasyncgenfunction(llm) or is_async_callable(llm):
        source = llm(prompt)
    elif callable(sync_method):
        source = await asyncio.to_thread(sync_method, prompt)
    else:
        source = await asyncio.to_thread(llm, prompt)
    if inspect.isawaitable(source):
        source = await source
    if isinstance(source, (str, Completion)):
        return _Whole(source)
    if hasattr(source, "__aiter__"):
        return source.__aiter__()
    check_pieces_source(source)
    return _ThreadedIterator(iter(source))


class _ThreadedIterator:
    """A blocking iterator read from async code, one ``next()`` per worker-thread hop.

    A cancelled read leaves its worker thread inside ``next()``, where the iterator
    cannot be closed ("generator already executing"): ``aclose`` then leaves the close
    to that thread, which does it as soon as its read returns.
    """

    def __init__(self, pieces: Iterator[Any]) -> None:
        self._pieces = pieces
        self._reading = threading.Lock()  # held by the worker thread inside next()
        self._close_pending = False

    @property
    def completion(self) -> Any:
        """How the wrapped stream ended, if it says (e.g. a ChatStream)."""
        return getattr(self._pieces, "completion", None)

    def __aiter__(self) -> _ThreadedIterator:
        return self

    async def __anext__(self) -> Any:
        done = object()
        piece = await asyncio.to_thread(self._next, done)
        if piece is done:
            raise StopAsyncIteration
        return piece

    def _next(self, done: object) -> Any:
        with self._reading:
            try:
                return next(self._pieces, done)
            finally:
                if self._close_pending:  # asked while this read ran
                    self._close()

    async def aclose(self) -> None:
        self._close_pending = True
        if not self._reading.acquire(blocking=False):
            return  # a worker thread is inside next(): it closes as it returns
        try:
            await asyncio.to_thread(self._close)
        finally:
            self._reading.release()

    def _close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if callable(close):
            close()


#: Returned by next()/anext() when the LLM's stream has ended.
_END: Any = object()


def _piece(value: Any) -> str:
    if not isinstance(value, str):
        raise LLMError(f"the LLM streamed {type(value).__name__}, not text; nothing cached")
    return value


def _streamed_completion(source: Any, parts: list[str]) -> Completion:
    completion = getattr(source, "completion", None)
    if isinstance(completion, Completion):
        return as_completion(completion)
    return as_completion("".join(parts))


class _StreamBase:
    """State shared by the sync and async streams."""

    def __init__(self, cache: SemanticCache, req: Request) -> None:
        self._cache = cache
        self._req = req
        self._started = False
        self._replay: list[str] | None = None
        self._source: Any = None
        self._found: Found | None = None
        self._flight: Flight[CacheResult] | None = None
        self._parts: list[str] = []
        self._finished = False
        #: True if the answer comes from the cache; None until the lookup ran.
        self.is_cached: bool | None = None
        #: The request's CacheResult, once it is complete (or stopped, or failed).
        self.result: CacheResult | None = None

    @property
    def response(self) -> str:
        """The text passed on so far (all of it once the stream is exhausted)."""
        return "".join(self._parts)

    def _serve(self, result: CacheResult) -> None:
        self.result = result
        self.is_cached = result.is_cached
        self._replay = [result.response or ""]

    def _settle_flight(self, result: CacheResult | None, error: BaseException | None) -> None:
        flight, self._flight = self._flight, None
        if flight is None:
            return
        if result is not None:
            FLIGHTS.finish(flight, result)
        elif error is not None:
            FLIGHTS.fail(flight, error)
        else:
            FLIGHTS.abandon(flight)

    def _complete_miss(self) -> None:
        assert self._found is not None
        found = self._found
        completion = _streamed_completion(self._source, self._parts)
        result = conclude_answer(
            self._cache,
            self._req,
            found,
            completion,
            lambda: store_answer(self._cache, self._req, found, completion.text),
        )
        self.result = result
        self._finished = True
        self._settle_flight(result, None)

    def _stopped_early(self) -> None:
        self._finished = True
        logger.info("stream closed before the end: nothing cached")
        self.result = conclude(
            self._cache,
            self._req,
            "uncached",
            response=self.response,
            is_cached=False,
            similarity=None if self._found is None else self._found.similarity,
            reason="stopped_early",
            embed_failed=self._found is not None and self._found.embed_error is not None,
        )
        self._settle_flight(None, None)

    def _failed(self, exc: Exception) -> Exception:
        """The error to raise (``raise self._failed(exc)``, no ``from``): ``exc`` itself if
        typed, keeping its own cause; else an LLMError (LLMTimeoutError for a
        TimeoutError) caused by it. Concludes the request and releases the waiters."""
        self._finished = True
        error = exc if isinstance(exc, SemCacheError) else llm_error(exc)
        self.result = conclude_error(self._cache, self._req, self._found, error)
        self._settle_flight(None, error)
        return error

    def __del__(self) -> None:
        # Dropped without close(): at least release the waiters (no I/O in a finaliser).
        if self._flight is not None:
            FLIGHTS.abandon(self._flight)


class CachedStream(_StreamBase):
    """A sync stream of text pieces through the cache (see module docstring)."""

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        cache, req = self._cache, self._req
        while cache.policy.single_flight:
            flight, leader = FLIGHTS.join(req.flight_key)
            if flight is None or leader:
                self._flight = flight
                break
            with req.watch.phase("wait"):
                finished = FLIGHTS.wait_as_follower(flight, cache.policy.coalesce_timeout)
            if not finished:
                break
            if not flight.abandoned:
                try:
                    self._serve(conclude_follower(cache, req, flight))
                except BaseException:
                    self._finished = True  # the leader's error is this stream's error
                    raise
                return
        try:
            self._lead()
        except Exception as exc:
            self._finished = True
            self._settle_flight(None, exc)
            raise
        except BaseException:
            self._finished = True
            self._settle_flight(None, None)
            raise

    def _lead(self) -> None:
        cache, req = self._cache, self._req
        found = self._found = find(cache, req, fail_open=cache.policy.fail_open)
        if found.hit is not None:
            result = conclude_hit(cache, req, found)
            self._settle_flight(result, None)
            self._serve(result)
            return
        self.is_cached = False
        if req.llm is None:
            error = LLMError("cache miss and no LLM configured: pass llm= to SemanticCache or call")
            self.result = conclude_error(cache, req, found, error)
            raise error
        try:
            with req.watch.phase("llm"):
                self._source = open_stream(req.llm, req.prompt)
        except Exception as exc:
            raise self._failed(exc)  # noqa: B904 - chained inside _failed

    def __enter__(self) -> CachedStream:
        self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        self._start()
        if self._replay is not None:
            if not self._replay:
                raise StopIteration
            piece = self._replay.pop(0)
            self._parts.append(piece)
            return piece
        if self._finished:
            raise StopIteration
        try:
            with self._req.watch.phase("llm"):
                raw = next(self._source, _END)
            if raw is _END:
                self._complete_miss()
            else:
                piece = _piece(raw)
        except Exception as exc:
            self._close_source()
            raise self._failed(exc)  # noqa: B904 - chained inside _failed
        except BaseException:
            self._close_source()
            self._stopped_early()
            raise
        if raw is _END:
            raise StopIteration
        self._parts.append(piece)
        return piece

    def _close_source(self) -> None:
        close = getattr(self._source, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # the stream is being abandoned; its close is best-effort
                logger.debug("closing the LLM stream failed", exc_info=True)

    def close(self) -> None:
        """Stop: close the LLM stream; a miss that did not complete stores nothing."""
        if self._started and self._source is not None and not self._finished:
            self._close_source()
            self._stopped_early()
        self._settle_flight(None, None)


class AsyncCachedStream(_StreamBase):
    """An async stream of text pieces through the cache (see module docstring)."""

    async def _start(self) -> None:
        if self._started:
            return
        self._started = True
        cache, req = self._cache, self._req
        while cache.policy.single_flight:
            flight, leader = FLIGHTS.join(req.flight_key)
            if flight is None or leader:
                self._flight = flight
                break
            with req.watch.phase("wait"):
                finished = await FLIGHTS.await_as_follower(flight, cache.policy.coalesce_timeout)
            if not finished:
                break
            if not flight.abandoned:
                try:
                    self._serve(await asyncio.to_thread(conclude_follower, cache, req, flight))
                except BaseException:
                    self._finished = True  # the leader's error is this stream's error
                    raise
                return
        try:
            await self._lead()
        except Exception as exc:
            self._finished = True
            self._settle_flight(None, exc)
            raise
        except BaseException:
            self._finished = True
            self._settle_flight(None, None)
            raise

    async def _lead(self) -> None:
        cache, req = self._cache, self._req
        found = self._found = await afind(cache, req, fail_open=cache.policy.fail_open)
        if found.hit is not None:
            result = await asyncio.to_thread(conclude_hit, cache, req, found)
            self._settle_flight(result, None)
            self._serve(result)
            return
        self.is_cached = False
        if req.llm is None:
            error = LLMError("cache miss and no LLM configured: pass llm= to SemanticCache or call")
            self.result = await asyncio.to_thread(conclude_error, cache, req, found, error)
            raise error
        try:
            with req.watch.phase("llm"):
                self._source = await open_astream(req.llm, req.prompt)
        except Exception as exc:
            raise await asyncio.to_thread(self._failed, exc)  # noqa: B904 - chained there

    async def __aenter__(self) -> AsyncCachedStream:
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        await self._start()
        if self._replay is not None:
            if not self._replay:
                raise StopAsyncIteration
            piece = self._replay.pop(0)
            self._parts.append(piece)
            return piece
        if self._finished:
            raise StopAsyncIteration
        try:
            with self._req.watch.phase("llm"):
                raw = await anext(self._source, _END)
            if raw is _END:
                await asyncio.to_thread(self._complete_miss)
            else:
                piece = _piece(raw)
        except Exception as exc:
            await self._close_source()
            raise await asyncio.to_thread(self._failed, exc)  # noqa: B904 - chained there
        except BaseException:  # cancelled mid-stream: behave as if closed early
            self._stopped_early_quietly()
            await self._close_source()
            raise
        if raw is _END:
            raise StopAsyncIteration
        self._parts.append(piece)
        return piece

    def _stopped_early_quietly(self) -> None:
        # Cancellation: no awaiting allowed any more, and counting in SQLite from the
        # loop thread would block it; release the waiters and report without I/O.
        self._finished = True
        self._settle_flight(None, None)

    async def _close_source(self) -> None:
        for name in ("aclose", "close"):
            close = getattr(self._source, name, None)
            if callable(close):
                try:
                    outcome = close()
                    if inspect.isawaitable(outcome):
                        await outcome
                except Exception:
                    logger.debug("closing the LLM stream failed", exc_info=True)
                return

    async def aclose(self) -> None:
        """Stop: close the LLM stream; a miss that did not complete stores nothing."""
        if self._started and self._source is not None and not self._finished:
            await self._close_source()
            await asyncio.to_thread(self._stopped_early)
        self._settle_flight(None, None)


class StreamingMixin:
    """``stream`` and ``astream`` of SemanticCache."""

    def stream(
        self,
        query: Prompt,
        llm: Any = None,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
        threshold: float | None = None,
    ) -> CachedStream:
        """Stream an answer through the cache: replay a hit, or stream and store a miss."""
        cache = _as_cache(self)
        model = llm if llm is not None else cache.llm
        return CachedStream(
            cache, prepare(cache, "stream", query, model, namespace, user_id, context, threshold)
        )

    def astream(
        self,
        query: Prompt,
        llm: Any = None,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
        threshold: float | None = None,
    ) -> AsyncCachedStream:
        """Async ``stream``: use with ``async with`` / ``async for``."""
        cache = _as_cache(self)
        model = llm if llm is not None else cache.llm
        return AsyncCachedStream(
            cache, prepare(cache, "stream", query, model, namespace, user_id, context, threshold)
        )
