"""The LLM fallback: lookup, then on a miss call the LLM and store, under a policy.

``get_or_compute`` / ``get_or_compute_result`` (sync) run here; ``aio.py`` and
``streaming.py`` run the same steps with awaits or chunk by chunk, sharing the
helpers below (request preparation, judging neighbours, deciding whether an
answer may be stored, recording and reporting).

The failure policy (:class:`FallbackPolicy`, also in the README):

- **Embedder fails or misses its deadline**: by default *fail-open*: the LLM is
  called and its answer returned, nothing is stored (there is no vector to store
  it under), and ``embed_failures`` is counted in ``stats()``. With
  ``fail_open=False`` (strict) the ``EmbedderError`` / ``EmbedderTimeoutError``
  is raised. ``lookup()``, ``search()`` and the writes are always strict: they
  have no LLM to fall back on.
- **LLM fails** (raises, times out, answers with no text): ``LLMError`` (or a
  subclass) is raised and nothing is stored.
- **LLM answers but the answer is not cacheable** (a refusal, a content-filtered
  or truncated answer, or ``should_cache`` says no or raises): the answer is
  returned with ``is_cached=False`` and not stored (outcome ``uncached``, with the
  reason).
- **Storing the answer fails** (lock timeout, full disk, any StorageError): the
  paid-for answer is returned uncached (reason ``store_failed``), under either
  policy; see :func:`conclude_answer`.
- **Concurrent identical misses** coalesce (single-flight, see singleflight.py)
  unless ``single_flight=False``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .embedder_calls import embed_one
from .errors import (
    EmbedderError,
    InvalidInputError,
    LLMError,
    SemCacheError,
)
from .llms import Completion, complete
from .prompts import Prompt, key_prompt
from .singleflight import FLIGHTS, Flight, leading
from .store import Scope
from .timing import CacheResult, Outcome, Stopwatch, logger, report
from .validation import FloatVector, check_query, query_hash

if TYPE_CHECKING:
    from .cache import Context, SemanticCache
    from .decision import LookupResult

T = TypeVar("T")


@dataclass(frozen=True)
class FallbackPolicy:
    """How the LLM fallback behaves when parts fail (see module docstring)."""

    #: Embedder failure or deadline: True = call the LLM, answer, do not store; False = raise.
    fail_open: bool = True
    #: Seconds the embedding step of a lookup may take (None: the embedder's own timeouts).
    embed_timeout: float | None = None
    #: Coalesce concurrent identical requests of this process into one LLM call.
    single_flight: bool = True
    #: Seconds a follower waits for the in-flight request before calling the LLM itself.
    coalesce_timeout: float | None = None
    #: Store answers cut short by max_tokens (finish_reason "length").
    cache_truncated: bool = False
    #: Extra veto on storing an answer, e.g. a refusal-phrase check: text -> store it?
    should_cache: Callable[[str], bool] | None = None

    def __post_init__(self) -> None:
        for name in ("embed_timeout", "coalesce_timeout"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidInputError(
                    f"{name} must be a number of seconds or None, got {value!r}"
                )
            if not 0 < value < math.inf:  # None, not inf, means no deadline
                raise InvalidInputError(f"{name} must be a positive number of seconds or None")

    @classmethod
    def strict(cls, **changes: Any) -> FallbackPolicy:
        """The policy that raises on embedder failures instead of failing open."""
        return cls(fail_open=False, **changes)


# -- one request -------------------------------------------------------------------


@dataclass
class Request:
    """A validated request: what to embed, its scope, its single-flight key, its clock."""

    operation: str
    prompt: Prompt
    query: str
    query_hash: str
    scope: Scope
    threshold: float
    llm: Any
    watch: Stopwatch
    flight_key: Hashable


@dataclass
class Found:
    """What the lookup phase found."""

    hit: LookupResult | None
    vector: FloatVector | None  # None: exact hit, or the embedder failed
    similarity: float | None  # of the nearest entry in scope
    embed_error: EmbedderError | None = None


def prepare(
    cache: SemanticCache,
    operation: str,
    prompt: Prompt,
    llm: Any,
    namespace: str | None,
    user_id: str | None,
    context: Context,
    threshold: float | None,
    *,
    with_text: bool = True,
) -> Request:
    """Validate everything before any I/O, and derive the scope and flight key.
    ``with_text=False``: a lookup by embedding alone (see ``SemanticCache._rule``)."""
    watch = Stopwatch()
    keyed = key_prompt(prompt)
    query = check_query(keyed.text, max_chars=cache.max_query_chars)
    scoped_context = context
    if keyed.instructions:
        # A conversation's system/developer messages scope it exactly (prompts.py).
        base = context if context is not None else cache.context
        scoped_context = {"context": base, "instructions": [list(i) for i in keyed.instructions]}
    scope = cache._scope(namespace, user_id, scoped_context, llm)
    limit, guards = cache._rule(scope.namespace, threshold, with_text=with_text)  # calibrations too
    digest = query_hash(query)
    # A follower is handed the leader's decision: only requests judged by the same
    # rule (threshold, guards and weights, verifier) may share a flight, even when
    # several caches with different settings share the file.
    key = (
        os.path.realpath(cache.path),
        scope.namespace,
        scope.user_id,
        scope.context_key,
        digest,
        limit,
        guards,
        id(cache.verify),  # held by the cache, so the id names it while it runs
        cache.verify_band,
    )
    return Request(operation, prompt, query, digest, scope, limit, llm, watch, key)


def uncacheable_reason(cache: SemanticCache, found: Found, completion: Completion) -> str | None:
    """Why an LLM answer must not be stored, or None to store it."""
    policy = cache.policy
    reason = completion.uncacheable_reason(cache_truncated=policy.cache_truncated)
    if reason is None and policy.should_cache is not None:
        reason = should_cache_reason(policy.should_cache, completion.text)
    if reason is None and found.vector is None:
        reason = "embedder_failed"
    if reason is None and cache.read_only:
        reason = "read_only"  # the caller still gets the answer; the file is not written
    return reason


def should_cache_reason(hook: Callable[[str], bool], text: str) -> str | None:
    """The user's veto: None to store, "should_cache" if it says no.

    A hook that raises is logged with its traceback and the answer is not stored
    ("should_cache_failed"): the answer is already paid for, so it is returned, as
    a failing ``on_event`` hook never fails the request either; and an answer the
    veto could not judge is not stored.
    """
    try:
        keep = hook(text)
    except Exception:
        logger.exception("the should_cache hook raised; the answer is returned, not cached")
        return "should_cache_failed"
    return None if keep else "should_cache"


def conclude(
    cache: SemanticCache,
    req: Request,
    outcome: Outcome,
    *,
    response: str | None,
    is_cached: bool,
    similarity: float | None = None,
    entry_id: int | None = None,
    exact: bool = False,
    stored: bool = False,
    reason: str | None = None,
    error: BaseException | None = None,
    llm_seconds: float | None = None,
    embed_failed: bool = False,
    coalesced: bool = False,
) -> CacheResult:
    """Build the request's CacheResult, count it in the file, log it, call the hook."""
    result = CacheResult(
        operation=req.operation,
        outcome=outcome,
        response=response,
        is_cached=is_cached,
        similarity=similarity,
        entry_id=entry_id,
        exact=exact,
        stored=stored,
        namespace=req.scope.namespace,
        user_id=req.scope.user_id,
        context_key=req.scope.context_key,
        timings=req.watch.timings(),
        query=req.query,
        reason=reason,
        error=error,
    )
    try:
        cache._store.record_lookup(
            req.scope.namespace,
            entry_id if is_cached else None,
            seconds=result.timings.total,
            llm_seconds=llm_seconds,
            embed_failed=embed_failed,
            coalesced=coalesced,
        )
    except SemCacheError:
        if error is None:
            raise
        # Already failing: the request's own error matters more than the counter.
        logger.warning("could not count a failed request in the file", exc_info=True)
    report(result, cache.on_event)
    return result


