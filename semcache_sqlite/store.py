"""All SQL the cache runs: entries + their vectors, kept in step, and counters.

Tables (see migrations/ for the plain ones):

- ``entries``: one row per cached answer, readable with the stock sqlite3 shell.
- ``entry_embeddings`` (exact float32 vectors) and ``entry_vectors`` (a sqlite-vec
  ``vec0`` bit index partitioned by namespace, scope filters INSIDE the KNN
  scan): see ``vector_index.py``. The vec0 table is created by
  :meth:`Store.bind_embedder`, because its column type carries the dimension.
- ``cache_info``: key/value facts about the file (embedding model and dimension).
- ``namespace_stats``: persisted hit/miss counters and latency sums.

Invariant: an entry row and its two vector rows are inserted, replaced and
deleted in the same transaction (``vector_index.put_vectors`` /
``delete_vectors``).

Lifecycle (TTL filters, eviction, purge, invalidation, vector-table rebuilds) is
in ``store_lifecycle.py`` and re-embedding in ``store_reembed.py``, both mixed in.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .db import Database, in_batches
from .errors import (
    CacheTimeoutError,
    EmbedderMismatchError,
    EntryNotFoundError,
    InvalidInputError,
    NotACacheFileError,
    ReadOnlyError,
    SemCacheError,
    StorageFullError,
    UpgradeRequiredError,
    VersionConflictError,
)
from .lifecycle import (
    UNSET,
    LifecycleConfig,
    OnDuplicate,
    Unset,
    check_on_duplicate,
    check_ttl,
    expiry,
)
from .lookup_counts import COUNTER_LOCK_WAIT, MAX_WAITING, CountBatch, LatencySums, WaitingCounts
from .store_lifecycle import LifecycleStore, count_inserted
from .store_reembed import ReembedStore
from .validation import FloatVector, metadata_json, similarity_hits
from .vector_cells import PROBED_CELLS
from .vector_index import (
    CANDIDATES_PER_RESULT,
    DEFAULT_CANDIDATES,
    EMBEDDING_TABLE,
    MAX_K,
    VECTOR_TABLE,
    candidate_ids,
    complete_index,
    cosine_similarities,
    delete_vectors,
    delete_vectors_where,
    has_vector_table,
    index_incomplete,
    index_up_to_date,
    lookup_cells,
    put_vectors,
    scan_scope,
    scope_conditions,
    set_expiry,
    vector_layout_current,
    vector_row,
    vector_sources,
)

__all__ = ["MAX_K", "VECTOR_TABLE", "EntryRow", "NewEntry", "Scope", "Store"]

logger = logging.getLogger("semcache_sqlite")

_ENTRY_COLUMNS = (
    "id, namespace, user_id, context_key, query, response, created_at, updated_at, "
    "embedding_model, embedding_dim, version, hit_count, last_hit_at, metadata, expires_at"
)


@dataclass(frozen=True)
class EntryRow:
    """One row of ``entries`` as stored."""

    id: int
    namespace: str
    user_id: str
    context_key: str
    query: str
    response: str
    created_at: float
    updated_at: float
    embedding_model: str
    embedding_dim: int
    version: int
    hit_count: int
    last_hit_at: float | None
    metadata: dict[str, Any]
    expires_at: float | None = None  # None = never

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> EntryRow:
        return cls(
            id=int(row[0]),
            namespace=row[1],
            user_id=row[2],
            context_key=row[3],
            query=row[4],
            response=row[5],
            created_at=float(row[6]),
            updated_at=float(row[7]),
            embedding_model=row[8],
            embedding_dim=int(row[9]),
            version=int(row[10]),
            hit_count=int(row[11]),
            last_hit_at=None if row[12] is None else float(row[12]),
            metadata=_metadata(row[0], row[13]),
            expires_at=None if row[14] is None else float(row[14]),
        )


def _metadata(entry_id: Any, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:  # the CHECK (json_valid) in the schema: only damage gets here
        raise NotACacheFileError(f"entry {entry_id} has damaged metadata: {exc}") from exc
    return value if isinstance(value, dict) else {"value": value}


@dataclass(frozen=True)
class Scope:
    """Which entries a lookup may see: one namespace, one context, shared + own user rows."""

    namespace: str
    user_id: str  # '' = anonymous: sees shared rows only
    context_key: str

    def visible_user_ids(self) -> tuple[str, ...]:
        return ("",) if not self.user_id else ("", self.user_id)


@dataclass(frozen=True)
class NewEntry:
    namespace: str
    user_id: str
    context_key: str
    query: str
    query_hash: str
    response: str
    metadata: dict[str, Any]


class Store(LifecycleStore, ReembedStore):
    """SQL over one cache file. Knows nothing about thresholds or embedders' models."""

    def __init__(
        self, db: Database, clock: Any = time.time, lifecycle: LifecycleConfig | None = None
    ) -> None:
        self.db = db
        self._clock = clock
        self.lifecycle = lifecycle if lifecycle is not None else LifecycleConfig()
        self.bound: tuple[str, int] | None = None  # (model, dim) this Store writes vectors of
        #: Hamming-nearest candidates re-scored per lookup (see ``nearest``).
        self.search_candidates = DEFAULT_CANDIDATES
        #: Cells scanned per lookup in a namespace that has cells (see ``nearest``).
        self.search_cells = PROBED_CELLS
        #: Scan every exact vector instead of using the bit index.
        self.exact_search = False
        self._layout_known_current = False
        self._waiting_counts = WaitingCounts()  # lookup counts the write lock held up

    # -- file facts --------------------------------------------------------------

    def info(self) -> dict[str, str]:
        with self.db.reading() as conn:
            return {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM cache_info")}

    def bind_embedder(self, model_id: str, dim: int) -> None:
        """Record the file's embedding model and create the vector table, or check they match.

        The first embedder to write a file owns it; any other is refused with the
        way out named, because vectors of different models are not comparable.
        """
        info = self.info()  # a read first: reopening a bound file never waits for the writer
        if info.get("embedding_model") is not None:
            self._check_same_embedder(info, model_id, dim)
            with self.db.reading() as conn:
                layout_current = vector_layout_current(conn)
                incomplete = layout_current and index_incomplete(conn)
            if layout_current:
                if incomplete:  # a file of a version before the small table or partition index
                    self._complete_index()
                self.bound = (model_id, int(dim))
                return
        with self.db.transaction() as conn:
            info = dict(conn.execute("SELECT key, value FROM cache_info").fetchall())
            if info.get("embedding_model") is None:
                conn.execute(
                    "INSERT INTO cache_info (key, value) VALUES ('embedding_model', ?), "
                    "('embedding_dim', ?)",
                    (model_id, str(dim)),
                )
            else:
                self._check_same_embedder(info, model_id, dim)
            # Creates the vec0 table, or upgrades one written by the first schema.
            self.ensure_vector_layout(conn, dim)
        self.bound = (model_id, int(dim))

    def check_vector_layout(self) -> None:
        """For a file opened read-only: refuse an index of an older layout up front
        (lookups could not use it, and a read-only file cannot be upgraded)."""
        with self.db.reading() as conn:
            self._usable_index(conn)

    def _usable_index(self, conn: Any) -> bool:
        """True if the file has a vector index lookups can use, False if it has none
        yet; an index of an older layout raises UpgradeRequiredError."""
        if self._layout_known_current:
            return True
        if not has_vector_table(conn):
            return False
        if not vector_layout_current(conn):
            raise UpgradeRequiredError(
                f"{self.db.path}: its vector index has the layout of an older version, which "
                "this handle may not upgrade (read-only or inspection); open it once with a "
                "writable SemanticCache, or run `semcache migrate`"
            )
        # A layout is never downgraded (a re-embed rebuilds it in one transaction).
        self._layout_known_current = True
        return True

    def upgrade_vector_layout(self) -> bool:
        """Bring a bound file's vector index to this version's layout (True if rebuilt);
        a file never bound to an embedder has none yet."""
        dim = self.info().get("embedding_dim")
        if dim is None or self._vector_layout_current():
            return False
        with self.db.transaction() as conn:
            return self.ensure_vector_layout(conn, int(dim))

    def _complete_index(self) -> None:
        """Add the small namespaces' table and the partition indexes to a file of an
        earlier version as it is opened (``vector_index.complete_index``). Only an
        optimisation, and the open needs no other write: a writer holding the lock past
        the busy timeout (an import or a vacuum in another process), a full disk or a
        read-only file leave the file as it was, working without them, instead of
        failing the open (the next writable open or `semcache migrate` adds them)."""
        try:
            with self.db.transaction() as conn:
                complete_index(conn)
        except (CacheTimeoutError, StorageFullError, ReadOnlyError) as exc:
            logger.info("%s: vector index not completed this time: %s", self.db.path, exc)

    def _vector_layout_current(self) -> bool:
        """The vector index exists, in this version's layout, complete."""
        with self.db.reading() as conn:
            return has_vector_table(conn) and index_up_to_date(conn)

    def check_embedder(self, model_id: str, dim: int) -> None:
        """bind_embedder() for a read-only file: check only (a file never written matches)."""
        info = self.info()
        if info.get("embedding_model") is not None:
            self._check_same_embedder(info, model_id, dim)
        self.bound = (model_id, int(dim))

    def _check_same_embedder(self, info: dict[str, str], model_id: str, dim: int) -> None:
        stored_model, stored_dim = info.get("embedding_model"), info.get("embedding_dim")
        if stored_model != model_id or int(stored_dim or 0) != dim:
            if info.get("reembed_model") == model_id:
                way_out = (
                    f"A re-embed towards {model_id!r} was started but not finished: open "
                    f"the file with the {stored_model!r} embedder and call "
                    "cache.reembed(new_embedder) (or `semcache reembed`) again to finish it."
                )
            else:
                way_out = (
                    "Open it with the same embedder, or open it with that embedder and "
                    "re-embed its entries with cache.reembed(new_embedder) or `semcache reembed`."
                )
            raise EmbedderMismatchError(
                f"{self.db.path} was created with embedding model {stored_model!r} "
                f"({stored_dim}-d), but this cache was given {model_id!r} ({dim}-d). " + way_out
            )

    def _check_bound(self, conn: Any) -> None:
        """Refuse to use vectors of a model the file no longer holds: another process
        may have re-embedded it since this Store was bound."""
        if self.bound is None:
            return
        info = dict(
            conn.execute(
                "SELECT key, value FROM cache_info "
                "WHERE key IN ('embedding_model', 'embedding_dim')"
            ).fetchall()
        )
        model, dim = self.bound
        if info.get("embedding_model") != model or info.get("embedding_dim") != str(dim):
            raise EmbedderMismatchError(
                f"{self.db.path} was re-embedded with {info.get('embedding_model')!r} "
                f"({info.get('embedding_dim')}-d) after this cache opened it with {model!r}; "
                "open it again with the new embedder"
            )

    # -- writes ------------------------------------------------------------------

    def duplicate_mode(self, namespace: str, on_duplicate: OnDuplicate | None) -> OnDuplicate:
        """The per-call choice if given, else the namespace's, else the cache's."""
        if on_duplicate is not None:
            return check_on_duplicate(on_duplicate)
        return self.namespace_policy(namespace).on_duplicate

    def upsert_many(
        self,
        scope: Scope,
        entries: Sequence[NewEntry],
        vectors: Sequence[FloatVector | None],
        model_id: str,
        *,
        ttl: float | Unset | None = UNSET,
        on_duplicate: OnDuplicate | None = None,
    ) -> tuple[list[int | None], list[int]]:
        """Store a batch in one transaction, then enforce the limits in it too.

        An entry whose normalised query is already stored (and not expired) under
        exactly this namespace, user and context is a duplicate: ``on_duplicate``
        "replace" overwrites its response (version + 1, TTL restarted), "keep"
        leaves it and returns its id, "keep_both" inserts a new entry anyway.
        An expired duplicate is deleted and the entry inserted afresh.

        Returns (ids, indexes that need a vector): an entry that is new but came
        without a vector is not written, and its index is reported instead.
        """
        now = self.now()
        ids: list[int | None] = []
        need_vector: list[int] = []
        written: set[int] = set()
        with self.db.transaction() as conn:
            self._check_bound(conn)
            policy = self._policy(conn, scope.namespace)
            mode = policy.on_duplicate if on_duplicate is None else check_on_duplicate(on_duplicate)
            expires_at = policy.expires_at(now, ttl)
            seconds = None if expires_at is None else expires_at - now
            # The stored duplicates of the whole batch, in one query (hash -> newest).
            stored = {} if mode == "keep_both" else self._stored_duplicates(conn, scope, entries)
            # New entries are written together at the end (or before a later entry of
            # the batch repeats one of them, so it can be replaced like a stored one).
            new_rows = _NewRows(self._next_entry_id(conn), model_id, now)
            for index, (entry, vector) in enumerate(zip(entries, vectors, strict=True)):
                if entry.query_hash in new_rows.hashes:
                    new_rows.flush(conn)
                row = stored.get(entry.query_hash)
                if row is not None and row[1] is not None and float(row[1]) <= now:
                    self._delete_ids(conn, [int(row[0])])  # expired: stored afresh
                    row = None
                if row is not None:
                    entry_id = int(row[0])
                    if mode == "replace":
                        conn.execute(
                            "UPDATE entries SET response = ?, metadata = ?, version = version + 1, "
                            "updated_at = ?, ttl = ?, expires_at = ? WHERE id = ?",
                            (
                                entry.response,
                                metadata_json(entry.metadata),
                                now,
                                seconds,
                                expires_at,
                                entry_id,
                            ),
                        )
                        if vector is None:  # the stored vector stays; only its expiry moves
                            set_expiry(conn, entry_id, expires_at)
                        else:
                            self._put_vector(conn, entry_id, entry, vector, expires_at, True)
                        written.add(entry_id)
                    ids.append(entry_id)
                elif vector is None:
                    ids.append(None)
                    need_vector.append(index)
                else:
                    new_id = new_rows.add(entry, vector, expires_at)
                    ids.append(new_id)
                    written.add(new_id)
                    if mode != "keep_both":
                        stored[entry.query_hash] = (new_id, expires_at)
            new_rows.flush(conn)
            if written:
                self._after_write(conn, scope.namespace, now, written)
        return ids, need_vector

    def insert_many(
        self, entries: Sequence[NewEntry], vectors: Sequence[FloatVector], model_id: str
    ) -> list[int]:
        """Insert entries and their vectors in one transaction, no duplicate check (bulk
        loads of known-new entries); return the new ids. TTL and limits apply."""
        now = self.now()
        ids: list[int] = []
        with self.db.transaction() as conn:
            self._check_bound(conn)
            new_rows = _NewRows(self._next_entry_id(conn), model_id, now)
            policies = {n: self._policy(conn, n) for n in {e.namespace for e in entries}}
            for entry, vector in zip(entries, vectors, strict=True):
                expires_at = policies[entry.namespace].expires_at(now)
                ids.append(new_rows.add(entry, vector, expires_at))
            new_rows.flush(conn)
            for namespace in sorted({e.namespace for e in entries}):
                self._after_write(conn, namespace, now, set(ids))
        return ids

    @staticmethod
    def _stored_duplicates(
        conn: Any, scope: Scope, entries: Sequence[NewEntry]
    ) -> dict[str, tuple[int, float | None]]:
        """query_hash -> (id, expires_at) of the newest entry stored under exactly this
        namespace, user and context with that normalised query."""
        found: dict[str, tuple[int, float | None]] = {}
        for part, marks in in_batches(sorted({e.query_hash for e in entries})):
            # `+user_id`: keeps the planner on entries_by_exact_query (namespace,
            # context_key, query_hash); by entries_by_scope it would walk the namespace.
            rows = conn.execute(
                "SELECT query_hash, id, expires_at FROM entries WHERE namespace = ? "
                f"AND context_key = ? AND +user_id = ? AND query_hash IN ({marks}) ORDER BY id",
                (scope.namespace, scope.context_key, scope.user_id, *part),
            )
            found.update((str(r[0]), (int(r[1]), r[2])) for r in rows)  # the newest wins
        return found

    @staticmethod
    def _next_entry_id(conn: Any) -> int:
        """The id the next new entry gets. Ids are never reused (AUTOINCREMENT in
        migrations/0001_init.sql: sqlite_sequence remembers the largest ever used),
        so an id a caller still holds can never name someone else's entry. Only
        valid inside the write transaction that inserts."""
        row = conn.execute(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'entries'), 0), "
            "coalesce((SELECT max(id) FROM entries), 0))"
        ).fetchone()
        return int(row[0]) + 1

    @staticmethod
    def _put_vector(
        conn: Any,
        entry_id: int,
        entry: NewEntry,
        vector: FloatVector,
        expires_at: float | None = None,
        replace: bool = False,
    ) -> None:
        row = vector_row(
            entry_id, entry.namespace, entry.user_id, entry.context_key, expires_at, vector
        )
        put_vectors(conn, [row], replace=replace)

    def replace(
        self,
        entry_id: int,
        *,
        response: str | None = None,
        metadata: dict[str, Any] | None = None,
        query: str | None = None,
        query_hash: str | None = None,
        vector: FloatVector | None = None,
        ttl: float | Unset | None = UNSET,
        expected_version: int | None = None,
    ) -> EntryRow:
        """Update an entry in place (bumping version and updated_at); optionally its
        query text (with its hash and new vector, together) and its TTL."""
        now = self.now()
        with self.db.transaction() as conn:
            current = self._get(conn, entry_id)
            if expected_version is not None and current.version != expected_version:
                raise VersionConflictError(
                    f"entry {entry_id} is at version {current.version}, expected {expected_version}"
                )
            expires_at = current.expires_at
            seconds: float | None = None
            if not isinstance(ttl, Unset):
                # As a float: a numpy number was bound as a BLOB (an np.int64 ttl made every
                # later sliding hit fail) and a Fraction not at all.
                seconds = check_ttl(ttl)
                expires_at = None if seconds is None else expiry(now, seconds)
            conn.execute(
                "UPDATE entries SET response = ?, metadata = ?, query = coalesce(?, query), "
                "query_hash = coalesce(?, query_hash), "
                "version = version + 1, updated_at = ?, expires_at = ?, "
                "ttl = CASE WHEN ? THEN ? ELSE ttl END WHERE id = ?",
                (
                    current.response if response is None else response,
                    metadata_json(current.metadata if metadata is None else metadata),
                    query,
                    query_hash,
                    now,
                    expires_at,
                    not isinstance(ttl, Unset),
                    seconds,
                    entry_id,
                ),
            )
            if vector is not None or expires_at != current.expires_at:
                if vector is None:  # only the expiry moves: vec0 metadata can be updated
                    set_expiry(conn, entry_id, expires_at)
                else:
                    self._check_bound(conn)
                    scope = NewEntry(
                        current.namespace,
                        current.user_id,
                        current.context_key,
                        current.query,
                        "",
                        current.response,
                        {},
                    )
                    self._put_vector(conn, entry_id, scope, vector, expires_at, True)
            return self._get(conn, entry_id)

    def delete(self, entry_id: int) -> bool:
        with self.db.transaction() as conn:
            if has_vector_table(conn):
                delete_vectors(conn, [entry_id])
            return int(conn.execute("DELETE FROM entries WHERE id = ?", (entry_id,)).rowcount) > 0

    def delete_where(self, namespace: str | None = None, user_id: str | None = None) -> int:
        """Delete every entry (and vector) matching the given scope filters; None = any."""
        clauses, params = scope_conditions(
            "", namespace=namespace, user_ids=None if user_id is None else (user_id,)
        )
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self.db.transaction() as conn:
            if not has_vector_table(conn):
                return int(conn.execute(f"DELETE FROM entries {where}", params).rowcount)
            delete_vectors_where(conn, where, params)
            return int(conn.execute(f"DELETE FROM entries {where}", params).rowcount)

    def record_lookup(
        self,
        namespace: str,
        entry_id: int | None,
        *,
        seconds: float = 0.0,
        llm_seconds: float | None = None,
        embed_failed: bool = False,
        coalesced: bool = False,
    ) -> None:
        """Count a lookup as hit (entry_id given) or miss, with its latency, in the file;
        on a hit, a sliding TTL restarts the entry's time to live.

        ``seconds`` is added to the hit or miss latency sum; ``llm_seconds``, when
        given, to the LLM latency sum (and ``llm_calls`` + 1).

        Never waits long: the lookup's answer is already known. When another
        connection holds the write lock, the count waits in memory and goes in with a
        later one (lookup_counts.py). When the counters cannot be written at all (the
        disk is full, the file became read-only) the count is dropped with a warning.
        """
        if self.db.read_only:
            return  # a read-only file keeps the counters it has
        hit = entry_id is not None
        sums = LatencySums(
            hits=int(hit),
            misses=int(not hit),
            hit_seconds=float(seconds) if hit else 0.0,
            miss_seconds=0.0 if hit else float(seconds),
            llm_seconds=float(llm_seconds or 0.0),
            llm_calls=int(llm_seconds is not None),
            embed_failures=int(embed_failed),
            coalesced=int(coalesced),
        )
        waiting = self._waiting_counts.size()
        self._waiting_counts.add(namespace, sums, entry_id, self.now())
        if waiting > MAX_WAITING:
            self.write_counts(lock_wait=None)  # bounded memory: wait like any write
        else:
            # Counts already waiting: the lock was taken a moment ago, maybe by a long
            # write; try for it without waiting, so a lookup never stalls on that.
            self.write_counts(lock_wait=0.0 if waiting else COUNTER_LOCK_WAIT)

    def write_counts(self, *, lock_wait: float | None) -> None:
        """Write the lookup counts waiting in memory, in one transaction.

        ``lock_wait``: wait at most this long for the write lock, and if another
        connection still holds it, keep the counts for the next try. None: wait the
        busy timeout like any write (``close()`` does), then drop them with a warning.
        Any other storage error (a full disk, a file become read-only) drops them at
        once, with a warning: the lookups they count have their answers already.
        """
        batch = self._waiting_counts.take()
        if not batch:
            return
        keep = True  # on an interruption (KeyboardInterrupt) they wait again
        try:
            with self.db.transaction(wait=lock_wait) as conn:
                self._write_count_batch(conn, batch)
            keep = False
        except CacheTimeoutError as exc:
            if lock_wait is None:
                keep = False
                self._drop_counts(batch, exc)
            else:
                logger.debug("lookup counts wait for the write lock: %s", exc)
        except SemCacheError as exc:
            keep = False
            self._drop_counts(batch, exc)
        finally:
            self._waiting_counts.settle(batch, keep=keep)

    def _write_waiting_counts(self, conn: Any) -> None:
        """Inside a write transaction of this Store: write the counts waiting, so that its
        eviction and purge see the hits (last_hit_at, hit_count, sliding TTL); they wait
        again if the transaction rolls back."""
        batch = self._waiting_counts.take()
        if not batch:
            return
        self.db.when_done(lambda committed: self._waiting_counts.settle(batch, keep=not committed))
        self._write_count_batch(conn, batch)

    def _write_count_batch(self, conn: Any, batch: CountBatch) -> None:
        conn.executemany(
            "INSERT INTO namespace_stats (namespace, hits, misses, hit_seconds, "
            "miss_seconds, llm_seconds, llm_calls, embed_failures, coalesced) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(namespace) DO UPDATE SET hits = hits + excluded.hits, "
            "misses = misses + excluded.misses, "
            "hit_seconds = hit_seconds + excluded.hit_seconds, "
            "miss_seconds = miss_seconds + excluded.miss_seconds, "
            "llm_seconds = llm_seconds + excluded.llm_seconds, "
            "llm_calls = llm_calls + excluded.llm_calls, "
            "embed_failures = embed_failures + excluded.embed_failures, "
            "coalesced = coalesced + excluded.coalesced",
            [(name, *sums.values()) for name, sums in batch.namespaces.items()],
        )
        for entry_id, hits in batch.entries.items():
            # max(): a hit of another connection, written while these waited, may be later
            conn.execute(
                "UPDATE entries SET hit_count = hit_count + ?, "
                "last_hit_at = max(coalesce(last_hit_at, ?), ?) WHERE id = ?",
                (hits.hits, hits.last_hit_at, hits.last_hit_at, entry_id),
            )
            try:
                self._slide_expiry(conn, entry_id, hits.namespace, hits.last_hit_at)
            except InvalidInputError as exc:
                # The namespace's settings in the file cannot be used (a newer version's):
                # the other counts of the batch, often other namespaces', still go in.
                logger.warning(
                    "entry %s: hit counted, its sliding TTL not applied: %s", entry_id, exc
                )

    @staticmethod
    def _drop_counts(batch: CountBatch, exc: Exception) -> None:
        lookups = sum(s.hits + s.misses for s in batch.namespaces.values())
        logger.warning(
            "%d lookup(s) not counted in namespace(s) %s: %s",
            lookups,
            ", ".join(repr(n) for n in sorted(batch.namespaces)),
            exc,
        )

    # -- reads -------------------------------------------------------------------

    def get(self, entry_id: int) -> EntryRow:
        with self.db.reading() as conn:
            return self._get(conn, entry_id)

    def _get(self, conn: Any, entry_id: int) -> EntryRow:
        row = conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id = ?", (entry_id,)
        ).fetchone()
        if row is None:
            raise EntryNotFoundError(f"no cache entry with id {entry_id}")
        return EntryRow.from_row(row)

    def find_exact(self, scope: Scope, query_hash: str) -> EntryRow | None:
        """The newest unexpired entry in scope whose normalised query is identical; the
        user's own first."""
        users = scope.visible_user_ids()
        marks = ",".join("?" * len(users))
        with self.db.reading() as conn:
            row = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE namespace = ? AND context_key = ? "
                f"AND query_hash = ? AND user_id IN ({marks}) "
                "AND (expires_at IS NULL OR expires_at > ?) "
                "ORDER BY user_id = ? DESC, updated_at DESC, id DESC LIMIT 1",
                (
                    scope.namespace,
                    scope.context_key,
                    query_hash,
                    *users,
                    self.now(),
                    scope.user_id,
                ),
            ).fetchone()
        return None if row is None else EntryRow.from_row(row)

    def find_exact_owned(self, scope: Scope, query_hash: str) -> int | None:
        """Id of the unexpired entry with this exact query stored under exactly this scope
        and user."""
        with self.db.reading() as conn:
            row = conn.execute(
                "SELECT id FROM entries WHERE namespace = ? AND context_key = ? AND query_hash = ? "
                "AND user_id = ? AND (expires_at IS NULL OR expires_at > ?) "
                "ORDER BY id DESC LIMIT 1",
                (scope.namespace, scope.context_key, query_hash, scope.user_id, self.now()),
            ).fetchone()
        return None if row is None else int(row[0])

    def nearest(
        self,
        scope: Scope,
        vector: FloatVector,
        k: int = 1,
        *,
        exact: bool | None = None,
        whole_namespace_from: float | None = None,
    ) -> list[tuple[EntryRow, float]]:
        """The k nearest entries in scope with their cosine distance, nearest first.

        Fast path (the default): the bit index returns the Hamming-nearest
        ``max(search_candidates, 4k)`` entries of the scope (scope and expiry
        filtered inside the scan, so an expired or foreign neighbour never takes a
        candidate's place; every entry of a tie, see ``candidate_ids``), then their
        exact vectors are re-scored. In a namespace with cells the scan covers the
        ``search_cells`` cells nearest the vector: the nearest entry is found as
        reliably, the next ones less so (an entry 0.1-0.3 less similar may sit in
        a cell the query did not probe). ``whole_namespace_from``: when the nearest
        entry found is at least this similar, the namespace's other cells are
        scanned too, for their k Hamming-nearest entries, so that the whole
        namespace is covered. The guards pass their threshold, since their margin
        and crowding compare a servable entry with the next ones.
        ``exact=True`` (or ``Store.exact_search``) scans every exact vector of the
        scope instead: O(entries), for checking the fast path or for embedders
        whose signs carry little information.
        """
        k = max(1, min(int(k), MAX_K))
        now = self.now()
        with self.db.snapshot() as conn:  # the table choice and the KNN agree
            if not self._usable_index(conn):
                return []
            self._check_bound(conn)
            scored = None
            if not (self.exact_search if exact is None else exact):
                scored = self._fast_candidates(conn, scope, vector, k, now, whole_namespace_from)
            if scored is None:  # asked for, or the bits could not tell the candidates apart
                ids = self._exact_ranking(conn, scope, vector, k, now)
                scored = self._scored(conn, scope, vector, ids, now)
            return self._rows(conn, scored, k)

    def _fast_candidates(
        self,
        conn: Any,
        scope: Scope,
        vector: FloatVector,
        k: int,
        now: float,
        whole_namespace_from: float | None,
    ) -> list[_Scored] | None:
        """The fast path's candidates, scored (see ``nearest``); None when their bits
        tie too widely to choose them (``candidate_ids``)."""
        wanted = min(MAX_K, max(self.search_candidates, CANDIDATES_PER_RESULT * k))

        def scored_in(
            cells: Sequence[int] | None,
            per_cell: int = wanted,
            keep: int | None = None,
            widen: bool = True,
        ) -> list[_Scored] | None:
            ids = candidate_ids(
                conn,
                vector,
                per_cell,
                now,
                namespace=scope.namespace,
                context_key=scope.context_key,
                user_id=scope.user_id,
                cells=cells,
                keep=keep,
                widen=widen,
            )
            return None if ids is None else self._scored(conn, scope, vector, ids, now)

        cells = lookup_cells(conn, scope.namespace, vector, self.search_cells)
        scored = scored_in(None if cells is None else cells[0])
        if cells is None or not scored or k == 1 or whole_namespace_from is None:
            return scored
        if not similarity_hits(1.0 - min(scored).distance, whole_namespace_from):
            return scored
        # The other cells, so the whole namespace is covered: k from each (the k-pass
        # selection of vec0 costs per candidate), the `wanted` nearest of those kept.
        # No tie widening here: copies sharing their bits in another cell must not
        # turn a servable lookup into an exact scan of the namespace.
        rest = scored_in(cells[1], per_cell=k, keep=wanted, widen=False)
        return scored + (rest or [])

    @staticmethod
    def _exact_ranking(
        conn: Any, scope: Scope, vector: FloatVector, k: int, now: float
    ) -> list[int]:
        """The ids of the k best unexpired entries of the scope, by an exact scan."""
        best: list[tuple[float, int]] = []
        for ids, sims in scan_scope(
            conn,
            vector,
            namespace=scope.namespace,
            user_ids=scope.visible_user_ids(),
            context_key=scope.context_key,
            unexpired_at=now,
        ):
            best.extend((float(s), i) for i, s in zip(ids, sims, strict=True) if s == s)
            best = sorted(best, key=lambda t: (-t[0], t[1]))[:k]
        return [i for _, i in best]

    @staticmethod
    def _scored(
        conn: Any, scope: Scope, vector: FloatVector, ids: Sequence[int], now: float
    ) -> list[_Scored]:
        """The candidates re-checked to be in scope and unexpired, with their exact
        cosine distance to ``vector``."""
        rows = []
        for part, marks in in_batches(ids):
            rows.extend(
                conn.execute(
                    "SELECT e.id, e.namespace, e.user_id, e.context_key, e.expires_at, "
                    f"b.embedding FROM entries e LEFT JOIN {EMBEDDING_TABLE} b ON b.id = e.id "
                    f"WHERE e.id IN ({marks})",
                    part,
                )
            )
        visible = scope.visible_user_ids()
        rows = [
            r
            for r in rows
            if r[1] == scope.namespace
            and r[3] == scope.context_key
            and r[2] in visible
            and (r[4] is None or float(r[4]) > now)
        ]
        sims = cosine_similarities([b"" if r[5] is None else bytes(r[5]) for r in rows], vector)
        found: list[_Scored] = []
        for row, sim in zip(rows, sims, strict=True):
            if sim != sim:  # no exact vector, or a damaged one: skip it, loudly
                logger.warning("entry %s has an unusable vector (corrupt file?)", row[0])
                continue
            found.append(_Scored(1.0 - float(sim), int(row[0])))
        return found

    @staticmethod
    def _rows(conn: Any, scored: Sequence[_Scored], k: int) -> list[tuple[EntryRow, float]]:
        """The k nearest of the scored candidates as whole entry rows, nearest first."""
        best = sorted({s.entry_id: s for s in scored}.values())[:k]
        if not best:
            return []
        marks = ",".join("?" * len(best))
        full = {
            int(r[0]): EntryRow.from_row(r)
            for r in conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id IN ({marks})",
                [s.entry_id for s in best],
            )
        }
        return [(full[s.entry_id], s.distance) for s in best if s.entry_id in full]

    def namespace_counters(self, namespace: str | None = None) -> dict[str, tuple[int, int, int]]:
        """namespace -> (entries, hits, misses), for every namespace with entries or
        lookups, or for ``namespace`` alone (counting its entries only: the whole file's
        count reads every entry, ~130 ms at 1M); with the counts of this Store that
        wait for the write lock."""
        waiting = self._waiting_counts.namespace_sums()
        with self.db.reading() as conn:
            if namespace is None:
                rows = conn.execute(
                    "SELECT n.namespace, "
                    "  (SELECT count(*) FROM entries e WHERE e.namespace = n.namespace), "
                    "  coalesce(s.hits, 0), coalesce(s.misses, 0) "
                    "FROM (SELECT namespace FROM entries "
                    "      UNION SELECT namespace FROM namespace_stats) n "
                    "LEFT JOIN namespace_stats s ON s.namespace = n.namespace "
                    "ORDER BY n.namespace"
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT ?1, (SELECT count(*) FROM entries WHERE namespace = ?1), "
                    "  coalesce(s.hits, 0), coalesce(s.misses, 0) "
                    "FROM (SELECT 1) LEFT JOIN namespace_stats s ON s.namespace = ?1",
                    (namespace,),
                ).fetchall()
                waiting = {n: w for n, w in waiting.items() if n == namespace}
        counters = {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}
        for name, sums in waiting.items():
            entries, hits, misses = counters.get(name, (0, 0, 0))
            counters[name] = (entries, hits + sums.hits, misses + sums.misses)
        return dict(sorted(counters.items()))

    def latency_counters(self) -> dict[str, LatencySums]:
        """namespace -> the latency sums (see migrations/0004_latency_stats.sql), with
        those of this Store that wait for the write lock."""
        waiting = self._waiting_counts.namespace_sums()
        with self.db.reading() as conn:
            rows = conn.execute(
                "SELECT namespace, hits, misses, hit_seconds, miss_seconds, llm_seconds, "
                "llm_calls, embed_failures, coalesced FROM namespace_stats"
            ).fetchall()
        sums = {
            str(r[0]): LatencySums(
                hits=int(r[1]),
                misses=int(r[2]),
                hit_seconds=float(r[3]),
                miss_seconds=float(r[4]),
                llm_seconds=float(r[5]),
                llm_calls=int(r[6]),
                embed_failures=int(r[7]),
                coalesced=int(r[8]),
            )
            for r in rows
        }
        for name, more in waiting.items():
            sums[name] = sums.get(name, LatencySums()) + more
        return sums

    def orphan_counts(self) -> tuple[int, int]:
        """(entries without a vector, vectors without an entry): both must be 0.

        An entry needs both its exact vector and its index row; an id with a row in
        either vector table but no entry counts once.
        """
        with self.db.reading() as conn:
            sources = vector_sources(conn)  # the vec0 table only in an older layout
            if not sources:
                return (int(conn.execute("SELECT count(*) FROM entries").fetchone()[0]), 0)
            missing = " OR ".join(f"id NOT IN (SELECT {key} FROM {t})" for t, key in sources)
            held = " UNION ".join(f"SELECT {key} AS id FROM {t}" for t, key in sources)
            no_vector = conn.execute(f"SELECT count(*) FROM entries WHERE {missing}").fetchone()[0]
            no_entry = conn.execute(
                f"SELECT count(*) FROM ({held}) WHERE id NOT IN (SELECT id FROM entries)"
            ).fetchone()[0]
        return int(no_vector), int(no_entry)

    def iter_entries(self, batch: int = 1000) -> Iterable[EntryRow]:
        last = 0
        while True:
            with self.db.reading() as conn:
                rows = conn.execute(
                    f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id > ? ORDER BY id LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not rows:
                return
            for row in rows:
                yield EntryRow.from_row(row)
            last = int(rows[-1][0])


def _dumped(memo: dict[int, str], metadata: dict[str, Any]) -> str:
    """json.dumps(metadata), once per dict object of a batch."""
    text = memo.get(id(metadata))
    if text is None:
        text = memo[id(metadata)] = metadata_json(metadata)
    return text


@dataclass(frozen=True, order=True)
class _Scored:
    """A candidate entry by exact cosine distance (ties by id)."""

    distance: float
    entry_id: int


class _NewRows:
    """New entries of one write transaction, inserted together (a few statements per
    batch instead of several per entry: bulk loads are ~3x faster)."""

    def __init__(self, next_id: int, model_id: str, now: float) -> None:
        self.next_id = next_id
        self.model_id = model_id
        self.now = now
        self.rows: list[tuple[int, NewEntry, FloatVector, float | None]] = []
        self.hashes: set[str] = set()

    def add(self, entry: NewEntry, vector: FloatVector, expires_at: float | None) -> int:
        """Queue one entry; return the id it will have."""
        entry_id = self.next_id
        self.next_id += 1
        self.rows.append((entry_id, entry, vector, expires_at))
        self.hashes.add(entry.query_hash)
        return entry_id

    def flush(self, conn: Any) -> None:
        if not self.rows:
            return
        now = self.now
        dumped: dict[int, str] = {}  # a batch usually shares one metadata dict
        conn.executemany(
            "INSERT INTO entries (id, namespace, user_id, context_key, query, query_hash, "
            "response, created_at, updated_at, embedding_model, embedding_dim, metadata, "
            "ttl, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    entry_id,
                    e.namespace,
                    e.user_id,
                    e.context_key,
                    e.query,
                    e.query_hash,
                    e.response,
                    now,
                    now,
                    self.model_id,
                    int(vector.shape[0]),
                    _dumped(dumped, e.metadata),
                    None if expires_at is None else expires_at - now,
                    expires_at,
                )
                for entry_id, e, vector, expires_at in self.rows
            ],
        )
        # Counted first: indexing gives a namespace cells when its count reaches the mark.
        count_inserted(conn, (e.namespace for _, e, _, _ in self.rows))
        put_vectors(
            conn,
            [
                vector_row(entry_id, e.namespace, e.user_id, e.context_key, expires_at, vector)
                for entry_id, e, vector, expires_at in self.rows
            ],
        )
        self.rows.clear()
        self.hashes.clear()
