"""The async API: the cache's I/O methods as coroutines that never block the event loop.

How each kind of work runs:

- **LLM calls** use the LLM's ``acomplete`` (``OpenAIChat``: ``openai.AsyncOpenAI``),
  or await it if it is an ``async def``; a plain sync callable runs in a worker
  thread (``asyncio.to_thread``).
- **Embeddings** use the embedder's ``aembed`` when it has one (``OpenAIEmbedder``),
  else run ``embed`` in a worker thread (the local ONNX model is CPU work, and
  releases the GIL while it runs).
- **SQLite** work runs in worker threads: sqlite3 has no async interface, and
  each worker thread gets its own connection (db.py), so this is safe.

``aget_or_compute``/``aget_or_compute_result``/``alookup`` follow the same steps,
failure policy and single-flight as their sync twins (fallback.py), so threads
and tasks of one process coalesce with each other. Every other I/O method of
the cache has a twin named ``a`` + its name, with the same parameters, that runs
it in a worker thread, embedding included (tests/test_async.py checks that no
method lacks one and that the parameters stay equal).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .embedder_calls import checked_vector, embedder_errors
from .errors import EmbedderError, EmbedderTimeoutError
from .fallback import (
    Found,
    Request,
    _as_cache,
    conclude,
    conclude_answer,
    conclude_error,
    conclude_follower,
    conclude_hit,
    conclude_miss_without_llm,
    embed_failed,
    prepare,
    store_answer,
)
from .lifecycle import UNSET, Unset
from .llms import acomplete
from .prompts import Prompt
from .singleflight import FLIGHTS, Flight, leading
from .timing import CacheResult, logger
from .validation import FloatVector

if TYPE_CHECKING:
    from .cache import Context, SemanticCache
    from .decision import CacheEntry, LookupResult
    from .embedders import Embedder
    from .lifecycle import Eviction, NamespacePolicy, OnDuplicate
    from .quality_store import Calibration, FeedbackRow
    from .store_reembed import ReembedState


async def aembed_query(cache: SemanticCache, query: str) -> FloatVector:
    """Embed one query without blocking the loop, within the policy's deadline."""
    aembed = getattr(cache.embedder, "aembed", None)
    timeout = cache.policy.embed_timeout

    async def embed() -> Any:
        # Typed here, inside the deadline: the embedder's own TimeoutError (a
        # socket.timeout, say) becomes an EmbedderTimeoutError, never taken for ours.
        with embedder_errors():
            if callable(aembed):
                return await aembed([query])
            return await asyncio.to_thread(cache.embedder.embed, [query])

    try:
        matrix = await asyncio.wait_for(embed(), timeout)
    except asyncio.TimeoutError as exc:
        if isinstance(exc, EmbedderError):  # the embedder's own timeout, typed in embed()
            raise
        raise EmbedderTimeoutError(
            f"the embedder did not answer within the {timeout:g} s deadline"
        ) from exc
    with embedder_errors():
        return checked_vector(cache.embedder, matrix)


async def afind(cache: SemanticCache, req: Request, *, fail_open: bool) -> Found:
    """Async twin of fallback.find."""
    with req.watch.phase("search"):
        row = await asyncio.to_thread(cache._store.find_exact, req.scope, req.query_hash)
    if row is not None:
        return Found(cache._exact_result(row, req.query), None, 1.0)
    try:
        with req.watch.phase("embed"):
            vector = await aembed_query(cache, req.query)
    except EmbedderError as exc:
        return await asyncio.to_thread(embed_failed, cache, req, exc, fail_open=fail_open)
    with req.watch.phase("search"):
        hit, similarity = await asyncio.to_thread(
            cache._judge, req.scope, vector, req.threshold, req.query
        )
    return Found(hit, vector, similarity)