def conclude_hit(cache: SemanticCache, req: Request, found: Found) -> CacheResult:
    assert found.hit is not None
    return conclude(
        cache,
        req,
        "hit",
        response=found.hit.response,
        is_cached=True,
        similarity=found.hit.similarity,
        entry_id=found.hit.entry_id,
        exact=found.hit.exact,
    )


def conclude_miss_without_llm(cache: SemanticCache, req: Request, found: Found) -> CacheResult:
    error = LLMError("cache miss and no LLM configured: pass llm= to SemanticCache or call")
    conclude_error(cache, req, found, error)
    raise error


def conclude_error(
    cache: SemanticCache, req: Request, found: Found | None, error: BaseException
) -> CacheResult:
    return conclude(
        cache,
        req,
        "error",
        response=None,
        is_cached=False,
        similarity=None if found is None else found.similarity,
        reason=str(error),
        error=error,
        embed_failed=found is not None and found.embed_error is not None,
    )


def conclude_answer(
    cache: SemanticCache,
    req: Request,
    found: Found,
    completion: Completion,
    store: Callable[[], int],
) -> CacheResult:
    """The LLM answered: store it if cacheable (``store`` writes it), count, report.

    The answer is paid for, so a store the file refuses (lock timeout, full disk,
    any StorageError, a re-embed by another process, a namespace setting the file
    holds that cannot be used: any SemCacheError) does not lose it: it is
    returned uncached (reason "store_failed", the exception in ``result.error``)
    with a WARNING, under the strict policy too (strict is about answering
    without the cache before the LLM is paid; raising now would only throw the
    answer away). After a lock timeout the request is still counted: its count
    waits in memory for the lock (lookup_counts.py) instead of waiting for it again.
    """
    reason = uncacheable_reason(cache, found, completion)
    entry_id = None
    error: SemCacheError | None = None
    if reason is None:
        try:
            with req.watch.phase("store"):
                entry_id = store()
        except SemCacheError as exc:
            reason, error = "store_failed", exc
            logger.warning(
                "could not store the LLM's answer, returning it uncached: %s namespace=%s",
                exc,
                req.scope.namespace,
            )
    else:
        logger.info("answer not cached (%s) namespace=%s", reason, req.scope.namespace)
    return conclude(
        cache,
        req,
        "miss" if entry_id is not None else "uncached",
        response=completion.text,
        is_cached=False,
        similarity=found.similarity,
        entry_id=entry_id,
        stored=entry_id is not None,
        reason=reason,
        error=error,
        llm_seconds=req.watch.seconds("llm"),
        embed_failed=found.embed_error is not None,
    )


