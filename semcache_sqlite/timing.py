"""Observability: per-request timings and outcomes, the ``on_event`` hook, latency stats.

Every lookup-like call (``lookup``, ``find_similar``, ``get_or_compute*``,
``stream``/``astream`` and the async twins) produces one :class:`CacheResult`:
its outcome, the similarity of the nearest entry, and how long each phase took
(:class:`Timings`). It is

- returned by ``get_or_compute_result`` / ``aget_or_compute_result``, and
  attached to ``LookupResult.timings`` and ``CachedStream.result``;
- passed to ``SemanticCache(on_event=...)`` (exceptions in the hook are logged,
  never raised into the request);
- logged on the ``semcache_sqlite`` logger at DEBUG, one line per request.

Latency figures in ``stats()`` come from counters persisted in the file
(migration 0005), per namespace; see :func:`latency_figures` for definitions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from .lookup_counts import LatencySums

logger = logging.getLogger("semcache_sqlite")

#: What happened to one request:
#: ``hit``        answered from the cache (exact path or similarity >= threshold);
#: ``miss``       not in the cache: ``lookup`` returned None, or the LLM answered and
#:                the answer was stored;
#: ``uncached``   the LLM answered but the answer was not stored (refusal, truncated,
#:                ``should_cache`` said no, the embedder failed, or the store failed,
#:                ``error`` then holding its exception: see ``reason``);
#: ``coalesced``  an identical request was in flight; this one waited for its answer;
#: ``error``      the request raised (``error`` holds the exception).
Outcome = Literal["hit", "miss", "uncached", "coalesced", "error"]


@dataclass(frozen=True)
class Timings:
    """Seconds spent in each phase of one request (0.0 for phases that did not run)."""

    embed: float = 0.0  # computing the query's embedding
    search: float = 0.0  # SQLite: exact-match path and KNN
    llm: float = 0.0  # the LLM call (for a stream: until the last piece)
    store: float = 0.0  # writing the new entry
    wait: float = 0.0  # waiting on an identical in-flight request
    total: float = 0.0  # wall time of the whole request


@dataclass(frozen=True)
class CacheResult:
    """The outcome of one request, with its answer, similarity and timings."""

    operation: str  # "lookup", "find_similar", "get_or_compute", "stream"
    outcome: Outcome
    response: str | None  # the answer given (None for a lookup miss or an error)
    is_cached: bool  # the answer came from the cache (no LLM call made for this request)
    similarity: float | None  # of the nearest entry in scope (None: none, or not searched)
    entry_id: int | None  # the entry served, or stored for this answer
    exact: bool  # served by the exact-match path (embedder not run)
    stored: bool  # this request stored a new answer
    namespace: str
    user_id: str
    context_key: str
    timings: Timings
    query: str = ""
    reason: str | None = None  # why an answer was not stored, or why the request failed
    error: BaseException | None = field(default=None, compare=False)


class Stopwatch:
    """Accumulates phase durations; ``perf_counter`` because only differences matter."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.started = clock()
        self._phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begin = self._clock()
        try:
            yield
        finally:
            self._phases[name] = self._phases.get(name, 0.0) + self._clock() - begin

    def seconds(self, name: str) -> float:
        return self._phases.get(name, 0.0)

    def elapsed(self) -> float:
        return self._clock() - self.started

    def timings(self) -> Timings:
        return Timings(
            embed=self.seconds("embed"),
            search=self.seconds("search"),
            llm=self.seconds("llm"),
            store=self.seconds("store"),
            wait=self.seconds("wait"),
            total=self.elapsed(),
        )


def report(result: CacheResult, on_event: Callable[[CacheResult], Any] | None) -> None:
    """Log one request and hand it to the user's hook (whose failures are only logged)."""
    if logger.isEnabledFor(logging.DEBUG):
        t = result.timings
        logger.debug(
            "%s %s namespace=%s entry=%s similarity=%s exact=%s stored=%s reason=%s "
            "total=%.4fs embed=%.4fs search=%.4fs llm=%.4fs store=%.4fs wait=%.4fs",
            result.operation,
            result.outcome,
            result.namespace,
            result.entry_id,
            "-" if result.similarity is None else f"{result.similarity:.4f}",
            result.exact,
            result.stored,
            result.reason,
            t.total,
            t.embed,
            t.search,
            t.llm,
            t.store,
            t.wait,
        )
    if on_event is None:
        return
    try:
        on_event(result)
    except Exception:
        logger.exception("the on_event hook raised; the request itself is unaffected")


def latency_figures(sums: LatencySums) -> dict[str, Any]:
    """The latency part of ``stats()`` from persisted sums. Definitions:

    - ``mean_hit_latency``: mean wall time of a hit, in seconds (lookup to answer;
      for a coalesced request it includes the wait for the in-flight one);
    - ``mean_miss_latency``: mean wall time of a miss, including the LLM call and
      the store when the cache made them;
    - ``mean_llm_latency``: mean duration of a successful LLM call made by the cache;
    - ``time_saved_fraction``: ``1 - mean_hit_latency / mean_llm_latency``, the
      seed FAQ's ``(t_llm - t_cache) / t_llm``: the share of the LLM's latency a
      hit avoids;
    - ``seconds_saved``: ``hits * (mean_llm_latency - mean_hit_latency)``, the
      wall time all hits saved compared with calling the LLM.

    A figure without data (no hits, no LLM call yet) is 0.0.
    """
    mean_hit = sums.hit_seconds / sums.hits if sums.hits else 0.0
    mean_miss = sums.miss_seconds / sums.misses if sums.misses else 0.0
    mean_llm = sums.llm_seconds / sums.llm_calls if sums.llm_calls else 0.0
    measurable = sums.llm_calls > 0 and mean_llm > 0.0
    return {
        "mean_hit_latency": mean_hit,
        "mean_miss_latency": mean_miss,
        "mean_llm_latency": mean_llm,
        "time_saved_fraction": 1.0 - mean_hit / mean_llm if measurable and sums.hits else 0.0,
        "seconds_saved": sums.hits * (mean_llm - mean_hit) if measurable else 0.0,
        "llm_calls": sums.llm_calls,
        "embed_failures": sums.embed_failures,
        "coalesced": sums.coalesced,
    }