async def arun_get_or_compute(cache: SemanticCache, req: Request) -> CacheResult:
    """Async twin of fallback.run_get_or_compute (shares its flights)."""
    if not cache.policy.single_flight:
        return await alead(cache, req)
    while True:
        flight, leader = FLIGHTS.join(req.flight_key)
        if flight is None:
            return await alead(cache, req)
        if leader:
            return await alead_flight(cache, req, flight)
        with req.watch.phase("wait"):
            finished = await FLIGHTS.await_as_follower(flight, cache.policy.coalesce_timeout)
        if not finished:
            logger.info("gave up waiting for an identical in-flight request; calling the LLM")
            return await alead(cache, req)
        if not flight.abandoned:
            return await asyncio.to_thread(conclude_follower, cache, req, flight)


async def alead_flight(
    cache: SemanticCache, req: Request, flight: Flight[CacheResult]
) -> CacheResult:
    try:
        with leading(req.flight_key):
            result = await alead(cache, req)
    except Exception as exc:
        FLIGHTS.fail(flight, exc)
        raise
    except BaseException:  # cancelled: let a follower take over
        FLIGHTS.abandon(flight)
        raise
    FLIGHTS.finish(flight, result)
    return result


async def alead(cache: SemanticCache, req: Request) -> CacheResult:
    found = await afind(cache, req, fail_open=cache.policy.fail_open)
    if found.hit is not None:
        return await asyncio.to_thread(conclude_hit, cache, req, found)
    if req.llm is None:
        return await asyncio.to_thread(conclude_miss_without_llm, cache, req, found)
    try:
        with req.watch.phase("llm"):
            completion = await acomplete(req.llm, req.prompt)
    except Exception as exc:
        await asyncio.to_thread(conclude_error, cache, req, found, exc)
        raise
    return await asyncio.to_thread(
        conclude_answer,
        cache,
        req,
        found,
        completion,
        lambda: store_answer(cache, req, found, completion.text),
    )


async def arun_lookup(cache: SemanticCache, req: Request) -> LookupResult | None:
    found = await afind(cache, req, fail_open=False)
    if found.hit is None:
        await asyncio.to_thread(
            conclude,
            cache,
            req,
            "miss",
            response=None,
            is_cached=False,
            similarity=found.similarity,
        )
        return None
    result = await asyncio.to_thread(conclude_hit, cache, req, found)
    return dataclasses.replace(found.hit, timings=result.timings)