def conclude_follower(
    cache: SemanticCache, req: Request, flight: Flight[CacheResult]
) -> CacheResult:
    """A follower's result: the leader's answer, counted as this request's own."""
    if flight.error is not None:
        conclude(
            cache,
            req,
            "error",
            response=None,
            is_cached=False,
            reason=str(flight.error),
            error=flight.error,
            coalesced=True,
        )
        raise flight.error
    leader = flight.result
    assert leader is not None
    in_cache = leader.entry_id is not None and leader.outcome in ("hit", "miss", "coalesced")
    return conclude(
        cache,
        req,
        "coalesced",
        response=leader.response,
        is_cached=in_cache,
        similarity=leader.similarity,
        entry_id=leader.entry_id if in_cache else None,
        exact=leader.exact,
        reason=leader.reason,
        coalesced=True,
    )


def store_answer(cache: SemanticCache, req: Request, found: Found, text: str) -> int:
    assert found.vector is not None
    return cache._store_in_scope(req.scope, [req.query], [text], [found.vector], None)[0]


# -- the sync steps ------------------------------------------------------------------


def find(cache: SemanticCache, req: Request, *, fail_open: bool) -> Found:
    """Exact path, else embed + KNN. An embedder failure fails open or is raised."""
    with req.watch.phase("search"):
        row = cache._store.find_exact(req.scope, req.query_hash)
    if row is not None:
        return Found(cache._exact_result(row, req.query), None, 1.0)
    try:
        with req.watch.phase("embed"):
            vector = embed_one(cache.embedder, req.query, cache.policy.embed_timeout)
    except EmbedderError as exc:
        return embed_failed(cache, req, exc, fail_open=fail_open)
    with req.watch.phase("search"):
        hit, similarity = cache._judge(req.scope, vector, req.threshold, req.query)
    return Found(hit, vector, similarity)


