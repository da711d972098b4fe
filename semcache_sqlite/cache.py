"""SemanticCache: scopes, thresholds, the exact-match path, and the LLM fallback.

Decisions a user can rely on (also in the README):

- **Scope.** Every read and write has a namespace, a user id and a context key.
  A lookup sees entries of its namespace and context key only, stored either
  for its own user id or shared (stored with ``user_id=""``, the default).
  A lookup without a user id sees shared entries only.
- **Context key.** A hash of the LLM's ``cache_context`` (model, system prompt,
  parameters) plus the ``context=`` you pass (per call, else the cache's).
  Entries made under another context are invisible.
- **Threshold.** Hit iff score >= threshold (1e-6 float32 tolerance); score is the
  cosine similarity minus the guards' penalties (quality.py). Per call > stored
  calibration (namespace, then file-wide) > constructor > the embedder's default.
- **Exact-match path.** A query whose normalised text (NFKC with super- and
  subscripts marked, case-folded, whitespace collapsed) equals a stored one in
  scope is answered without running the embedder, with similarity 1.0 and
  ``exact=True``.
- **Storing the same query again** in the same namespace, user and context
  replaces the stored response (version + 1) by default; ``on_duplicate``
  chooses "keep" or "keep_both" instead (see lifecycle.py).
- **Lifecycle** (TTL, limits, eviction, invalidation, re-embedding, vacuum): rules
  in lifecycle.py, methods in cache_lifecycle.py (mixed in).
- **Counters.** Every lookup (``lookup``, ``find_similar``, ``get_or_compute``)
  counts one hit or miss in the file, per namespace, with its latency.

The hit-or-miss decision and the result types live in decision.py (shared with
``semcache get``), the LLM fallback (failure policy, single-flight, conversations) in
fallback.py, the async API in aio.py, streaming in streaming.py, timings and
the ``on_event`` hook in timing.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any

from .aio import AsyncCacheMixin
from .cache_lifecycle import LifecycleMixin
from .db import DEFAULT_BUSY_TIMEOUT, DEFAULT_MMAP_SIZE, Database
from .decision import CacheEntry, Judgement, LookupResult, judge
from .embedder_calls import embed_many, embed_one
from .embedders import Embedder, LocalEmbedder
from .errors import InvalidInputError, SemCacheError
from .fallback import (
    FallbackMixin,
    FallbackPolicy,
    prepare,
    run_find_similar,
    run_lookup,
)
from .lifecycle import UNSET, Eviction, LifecycleConfig, OnDuplicate, Unset, check_write_options
from .llms import LLMFunction, llm_cache_context
from .lookup_counts import LatencySums
from .migrate import check_current, check_openable, migrate
from .prompts import Prompt
from .quality import GuardConfig, GuardsArgument, Verifier, check_band, parse_guards
from .quality_store import (
    FILE_WIDE,
    Calibration,
    FeedbackLog,
    FeedbackRow,
    QualityStore,
    resolve_rule,
)
from .store import EntryRow, NewEntry, Scope, Store
from .streaming import StreamingMixin
from .timing import CacheResult, latency_figures
from .validation import (
    DEFAULT_MAX_QUERY_CHARS,
    FloatMatrix,
    FloatVector,
    as_unit_matrix,
    as_unit_vector,
    check_embedder,
    check_int,
    check_metadata,
    check_query,
    check_response,
    check_scope_name,
    check_texts,
    check_threshold,
    query_hash,
)
from .vector_cells import PROBED_CELLS
from .vector_index import DEFAULT_CANDIDATES, MAX_K, check_candidates, check_cells

DEFAULT_PATH = "semcache.db"
#: store_many's batch (one transaction each) when it embeds, and when vectors are given.
EMBED_BATCH = 256
GIVEN_VECTORS_BATCH = 2048
DEFAULT_NAMESPACE = "default"

Context = Mapping[str, Any] | str | None


class SemanticCache(FallbackMixin, AsyncCacheMixin, StreamingMixin, LifecycleMixin):
    """A semantic cache in one SQLite file.

    >>> with SemanticCache("cache.db") as cache:          # doctest: +SKIP
    ...     cache.store("How do I reset my password?", None, "Settings > Reset.")
    ...     cache.lookup("How can I reset my password?").response

    Arguments: ``path`` of the file (created if missing); ``threshold`` (None:
    the embedder's default); ``embedder`` (default: the offline LocalEmbedder);
    ``llm`` for ``get_or_compute`` (any ``str -> str`` callable, an async one
    for the async API, or ``OpenAIChat``); defaults for ``namespace``,
    ``user_id`` and ``context`` used when a call gives none; ``policy``, what
    to do when the embedder or the LLM fails (default: fail open, see
    ``FallbackPolicy``); ``on_event``, called with a ``CacheResult`` after
    every lookup (outcome, similarity, timings).

    ``read_only=True`` opens an existing file without writing to it (read-only
    media or directory, a shipped pre-warmed file): lookups work but are not
    counted, ``get_or_compute`` returns the LLM's answer on a miss without
    storing it, and store/update/delete/clear raise ReadOnlyError.
    ``guards``: a ``GuardConfig``, guard names, or False for plain cosine (default:
    all on; see quality.py). ``verify(query, cached_query, cached_response)`` is
    asked about semantic hits whose score is in ``verify_band = (low, high)`` (all
    when no band); False turns the hit into a miss.
    Lifecycle defaults (see lifecycle.py): ``ttl`` seconds (None: never expire),
    ``sliding_ttl``, ``max_entries`` (whole file), ``namespace_max_entries``,
    ``max_bytes``, ``eviction`` ("lru", "lfu", "fifo"), ``on_duplicate``
    ("replace", "keep", "keep_both"); ``configure_namespace`` overrides them.
    Search (see vector_index.py): each lookup re-scores the ``search_candidates``
    entries whose sign bits are nearest (Hamming) with their exact vectors; in a
    namespace large enough to have cells (vector_cells.py), it looks only in the
    ``search_cells`` cells whose centroids are nearest the query;
    ``exact_search=True`` scans every exact vector of the scope instead
    (O(entries): for embedders whose signs carry little information, e.g. all
    coordinates positive; the fast path scans so too, but only after its
    candidates all tied). ``mmap_size``: bytes of the file SQLite reads through a
    memory map (default 0: off; ~10% faster warm lookups, trade-offs in db.py).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_PATH,
        *,
        threshold: float | None = None,
        embedder: Embedder | None = None,
        llm: LLMFunction | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        user_id: str = "",
        context: Context = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        max_query_chars: int = DEFAULT_MAX_QUERY_CHARS,
        clock: Callable[[], float] = time.time,
        policy: FallbackPolicy | None = None,
        on_event: Callable[[CacheResult], Any] | None = None,
        read_only: bool = False,
        guards: GuardsArgument = None,
        verify: Verifier | None = None,
        verify_band: tuple[float, float] | None = None,
        ttl: float | None = None,
        sliding_ttl: bool = False,
        max_entries: int | None = None,
        namespace_max_entries: int | None = None,
        max_bytes: int | None = None,
        eviction: Eviction = "lru",
        on_duplicate: OnDuplicate = "replace",
        search_candidates: int = DEFAULT_CANDIDATES,
        search_cells: int = PROBED_CELLS,
        exact_search: bool = False,
        mmap_size: int = DEFAULT_MMAP_SIZE,
    ) -> None:
        lifecycle = LifecycleConfig(
            ttl, sliding_ttl, max_entries, namespace_max_entries, max_bytes, eviction, on_duplicate
        )
        self.embedder: Embedder = embedder if embedder is not None else LocalEmbedder()
        check_embedder(self.embedder)
        if policy is not None and not isinstance(policy, FallbackPolicy):
            raise InvalidInputError(f"policy must be a FallbackPolicy, got {policy!r}")
        self.policy = policy if policy is not None else FallbackPolicy()
        self.on_event = on_event
        self._threshold = None if threshold is None else check_threshold(threshold)
        self.guards = parse_guards(guards)
        self.verify = verify
        self.verify_band = check_band(verify_band)
        self.llm = llm
        self.namespace = check_scope_name(namespace, "namespace", allow_empty=False)
        self.user_id = check_scope_name(user_id, "user_id", allow_empty=True)
        self.context = context
        # An int, so that a limit stays a limit: for none, pass a huge one (sys.maxsize).
        self.max_query_chars = check_int(
            max_query_chars, "max_query_chars (sys.maxsize: no limit)", minimum=1
        )
        self._db = Database(
            path,
            busy_timeout=busy_timeout,
            read_only=read_only,
            mmap_size=mmap_size,
            check_file=check_openable,
        )
        try:
            self._store = Store(self._db, clock=clock, lifecycle=lifecycle)
            self._store.search_candidates = check_candidates(search_candidates)
            self._store.search_cells = check_cells(search_cells)
            self._store.exact_search = bool(exact_search)
            if read_only:
                check_current(self._db)
                self._store.check_embedder(self.embedder.model_id, self.embedder.dim)
                self._store.check_vector_layout()
            else:
                migrate(self._db)
                self._store.bind_embedder(self.embedder.model_id, self.embedder.dim)
            self._quality = QualityStore(self._db, clock=clock)
            self._feedback = FeedbackLog(self._quality)
        except BaseException:
            self._db.close()
            raise

    # -- configuration -----------------------------------------------------------

    @property
    def path(self) -> str:
        return self._db.path

    @property
    def read_only(self) -> bool:
        return self._db.read_only

    @property
    def threshold(self) -> float:
        """The threshold of the cache's namespace; setting it sets the constructor-level
        value, below a calibration stored in the file."""
        return self.threshold_for()

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = check_threshold(value)

    def threshold_for(self, namespace: str | None = None) -> float:
        """Stored calibration of the namespace > file-wide calibration > constructor >
        the embedder's default."""
        return self._rule(self.namespace if namespace is None else namespace, None)[0]

    def _rule(
        self, namespace: str, threshold: float | None, *, with_text: bool = True
    ) -> tuple[float, GuardConfig]:
        """The threshold and guards (with weights) a lookup in ``namespace`` uses.
        ``with_text=False``: a lookup by embedding alone, where only the guards that
        need no text can run; unless a threshold is set (per call, stored, constructor)
        that set takes the embedder's threshold for non-default guards."""
        stored = self._quality.calibration_for(namespace, self.embedder.model_id)
        guards = self.guards if with_text else self.guards.without_lexical()
        return resolve_rule(stored, threshold, self._threshold, guards, self.embedder)

    def context_key(self, context: Context = None, llm: object | None = None) -> str:
        """The hash that scopes entries to an LLM configuration and caller context."""
        parts: dict[str, Any] = {}
        llm_context = llm_cache_context(llm if llm is not None else self.llm)
        if llm_context:
            parts["llm"] = llm_context
        user_context = context if context is not None else self.context
        if user_context:
            parts["context"] = user_context
        if not parts:
            return ""
        canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]

    def _scope(
        self,
        namespace: str | None,
        user_id: str | None,
        context: Context,
        llm: object | None = None,
    ) -> Scope:
        return Scope(
            namespace=check_scope_name(
                self.namespace if namespace is None else namespace, "namespace", allow_empty=False
            ),
            user_id=check_scope_name(
                self.user_id if user_id is None else user_id, "user_id", allow_empty=True
            ),
            context_key=self.context_key(context, llm),
        )

    def _embed_one(self, query: str) -> FloatVector:
        """Embed one query (search, update, forget_similar); a failure or an unusable
        vector is the embedder's fault, typed so, as in lookups."""
        return embed_one(self.embedder, query)  # no deadline: no LLM to fall back on

    # -- lookups -----------------------------------------------------------------

    def lookup(
        self,
        query: str,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
        threshold: float | None = None,
    ) -> LookupResult | None:
        """The cached answer for ``query`` in scope, or None on a miss."""
        req = prepare(self, "lookup", query, self.llm, namespace, user_id, context, threshold)
        return run_lookup(self, req)

    # -- the lookup decision (hit quality): k nearest, guards, verification ----------

    def _judge(
        self, scope: Scope, vector: FloatVector, threshold: float | None, query: str | None
    ) -> tuple[LookupResult | None, float | None]:
        """Decide hit or miss for an embedded query: (the hit or None, nearest similarity).

        The decision itself is decision.judge, shared with `semcache get`; this adds
        the cache's rule (calibrations, guards, verifier) and remembers the hit for
        feedback().
        """
        limit, guards = self._rule(scope.namespace, threshold)
        verdict = judge(
            self._store,
            scope,
            vector,
            query,
            limit,
            guards,
            self.verify,
            self.verify_band,
            unseen=getattr(self.embedder, "unseen_text", None),
        )
        if not verdict.hit:
            return None, verdict.similarity
        result = verdict.result(query)
        self._feedback.remember(result)
        return result, verdict.similarity

    def _exact_result(self, row: EntryRow, query: str) -> LookupResult:
        """The exact-match path's hit: similarity 1.0, no guards."""
        result = Judgement.exact_match(row, threshold=1.0).result(query)  # no threshold applies
        self._feedback.remember(result)
        return result

    def find_similar(
        self,
        query_embedding: Any,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
        threshold: float | None = None,
    ) -> tuple[str, float] | None:
        """Seed API: ``(response, similarity)`` of the nearest entry at/above threshold, or None.

        Without the query's text only the margin and crowding guards can run, so the
        default threshold here is the embedder's one for non-default guard sets
        (``unguarded_threshold``: 0.95 for the local model, not 0.85), unless a threshold
        is given per call, stored by a calibration or set on the cache."""
        vector = as_unit_vector(query_embedding, self.embedder.dim)
        # No query text here: a placeholder keeps the request (and its CacheResult) whole.
        req = prepare(
            self,
            "find_similar",
            "(embedding)",
            self.llm,
            namespace,
            user_id,
            context,
            threshold,
            with_text=False,
        )
        return run_find_similar(self, req, vector)

    def search(
        self,
        query: str,
        k: int = 5,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
    ) -> list[LookupResult]:
        """The k nearest entries in scope whatever their similarity (not counted in stats).

        Near entries come exactly; the order of distant ones (similarity far below any
        useful threshold) is approximate unless the cache has ``exact_search=True``
        (see vector_index.py)."""
        check_query(query, max_chars=self.max_query_chars)
        check_int(k, "k", minimum=1, maximum=MAX_K)  # before embedding
        return self.search_vector(
            self._embed_one(query), k, namespace=namespace, user_id=user_id, context=context
        )

    def search_vector(
        self,
        query_embedding: Any,
        k: int = 5,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
    ) -> list[LookupResult]:
        """The k nearest entries in scope to an embedding (not counted in stats); see
        ``search`` about distant entries."""
        k = check_int(k, "k", minimum=1, maximum=MAX_K)
        vector = as_unit_vector(query_embedding, self.embedder.dim)
        scope = self._scope(namespace, user_id, context, self.llm)
        return [
            LookupResult(CacheEntry.from_row(row), min(1.0, 1.0 - distance), exact=False)
            for row, distance in self._store.nearest(scope, vector, k=k)
        ]

    # -- the LLM fallback ----------------------------------------------------------

    def get_or_compute(
        self,
        query: Prompt,
        llm: LLMFunction | None = None,
        *,
        namespace: str | None = None,
        user_id: str | None = None,
        context: Context = None,
        threshold: float | None = None,
    ) -> tuple[str, bool]:
        """Seed API: ``(response, is_cached)``. On a miss, call the LLM and store its answer.

        ``query`` may also be a list of chat messages. An LLM that raises, or
        returns something that is not non-empty text, raises LLMError and nothing
        is stored. ``get_or_compute_result`` gives the outcome and timings too.
        """
        result = self.get_or_compute_result(
            query, llm, namespace=namespace, user_id=user_id, context=context, threshold=threshold
        )
        assert result.response is not None  # errors raise; every other outcome answers
        return result.response, result.is_cached

    # -- writes ------------------------------------------------------------------

    def store(
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
        """Seed API: cache ``response`` for ``query``; returns the entry id.

        ``embedding`` may be None (the cache embeds the query). Storing the same
        query again in the same namespace, user and context replaces the response,
        unless ``on_duplicate`` says "keep" or "keep_both". ``ttl``: seconds this
        entry lives (None: forever). Both default to the namespace's, else the cache's.
        """
        if response is None:
            raise InvalidInputError("store() needs a response")
        return self.store_many(
            [query],
            [response],
            embeddings=None if embedding is None else [embedding],
            namespace=namespace,
            user_id=user_id,
            context=context,
            metadata=metadata,
            ttl=ttl,
            on_duplicate=on_duplicate,
        )[0]

    def store_many(
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
        """Batch warm-up: store many (query, response) pairs; one embedding call per batch.

        Everything given is validated before anything is written; each batch of
        ``batch_size`` is written in one transaction. Returns the entry ids. The
        vectors the cache computes come batch by batch: when the embedder fails in a
        later batch, the earlier ones stay stored and the error says how many.
        ``batch_size`` None: 256 when the cache embeds the queries (one embedder call
        per batch), 2048 when ``embeddings`` are given (fewer, larger transactions:
        ~20% faster bulk loads, each holding the write lock ~0.1 s).
        ``ttl`` and ``on_duplicate`` as in ``store``.
        """
        queries, responses = check_texts(queries, "queries"), check_texts(responses, "responses")
        if len(queries) != len(responses):
            raise InvalidInputError(f"{len(queries)} queries but {len(responses)} responses")
        for query in queries:
            check_query(query, max_chars=self.max_query_chars)
        for response in responses:
            check_response(response)
        check_write_options(ttl, on_duplicate)
        vectors = None
        if embeddings is not None:
            vectors = list(as_unit_matrix(embeddings, self.embedder.dim, len(queries)))
        scope = self._scope(namespace, user_id, context, self.llm)
        meta = check_metadata(metadata or {})
        ids: list[int] = []
        if batch_size is None:
            batch_size = EMBED_BATCH if vectors is None else GIVEN_VECTORS_BATCH
        step = check_int(batch_size, "batch_size", minimum=1)
        for start in range(0, len(queries), step):
            try:
                stored = self._store_in_scope(
                    scope,
                    queries[start : start + step],
                    responses[start : start + step],
                    None if vectors is None else vectors[start : start + step],
                    meta,
                    ttl,
                    on_duplicate,
                )
            except SemCacheError as exc:
                if ids:  # earlier batches are committed: say so, keeping the error's type
                    exc.args = (
                        f"{exc} ({len(ids)} of the {len(queries)} entries, the earlier "
                        f"batches of this store_many, stayed stored; the rest were not)",
                    )
                raise
            ids.extend(stored)
        return ids

    def _store_in_scope(
        self,
        scope: Scope,
        queries: list[str],
        responses: list[str],
        vectors: list[FloatVector] | None,
        metadata: dict[str, Any] | None,
        ttl: float | Unset | None = UNSET,
        on_duplicate: OnDuplicate | None = None,
    ) -> list[int]:
        """Upsert one batch: handle queries already stored in this exact scope as
        ``on_duplicate`` says, embed and insert the rest (re-checked inside the write
        transaction)."""
        shared = dict(metadata or {})  # one copy for the batch: entries never mutate it
        entries = [
            NewEntry(scope.namespace, scope.user_id, scope.context_key, q, query_hash(q), r, shared)
            for q, r in zip(queries, responses, strict=True)
        ]
        given: list[FloatVector | None] = (
            list(vectors) if vectors is not None else [None] * len(entries)
        )
        # Queries not stored yet (or all, for keep_both) need a vector; embed them in one call.
        mode = self._store.duplicate_mode(scope.namespace, on_duplicate)
        missing = [
            i
            for i, e in enumerate(entries)
            if given[i] is None
            and (mode == "keep_both" or self._store.find_exact_owned(scope, e.query_hash) is None)
        ]
        if missing:
            checked = self._embed_rows([entries[i].query for i in missing])
            for i, vector in zip(missing, checked, strict=True):
                given[i] = vector
        ids, still_missing = self._store.upsert_many(
            scope, entries, given, self.embedder.model_id, ttl=ttl, on_duplicate=mode
        )
        if still_missing:  # deleted by someone else between our check and our write
            checked = self._embed_rows([entries[i].query for i in still_missing])
            for i, vector in zip(still_missing, checked, strict=True):
                given[i] = vector
            # Only the rows that were not written: the others are committed already and
            # must not be replaced (and version-bumped) a second time.
            retried, _ = self._store.upsert_many(
                scope,
                [entries[i] for i in still_missing],
                [given[i] for i in still_missing],
                self.embedder.model_id,
                ttl=ttl,
                on_duplicate=mode,
            )
            for i, entry_id in zip(still_missing, retried, strict=True):
                ids[i] = entry_id
        return [i for i in ids if i is not None]

    def _embed_rows(self, texts: list[str]) -> FloatMatrix:
        """Embed texts for storing; a failure or an unusable vector is the embedder's
        fault, typed so."""
        return embed_many(self.embedder, texts)

    def update(
        self,
        entry_id: int,
        *,
        response: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        query: str | None = None,
        ttl: float | Unset | None = UNSET,
        expected_version: int | None = None,
    ) -> CacheEntry:
        """Change an entry in place; bumps ``version`` and ``updated_at``.

        A new ``query`` is embedded and written with its hash and vector in one
        transaction. ``ttl`` restarts the entry's time to live from now (None:
        never expires). With ``expected_version``, raises VersionConflictError if
        the entry moved.
        """
        entry_id = check_int(entry_id, "entry id")
        if response is not None:
            check_response(response)
        if expected_version is not None:
            check_int(expected_version, "expected_version")
        new_metadata = None if metadata is None else check_metadata(metadata)
        check_write_options(ttl, None)
        vector = None
        if query is not None:
            check_query(query, max_chars=self.max_query_chars)
            vector = self._embed_one(query)
        row = self._store.replace(
            entry_id,
            response=response,
            metadata=new_metadata,
            query=query,
            query_hash=None if query is None else query_hash(query),
            vector=vector,
            ttl=ttl,
            expected_version=expected_version,
        )
        return CacheEntry.from_row(row)

    def get(self, entry_id: int) -> CacheEntry:
        """The entry with this id (EntryNotFoundError if there is none)."""
        return CacheEntry.from_row(self._store.get(check_int(entry_id, "entry id")))

    def delete(self, entry_id: int) -> bool:
        """Delete one entry and its vector; False if there was none."""
        return self._store.delete(check_int(entry_id, "entry id"))

    def clear(self, namespace: str | None = None, *, user_id: str | None = None) -> int:
        """Delete entries: all of them, or those of ``namespace`` (and ``user_id``).

        Returns how many were deleted. Hit/miss counters are kept.
        """
        if namespace is not None:
            check_scope_name(namespace, "namespace", allow_empty=False)
        if user_id is not None:
            check_scope_name(user_id, "user_id", allow_empty=True)
        return self._store.delete_where(namespace=namespace, user_id=user_id)

    # -- hit quality: feedback and stored calibrations -----------------------------

    def feedback(
        self, result: LookupResult | int, correct: bool, *, query: str | None = None
    ) -> int:
        """Record whether a served hit was right (persisted); returns the row id. For an
        entry id, the last lookup this object served from it supplies the query asked,
        similarity and signals; else only the entry (and ``query``) is recorded."""

        def entry(entry_id: int) -> tuple[str, str, str]:
            found = self.get(entry_id)
            return found.namespace, found.user_id, found.query

        return self._feedback.record(result, correct, query, entry)

    def feedback_rows(self, namespace: str | None = None) -> list[FeedbackRow]:
        """The recorded feedback (of one namespace), oldest first."""
        return self._quality.feedback_rows(namespace)

    def calibration(self, namespace: str | None = None) -> Calibration | None:
        """The calibration stored for ``namespace`` (None: the file-wide one)."""
        return self._quality.calibration(FILE_WIDE if namespace is None else namespace)

    def set_calibration(self, calibration: Calibration) -> None:
        """Store a threshold (and guard weights) for a namespace or, with '', the file."""
        check_threshold(calibration.threshold)
        if calibration.namespace:
            check_scope_name(calibration.namespace, "namespace", allow_empty=False)
        self._quality.save_calibration(replace(calibration, embedding_model=self.embedder.model_id))

    def clear_calibration(self, namespace: str | None = None) -> bool:
        """Forget the stored calibration of ``namespace`` (None: the file-wide one)."""
        return self._quality.delete_calibration(FILE_WIDE if namespace is None else namespace)

    # -- statistics --------------------------------------------------------------

    def stats(self, namespace: str | None = None) -> dict[str, Any]:
        """Counters persisted in the file: overall, or for one namespace.

        Keys: cached_entries, hits, misses, total_requests, hit_rate; the latency
        figures of ``timing.latency_figures`` (mean_hit_latency, mean_miss_latency,
        mean_llm_latency, time_saved_fraction, seconds_saved, llm_calls,
        embed_failures, coalesced); and, overall, ``namespaces`` (the same figures
        per namespace) plus the file's model facts. ``namespace`` is checked like every
        scope name (a str of at most 1,024 characters, no NUL): InvalidInputError.
        """
        if namespace is not None:
            namespace = check_scope_name(namespace, "namespace", allow_empty=True)
        latency = self._store.latency_counters()
        per_namespace = {
            name: _figures(entries, hits, misses, latency.get(name, LatencySums()))
            for name, (entries, hits, misses) in self._store.namespace_counters(namespace).items()
        }
        if namespace is not None:
            return per_namespace[namespace]
        total = _figures(
            sum(f["cached_entries"] for f in per_namespace.values()),
            sum(f["hits"] for f in per_namespace.values()),
            sum(f["misses"] for f in per_namespace.values()),
            sum(latency.values(), LatencySums()),
        )
        info = self._store.info()
        total.update(
            threshold=self.threshold,
            embedding_model=info.get("embedding_model", ""),
            embedding_dim=int(info.get("embedding_dim", "0")),
            namespaces=per_namespace,
        )
        return total

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Close the file's connections, after writing the lookup counts still waiting
        for the write lock (waiting for it up to the busy timeout; if another
        connection keeps it, they are dropped with a warning). Idempotent."""
        try:
            self._store.write_counts(lock_wait=None)
        finally:
            self._db.close()

    def __enter__(self) -> SemanticCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SemanticCache(path={self.path!r}, embedder={self.embedder!r})"


def _figures(entries: int, hits: int, misses: int, latency: LatencySums) -> dict[str, Any]:
    total = hits + misses
    return {
        "cached_entries": entries,
        "hits": hits,
        "misses": misses,
        "total_requests": total,
        "hit_rate": hits / total if total else 0.0,
        **latency_figures(latency),
    }