class AsyncCacheMixin:
    """The async methods of SemanticCache (see module docstring)."""

    async def aget_or_compute(
        self,
        query: Prompt,
        llm: Any = None,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
        threshold: float | None = None,
    ) -> tuple[str, bool]:
        """Async ``get_or_compute``: ``(response, is_cached)``."""
        result = await self.aget_or_compute_result(
            query, llm, namespace=namespace, user_id=user_id, context=context, threshold=threshold
        )
        assert result.response is not None
        return result.response, result.is_cached

    async def aget_or_compute_result(
        self,
        query: Prompt,
        llm: Any = None,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
        threshold: float | None = None,
    ) -> CacheResult:
        """Async ``get_or_compute_result``: the CacheResult with outcome and timings."""
        cache = _as_cache(self)
        model = llm if llm is not None else cache.llm
        req = await asyncio.to_thread(  # reads the file's calibrations: not on the loop
            prepare, cache, "get_or_compute", query, model, namespace, user_id, context, threshold
        )
        return await arun_get_or_compute(cache, req)

    async def alookup(
        self,
        query: str,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
        threshold: float | None = None,
    ) -> LookupResult | None:
        """Async ``lookup``."""
        cache = _as_cache(self)
        req = await asyncio.to_thread(  # reads the file's calibrations: not on the loop
            prepare, cache, "lookup", query, cache.llm, namespace, user_id, context, threshold
        )
        return await arun_lookup(cache, req)

    async def afind_similar(
        self,
        query_embedding: Any,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
        threshold: float | None = None,
    ) -> tuple[str, float] | None:
        """Async ``find_similar`` (in a worker thread)."""
        cache = _as_cache(self)
        return await asyncio.to_thread(
            cache.find_similar,
            query_embedding,
            namespace=namespace,
            user_id=user_id,
            context=context,
            threshold=threshold,
        )

    async def asearch(
        self,
        query: str,
        k: int = 5,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
    ) -> list[LookupResult]:
        """Async ``search`` (in a worker thread)."""
        cache = _as_cache(self)
        return await asyncio.to_thread(
            cache.search, query, k, namespace=namespace, user_id=user_id, context=context
        )

    async def astore(
        self,
        query: str,
        embedding: Any = None,
        response: str | None = None,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
        metadata: Mapping[str, Any] | None = None,
        ttl: float | Unset | None = UNSET,
        on_duplicate: OnDuplicate | None = None,
    ) -> int:
        """Async ``store`` (in a worker thread); returns the entry id."""
        cache = _as_cache(self)
        return await asyncio.to_thread(
            cache.store,
            query,
            embedding,
            response,
            namespace=namespace,
            user_id=user_id,
            context=context,
            metadata=metadata,
            ttl=ttl,
            on_duplicate=on_duplicate,
        )

    async def astore_many(
        self,
        queries: Sequence[str],
        responses: Sequence[str],
        *,
        embeddings: Any = None,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
        metadata: Mapping[str, Any] | None = None,
        batch_size: int | None = None,
        ttl: float | Unset | None = UNSET,
        on_duplicate: OnDuplicate | None = None,
    ) -> list[int]:
        """Async ``store_many`` (in a worker thread); returns the entry ids."""
        cache = _as_cache(self)
        return await asyncio.to_thread(
            cache.store_many,
            queries,
            responses,
            embeddings=embeddings,
            namespace=namespace,
            user_id=user_id,
            context=context,
            metadata=metadata,
            batch_size=batch_size,
            ttl=ttl,
            on_duplicate=on_duplicate,
        )

    async def aget(self, entry_id: int) -> CacheEntry:
        """Async ``get``."""
        return await asyncio.to_thread(_as_cache(self).get, entry_id)

    async def aupdate(
        self,
        entry_id: int,
        *,
        response: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        query: str | None = None,
        ttl: float | Unset | None = UNSET,
        expected_version: int | None = None,
    ) -> CacheEntry:
        """Async ``update`` (in a worker thread, embedding a new ``query`` included)."""
        cache = _as_cache(self)
        return await asyncio.to_thread(
            cache.update,
            entry_id,
            response=response,
            metadata=metadata,
            query=query,
            ttl=ttl,
            expected_version=expected_version,
        )

    async def adelete(self, entry_id: int) -> bool:
        """Async ``delete``."""
        return await asyncio.to_thread(_as_cache(self).delete, entry_id)

    async def aclear(self, namespace: str | None = None, *, user_id: str | None = None) -> int:
        """Async ``clear``."""
        return await asyncio.to_thread(_as_cache(self).clear, namespace, user_id=user_id)

    async def astats(self, namespace: str | None = None) -> dict[str, Any]:
        """Async ``stats``."""
        return await asyncio.to_thread(_as_cache(self).stats, namespace)

    async def asearch_vector(
        self,
        query_embedding: Any,
        k: int = 5,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
    ) -> list[LookupResult]:
        """Async ``search_vector`` (in a worker thread)."""
        cache = _as_cache(self)
        return await asyncio.to_thread(
            cache.search_vector,
            query_embedding,
            k,
            namespace=namespace,
            user_id=user_id,
            context=context,
        )

    async def athreshold_for(self, namespace: str | None = None) -> float:
        """Async ``threshold_for``."""
        return await asyncio.to_thread(_as_cache(self).threshold_for, namespace)

    # -- hit quality -------------------------------------------------------------------

    async def afeedback(
        self, result: LookupResult | int, correct: bool, *, query: str | None = None
    ) -> int:
        """Async ``feedback``."""
        return await asyncio.to_thread(_as_cache(self).feedback, result, correct, query=query)

    async def afeedback_rows(self, namespace: str | None = None) -> list[FeedbackRow]:
        """Async ``feedback_rows``."""
        return await asyncio.to_thread(_as_cache(self).feedback_rows, namespace)

    async def acalibration(self, namespace: str | None = None) -> Calibration | None:
        """Async ``calibration``."""
        return await asyncio.to_thread(_as_cache(self).calibration, namespace)

    async def aset_calibration(self, calibration: Calibration) -> None:
        """Async ``set_calibration``."""
        await asyncio.to_thread(_as_cache(self).set_calibration, calibration)

    async def aclear_calibration(self, namespace: str | None = None) -> bool:
        """Async ``clear_calibration``."""
        return await asyncio.to_thread(_as_cache(self).clear_calibration, namespace)

    # -- lifecycle (cache_lifecycle.py) ------------------------------------------------

    async def aconfigure_namespace(
        self,
        namespace: str,
        *,
        ttl: float | Unset | None = UNSET,
        sliding_ttl: bool | Unset = UNSET,
        max_entries: int | Unset | None = UNSET,
        eviction: Eviction | Unset = UNSET,
        on_duplicate: OnDuplicate | Unset = UNSET,
        reset: bool = False,
    ) -> NamespacePolicy:
        """Async ``configure_namespace``."""
        cache = _as_cache(self)
        return await asyncio.to_thread(
            cache.configure_namespace,
            namespace,
            ttl=ttl,
            sliding_ttl=sliding_ttl,
            max_entries=max_entries,
            eviction=eviction,
            on_duplicate=on_duplicate,
            reset=reset,
        )

    async def anamespace_policy(self, namespace: str | None = None) -> NamespacePolicy:
        """Async ``namespace_policy``."""
        return await asyncio.to_thread(_as_cache(self).namespace_policy, namespace)

    async def apurge(self, namespace: str | None = None) -> int:
        """Async ``purge``."""
        return await asyncio.to_thread(_as_cache(self).purge, namespace)

    async def adelete_older_than(self, seconds: float, namespace: str | None = None) -> int:
        """Async ``delete_older_than``."""
        return await asyncio.to_thread(_as_cache(self).delete_older_than, seconds, namespace)

    async def aforget_similar(
        self,
        query: str,
        *,
        min_similarity: float,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context | Unset = UNSET,
    ) -> int:
        """Async ``forget_similar`` (in a worker thread, embedding included)."""
        cache = _as_cache(self)
        return await asyncio.to_thread(
            cache.forget_similar,
            query,
            min_similarity=min_similarity,
            namespace=namespace,
            user_id=user_id,
            context=context,
        )

    async def areembed(
        self,
        new_embedder: Embedder,
        *,
        batch_size: int = 256,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Async ``reembed`` (in a worker thread: ``progress`` is called from it)."""
        cache = _as_cache(self)
        return await asyncio.to_thread(
            cache.reembed, new_embedder, batch_size=batch_size, progress=progress
        )

    async def areembed_status(self) -> ReembedState | None:
        """Async ``reembed_status``."""
        return await asyncio.to_thread(_as_cache(self).reembed_status)

    async def acancel_reembed(self) -> bool:
        """Async ``cancel_reembed``."""
        return await asyncio.to_thread(_as_cache(self).cancel_reembed)

    async def avacuum(self, *, compact_vectors: bool = True) -> dict[str, Any]:
        """Async ``vacuum`` (in a worker thread; it blocks writers meanwhile)."""
        return await asyncio.to_thread(_as_cache(self).vacuum, compact_vectors=compact_vectors)

    async def aclose(self) -> None:
        """Async ``close`` (in a worker thread: writing the lookup counts still waiting
        for the write lock may wait for it)."""
        await asyncio.to_thread(_as_cache(self).close)

    async def __aenter__(self) -> SemanticCache:
        return _as_cache(self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