def embed_failed(
    cache: SemanticCache, req: Request, exc: EmbedderError, *, fail_open: bool
) -> Found:
    found = Found(None, None, None, exc)
    if not fail_open:
        conclude_error(cache, req, found, exc)
        raise exc
    logger.warning(
        "embedder failed, answering without the cache (fail-open): %s namespace=%s",
        exc,
        req.scope.namespace,
    )
    return found


def run_lookup(cache: SemanticCache, req: Request) -> LookupResult | None:
    """``lookup()``: find, count, report; the LookupResult carries the timings."""
    found = find(cache, req, fail_open=False)
    if found.hit is None:
        conclude(cache, req, "miss", response=None, is_cached=False, similarity=found.similarity)
        return None
    result = conclude_hit(cache, req, found)
    return dataclasses.replace(found.hit, timings=result.timings)


def run_find_similar(
    cache: SemanticCache, req: Request, vector: FloatVector
) -> tuple[str, float] | None:
    with req.watch.phase("search"):
        hit, similarity = cache._judge(req.scope, vector, req.threshold, None)
    found = Found(hit, vector, similarity)
    if found.hit is None:
        conclude(cache, req, "miss", response=None, is_cached=False, similarity=found.similarity)
        return None
    conclude_hit(cache, req, found)
    return found.hit.response, found.hit.similarity


def run_get_or_compute(cache: SemanticCache, req: Request) -> CacheResult:
    """Single-flight around :func:`lead` (see singleflight.py)."""
    if not cache.policy.single_flight:
        return lead(cache, req)
    while True:
        flight, leader = FLIGHTS.join(req.flight_key)
        if flight is None:  # our own flight, re-entered from inside the LLM call
            return lead(cache, req)
        if leader:
            return lead_flight(cache, req, flight)
        with req.watch.phase("wait"):
            finished = FLIGHTS.wait_as_follower(flight, cache.policy.coalesce_timeout)
        if not finished:
            logger.info("gave up waiting for an identical in-flight request; calling the LLM")
            return lead(cache, req)
        if not flight.abandoned:
            return conclude_follower(cache, req, flight)
        # The leader was cancelled: try again (one of the followers will lead).


def lead_flight(cache: SemanticCache, req: Request, flight: Flight[CacheResult]) -> CacheResult:
    try:
        with leading(req.flight_key):
            result = lead(cache, req)
    except Exception as exc:
        FLIGHTS.fail(flight, exc)
        raise
    except BaseException:
        FLIGHTS.abandon(flight)
        raise
    FLIGHTS.finish(flight, result)
    return result


def lead(cache: SemanticCache, req: Request) -> CacheResult:
    """Lookup; on a miss call the LLM and store its answer if it may be cached."""
    found = find(cache, req, fail_open=cache.policy.fail_open)
    if found.hit is not None:
        return conclude_hit(cache, req, found)
    if req.llm is None:
        return conclude_miss_without_llm(cache, req, found)
    try:
        with req.watch.phase("llm"):
            completion = complete(req.llm, req.prompt)
    except Exception as exc:
        conclude_error(cache, req, found, exc)
        raise
    return conclude_answer(
        cache, req, found, completion, lambda: store_answer(cache, req, found, completion.text)
    )


# -- the mixin SemanticCache inherits -------------------------------------------------


class FallbackMixin:
    """``get_or_compute_result``: ``get_or_compute`` with the full CacheResult."""

    def get_or_compute_result(
        self,
        query: Prompt,
        llm: Any = None,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
        threshold: float | None = None,
    ) -> CacheResult:
        """Like ``get_or_compute``, returning the CacheResult (outcome, similarity, timings).

        ``query`` may be a string or a list of chat messages (see prompts.py for
        how a conversation is keyed). Raises LLMError (nothing stored) if the LLM
        fails, and EmbedderError only under a strict policy.
        """
        cache = _as_cache(self)
        model = llm if llm is not None else cache.llm
        req = prepare(cache, "get_or_compute", query, model, namespace, user_id, context, threshold)
        return run_get_or_compute(cache, req)


def _as_cache(mixin: object) -> SemanticCache:
    # The mixins are only ever used as bases of SemanticCache.
    return cast("SemanticCache", mixin)
