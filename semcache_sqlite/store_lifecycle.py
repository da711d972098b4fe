"""SQL of the entry lifecycle: expiry, eviction, invalidation, vector-table upkeep.

Mixed into :class:`semcache_sqlite.store.Store` (which runs the ordinary writes and
calls :meth:`LifecycleStore._after_write` inside each write transaction). The
rules themselves (what a TTL or a limit means) live in ``lifecycle.py``.

The vector layout itself (exact vectors in ``entry_embeddings``, a bit index in
the vec0 table ``entry_vectors``) lives in ``vector_index.py``. A fact about
sqlite-vec 0.1.9 this module is built on (measured): a deleted vector's slot is
reused only when its whole chunk (1024 rows) is empty; new rows always go to the
newest chunk of their partition. Random deletes leave holes that only a rebuild
of the index (``vacuum()``) removes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import suppress
from typing import Any, NamedTuple

from .db import Database, sidecar
from .lifecycle import (
    EVICT_TO,
    LAZY_PURGE_BATCH,
    Eviction,
    LifecycleConfig,
    NamespacePolicy,
    check_namespace_settings,
    eviction_target,
    expiry,
)
from .store_reembed import staged_bytes, staging_exists
from .validation import FloatVector
from .vector_index import (
    EMBEDDING_TABLE,
    VECTOR_TABLE,
    complete_index,
    counted_entries,
    delete_vectors,
    has_float_index,
    has_vector_table,
    index_row_count,
    index_tables,
    put_vectors,
    rebuild_index,
    scan_scope,
    set_expiry,
    vector_layout_current,
    vector_rows,
)

__all__ = ["LifecycleStore", "VacuumReport", "count_inserted"]

logger = logging.getLogger("semcache_sqlite")

#: Seconds an estimate of an unfinished re-embed's staged bytes is reused (_staged_bytes).
STAGED_BYTES_REUSE = 5.0

#: After an eviction batch, the rows of vec0 chunks at most this full are moved to
#: the newest chunk, so the old chunk empties and sqlite-vec frees it (it never
#: refills a chunk's holes). Without this, every entry LRU/LFU keeps alive pins
#: a whole chunk (1024 x dim x 4 bytes) and the file keeps growing.
SPARSE_CHUNK_FILL = 0.25

#: Rows moved per eviction batch, in whole chunks: a quarter of the batch, at least
#: this many, so one batch gathers the survivors of several sparse chunks into the
#: newest chunk together (moved one chunk at a time, they would just be scattered
#: among new rows again: measured, LFU then kept 11 chunks instead of 4). Moving
#: costs ~0.4 ms per row (measured).
COMPACT_MIN_BUDGET = 256

#: Victims first. ``id`` breaks ties so the order is total (repeatable tests).
#: Each ORDER BY matches an index of migration 0002 exactly, so taking a batch of
#: victims walks the front of an index instead of sorting the table.
_VICTIM_ORDER: dict[Eviction, str] = {
    "lru": "coalesce(last_hit_at, created_at), id",
    "lfu": "hit_count, created_at, id",
    "fifo": "created_at, id",
}


class VacuumReport(NamedTuple):
    """What ``LifecycleStore.vacuum`` did; sizes are of the file plus its WAL."""

    bytes_before: int
    bytes_after: int
    vectors_rebuilt: int
    #: False: another connection was using the file, so the WAL could not be emptied
    #: (a reader from before the VACUUM also keeps the compacted pages in it, so
    #: ``bytes_after`` can exceed ``bytes_before``).
    wal_truncated: bool


def count_inserted(conn: Any, namespaces: Iterable[str]) -> None:
    """Add newly inserted entries (one namespace per entry) to ``entry_counts``, in the
    inserting transaction (migration 0005 replaced the per-row trigger with this)."""
    for namespace, added in Counter(namespaces).items():
        conn.execute(
            "INSERT INTO entry_counts (namespace, entries) VALUES (?, ?) "
            "ON CONFLICT (namespace) DO UPDATE SET entries = entries + excluded.entries",
            (namespace, added),
        )


class LifecycleStore:
    """Lifecycle SQL over ``self.db``; ``Store`` sets the attributes below."""

    db: Database
    _clock: Callable[[], float]
    lifecycle: LifecycleConfig
    #: Move rows out of sparse vec0 chunks after evictions (see SPARSE_CHUNK_FILL).
    compact_chunks: bool = True
    #: (time.monotonic(), bytes) of the last staged_bytes() scan (see _staged_bytes).
    _staged_estimate: tuple[float, int] | None = None
    #: Store's: refuses vectors of a model the file no longer holds (a re-embed elsewhere).
    _check_bound: Callable[[Any], None]
    #: Store's: writes the lookup counts waiting for the lock, in this transaction.
    _write_waiting_counts: Callable[[Any], None]

    def now(self) -> float:
        # vec0 FLOAT columns refuse Python ints, and a test clock may return one.
        return float(self._clock())

    # -- namespace settings --------------------------------------------------------

    def namespace_overrides(self, namespace: str) -> dict[str, Any]:
        with self.db.reading() as conn:
            return self._overrides(conn, namespace)

    @staticmethod
    def _overrides(conn: Any, namespace: str) -> dict[str, Any]:
        row = conn.execute(
            "SELECT settings FROM namespace_config WHERE namespace = ?", (namespace,)
        ).fetchone()
        return {} if row is None else dict(json.loads(row[0]))

    def update_namespace_overrides(
        self, namespace: str, changes: Mapping[str, Any], *, reset: bool = False
    ) -> NamespacePolicy:
        """Merge ``changes`` into a namespace's stored overrides (after dropping them
        all if ``reset``) and apply a lower limit at once; return the new policy."""
        checked = check_namespace_settings(changes)
        now = self.now()
        with self.db.transaction() as conn:
            settings = {} if reset else self._overrides(conn, namespace)
            settings.update(checked)
            if settings:
                conn.execute(
                    "INSERT INTO namespace_config (namespace, settings, updated_at) "
                    "VALUES (?, ?, ?) ON CONFLICT (namespace) DO UPDATE SET "
                    "settings = excluded.settings, updated_at = excluded.updated_at",
                    (namespace, json.dumps(settings, sort_keys=True), now),
                )
            else:
                conn.execute("DELETE FROM namespace_config WHERE namespace = ?", (namespace,))
            self._after_write(conn, namespace, now, ())
            return self._policy(conn, namespace)

    def namespace_policy(self, namespace: str) -> NamespacePolicy:
        with self.db.reading() as conn:
            return self._policy(conn, namespace)

    def enforce_limits(self, conn: Any, namespaces: Collection[str], now: float) -> int:
        """Apply the limits to entries written by another path than a lookup's store
        (an import), inside its transaction ``conn``: each namespace's policy, then
        this store's whole-file limits. Returns how many entries went."""
        return sum(self._after_write(conn, namespace, now, ()) for namespace in sorted(namespaces))

    def _policy(self, conn: Any, namespace: str) -> NamespacePolicy:
        return self.lifecycle.for_namespace(self._overrides(conn, namespace))

    # -- deleting entries and their vectors together ---------------------------------

    @staticmethod
    def _delete_ids(conn: Any, ids: Sequence[int]) -> int:
        """Delete entries and their vectors (caller's transaction); return entries deleted."""
        if not ids:
            return 0
        if has_vector_table(conn):
            delete_vectors(conn, ids)
        params = [(int(i),) for i in ids]
        return int(conn.executemany("DELETE FROM entries WHERE id = ?", params).rowcount)

    def _expired_ids(
        self, conn: Any, now: float, limit: int | None, namespace: str | None = None
    ) -> list[int]:
        sql = "SELECT id FROM entries WHERE expires_at <= ?"
        params: list[Any] = [now]
        if namespace is not None:
            sql += " AND namespace = ?"
            params.append(namespace)
        sql += " ORDER BY expires_at"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [int(r[0]) for r in conn.execute(sql, params)]

    def purge_expired(self, namespace: str | None = None) -> int:
        """Delete every expired entry (of one namespace, or all); return how many."""
        with self.db.transaction() as conn:
            ids = self._expired_ids(conn, self.now(), None, namespace)
            removed = self._delete_ids(conn, ids)
            if removed:
                self._compact_sparse_chunks(conn, max(COMPACT_MIN_BUDGET, removed // 4))
            return removed

    def delete_older_than(self, cutoff: float, namespace: str | None = None) -> int:
        """Delete entries whose response was last written before ``cutoff``."""
        sql = "SELECT id FROM entries WHERE updated_at < ?"
        params: list[Any] = [float(cutoff)]
        if namespace is not None:
            sql += " AND namespace = ?"
            params.append(namespace)
        with self.db.transaction() as conn:
            return self._delete_ids(conn, [int(r[0]) for r in conn.execute(sql, params)])

    def delete_near(
        self,
        vector: FloatVector,
        max_distance: float,
        *,
        namespace: str | None,
        user_id: str | None,
        context_key: str | None,
    ) -> list[int]:
        """Delete every entry whose vector is within ``max_distance`` (cosine) of ``vector``.

        An exact scan of the exact vectors (of the namespace, when given), in one
        transaction: every entry within the bound goes, however many there are,
        which the quantized index alone could not promise. None for a filter
        means "any".
        """
        limit = 1.0 - float(max_distance)
        with self.db.transaction() as conn:
            # A vector of a model the file no longer holds would match the wrong entries.
            self._check_bound(conn)
            ids: list[int] = []
            for batch, sims in scan_scope(
                conn,
                vector,
                namespace=namespace,
                user_ids=None if user_id is None else (user_id,),
                context_key=context_key,
            ):
                # The same float32 tolerance as a lookup's threshold comparison.
                ids.extend(i for i, s in zip(batch, sims, strict=True) if s >= limit - 1e-6)
            self._delete_ids(conn, ids)
            return ids

    # -- limits, enforced inside the write that crosses them -----------------------

    def _after_write(self, conn: Any, namespace: str, now: float, written: Collection[int]) -> int:
        """Purge a few expired entries, then evict if a limit is crossed; return how many went.

        Runs in the write's own transaction, so the entries and vectors it deletes
        go (or stay) together with the write. After an eviction batch, the rows of
        the sparsest vec0 chunks are moved so those chunks can be freed.
        """
        self._write_waiting_counts(conn)  # the purge and eviction must see recent hits
        purged = self._delete_ids(conn, self._expired_ids(conn, now, LAZY_PURGE_BATCH))
        removed = 0
        policy = self._policy(conn, namespace)
        if policy.max_entries is not None:
            count = counted_entries(conn, namespace)
            if count > policy.max_entries:
                excess = count - eviction_target(policy.max_entries)
                removed += self._evict(conn, excess, policy.eviction, now, written, namespace)
        limit = self.lifecycle.max_entries
        if limit is not None:
            count = counted_entries(conn)
            if count > limit:
                excess = count - eviction_target(limit)
                removed += self._evict(conn, excess, self.lifecycle.eviction, now, written)
        if self._over_max_bytes(conn):
            # Oldest first whatever the policy: rows sit in vec0 chunks in insertion
            # order, and only emptied chunks give their pages back. A soft limit:
            # the entries just written always stay.
            batch = max(1, math.ceil(counted_entries(conn) * (1 - EVICT_TO)))
            removed += self._evict(conn, batch, "fifo", now, written, spare_written=True)
        if removed:
            self._compact_sparse_chunks(conn, max(COMPACT_MIN_BUDGET, removed // 4))
        return purged + removed

    def _over_max_bytes(self, conn: Any) -> bool:
        """Pages in use above ``max_bytes``, an unfinished re-embed's staged vectors left
        out (read only when over: they cost a scan of the staging table)."""
        max_bytes = self.lifecycle.max_bytes
        if max_bytes is None:
            return False
        in_use = self._bytes_in_use(conn)
        return in_use > max_bytes and in_use - self._staged_bytes(conn) > max_bytes

    def _staged_bytes(self, conn: Any) -> int:
        """staged_bytes(), reused for STAGED_BYTES_REUSE seconds while a re-embed is staged:
        it scans the staging table (~12 ms at 10k staged rows, ~100 ms at 100k), which
        every write over max_bytes would otherwise pay. Staging grows a batch at a time,
        so a slightly old figure evicts a little early at worst."""
        if not staging_exists(conn):
            self._staged_estimate = None
            return 0
        now = time.monotonic()
        if self._staged_estimate is None or now - self._staged_estimate[0] > STAGED_BYTES_REUSE:
            self._staged_estimate = (now, staged_bytes(conn))
        return self._staged_estimate[1]

    @staticmethod
    def _bytes_in_use(conn: Any) -> int:
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * int(conn.execute("PRAGMA page_size").fetchone()[0])

    def _evict(
        self,
        conn: Any,
        how_many: int,
        eviction: Eviction,
        now: float,
        protected: Collection[int],
        namespace: str | None = None,
        *,
        spare_written: bool = False,
    ) -> int:
        """Delete up to ``how_many`` entries: expired ones first, then by policy.

        ``protected`` (the entries this write just stored) go last, and not at all
        with ``spare_written``: an LFU cache would otherwise evict a new entry,
        with its zero hits, at once.
        """
        victims = self._expired_ids(conn, now, how_many, namespace)
        if len(victims) < how_many:
            chosen = set(victims)
            spare: list[int] = []
            where = "" if namespace is None else "WHERE namespace = ?"
            params: list[Any] = [] if namespace is None else [namespace]
            rows = conn.execute(
                f"SELECT id FROM entries {where} ORDER BY {_VICTIM_ORDER[eviction]} LIMIT ?",
                (*params, how_many + len(victims) + len(protected)),
            )
            for (raw_id,) in rows:
                entry_id = int(raw_id)
                if entry_id in chosen:
                    continue
                if entry_id in protected:
                    spare.append(entry_id)
                    continue
                victims.append(entry_id)
                if len(victims) == how_many:
                    break
            # Only a single write larger than the limit gets here: its own entries
            # then go too, in policy order, so the limit holds when it commits.
            if not spare_written:
                victims.extend(spare[: how_many - len(victims)])
        return self._delete_ids(conn, victims)

    def _slide_expiry(self, conn: Any, entry_id: int, namespace: str, now: float) -> None:
        """On a hit (at ``now``) with a sliding TTL: the entry now expires ``ttl`` after
        this hit. A hit written late (lookup_counts.py) changes nothing if the entry
        already expires later (a later hit was written first) or has expired since
        (lookups missed it meanwhile: it must not come back)."""
        if not self._policy(conn, namespace).sliding_ttl:
            return
        row = conn.execute(
            "SELECT ttl, expires_at FROM entries WHERE id = ?", (entry_id,)
        ).fetchone()
        if row is None or row[0] is None:
            return
        expires_at = expiry(now, float(row[0]))
        if row[1] is not None and not self.now() < float(row[1]) < expires_at:
            return
        conn.execute("UPDATE entries SET expires_at = ? WHERE id = ?", (expires_at, entry_id))
        set_expiry(conn, entry_id, expires_at)

    # -- the vector table itself -----------------------------------------------------

    def _compact_sparse_chunks(self, conn: Any, budget: int) -> int:
        """Move the rows of the emptiest vec0 chunks (all but the newest of each
        partition, one per namespace and cell, at most SPARSE_CHUNK_FILL full, whole chunks only, up
        to ``budget`` rows) to the newest chunk of their partition; sqlite-vec then
        frees the emptied chunks. Returns the rows moved.

        Reads sqlite-vec's own ``<table>_chunks`` / ``<table>_rowids`` tables (chunk
        -> partition, rowid -> chunk); if a future sqlite-vec lays its tables out
        differently, this does nothing.
        """
        if not self.compact_chunks:
            return 0
        sparse: list[tuple[int, str, int]] = []  # (rows, vec0 table, chunk id)
        for table in index_tables(conn):
            try:
                sparse.extend(self._sparse_chunks(conn, table))
            except self.db.driver.OperationalError:  # no such table / column: another layout
                return 0
        ids: list[int] = []
        for rows, table, chunk in sorted(sparse):
            if len(ids) + rows > budget:
                break  # a chunk moved half-way frees nothing
            ids.extend(
                int(r[0])
                for r in conn.execute(
                    f"SELECT rowid FROM {table}_rowids WHERE chunk_id = ?", (chunk,)
                )
            )
        if not ids:
            return 0
        # The exact vectors are re-quantized: reading bits back out of vec0 is slow.
        moved = vector_rows(conn, ids)
        kept = {r.entry_id for r in moved}
        marks = ",".join("?" * len(ids))
        alive = {
            int(r[0]) for r in conn.execute(f"SELECT id FROM entries WHERE id IN ({marks})", ids)
        }
        # An index row without an entry just goes; one whose entry lost its exact vector
        # stays where it is (doctor reports the entry) rather than vanish silently.
        delete_vectors(conn, kept | (set(ids) - alive))
        put_vectors(conn, moved)
        return len(kept)

    @staticmethod
    def _sparse_chunks(conn: Any, table: str) -> list[tuple[int, str, int]]:
        """(rows, table, chunk id) of the chunks of one vec0 table that compaction
        empties: all but the newest of each partition, at most SPARSE_CHUNK_FILL full."""
        # A partition is a (namespace, cell) pair: the layout's two partition keys.
        chunks = [
            (int(chunk), (namespace, cell), int(size))
            for chunk, namespace, cell, size in conn.execute(
                f"SELECT chunk_id, partition00, partition01, size FROM {table}_chunks"
            )
        ]
        counts = dict(
            conn.execute(
                f"SELECT chunk_id, count(*) FROM {table}_rowids "
                "WHERE chunk_id IS NOT NULL GROUP BY chunk_id"
            ).fetchall()
        )
        newest: dict[Any, int] = {}
        for chunk, partition, _ in chunks:
            newest[partition] = max(newest.get(partition, 0), chunk)
        return [
            (int(counts.get(chunk, 0)), table, chunk)
            for chunk, partition, size in chunks
            if chunk != newest[partition] and int(counts.get(chunk, 0)) <= size * SPARSE_CHUNK_FILL
        ]

    def ensure_vector_layout(self, conn: Any, dim: int) -> bool:
        """Create the vector index, or upgrade a file written by an older version.

        Part of opening a file (the caller's transaction): a migration cannot do it
        in SQL because the vec0 DDL carries the dimension. Older layouts kept the
        float32 vectors inside the vec0 table: they are copied out to
        ``entry_embeddings`` first. Returns True if the index was (re)built.
        """
        if vector_layout_current(conn):
            complete_index(conn)  # a file of a version before the small table or partition index
            return False
        if has_float_index(conn):
            self._copy_vectors_out(conn)
        rebuild_index(conn, dim)  # an empty index when there are no vectors yet
        return True

    def _copy_vectors_out(self, conn: Any) -> None:
        """Copy the float32 vectors of a pre-0005 vec0 table into ``entry_embeddings``."""
        select = f"SELECT rowid, embedding FROM {VECTOR_TABLE}"
        insert = f"INSERT OR REPLACE INTO {EMBEDDING_TABLE} (id, embedding) VALUES (?, ?)"
        if self.db.path == ":memory:":  # no second connection can see this database
            conn.executemany(insert, conn.execute(select).fetchall())
            return
        # Read through a second connection: vec0 reads interleaved with writes on
        # one connection are several times slower (measured).
        with self.db.side_connection() as side:
            cursor = side.execute(select)
            while rows := cursor.fetchmany(1024):
                conn.executemany(insert, rows)

    def file_bytes(self) -> int:
        """Size on disk of the file plus its write-ahead log."""
        total = 0
        for name in (self.db.path, sidecar(self.db.path, "-wal")):
            with suppress(OSError):  # no -wal file after a clean close
                total += os.path.getsize(name)
        return total

    def vacuum(self, compact_vectors: bool = True) -> VacuumReport:
        """Purge expired entries, optionally rebuild the vec0 table, VACUUM, truncate the WAL.

        While another connection uses the file, the WAL cannot be emptied:
        ``wal_truncated`` False. A reader from before the VACUUM also keeps the
        compacted pages out of the file (VACUUM writes them into the WAL), so the file
        plus WAL may be larger than before until a checkpoint after that reader is done;
        the -wal file keeps its size until one truncates it (a later vacuum, the WAL
        bound, or closing the last connection).
        """
        before = self.file_bytes()
        rebuilt = 0
        with self.db.transaction() as conn:
            self._delete_ids(conn, self._expired_ids(conn, self.now(), None))
            # Recounted from the entries: inserts are counted by the code (0005), so
            # rows written around it (the sqlite3 shell) were never counted.
            conn.execute("DELETE FROM entry_counts")
            conn.execute(
                "INSERT INTO entry_counts (namespace, entries) "
                "SELECT namespace, count(*) FROM entries GROUP BY namespace"
            )
            dim = conn.execute(
                "SELECT value FROM cache_info WHERE key = 'embedding_dim'"
            ).fetchone()
            if dim is not None and has_vector_table(conn):
                if self.ensure_vector_layout(conn, int(dim[0])):  # upgrading rebuilds it
                    rebuilt = index_row_count(conn)
                elif compact_vectors:
                    rebuilt = rebuild_index(conn, int(dim[0]))
        with self.db.reading() as conn:
            conn.execute("VACUUM")  # outside any transaction, as SQLite requires
            busy, frames, copied = self.db.truncate_wal(conn)
        if busy:  # the caller has wal_truncated; the CLI says it in its own words
            logger.info(
                "%s: vacuumed, but %s",
                self.db.path,
                "a reader from before keeps the compacted pages in the WAL until it is done"
                if copied < frames
                else "another connection is using the file: the WAL was not emptied",
            )
        return VacuumReport(before, self.file_bytes(), rebuilt, wal_truncated=not busy)
