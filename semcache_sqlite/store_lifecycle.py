"""SQL of the entry lifecycle: expiry, eviction, invalidation, vector-table upkeep.

Mixed into :class:`semcache_sqlite.store.Store` (which runs the ordinary writes and
calls :meth:`LifecycleStore._after_write` inside each write transaction). The
rules themselves (what a TTL or a limit means) live in ``lifecycle.py``.

Facts about sqlite-vec 0.1.9 this module is built on (measured, see the README):

- vec0 metadata columns cannot be NULL, so ``expires_at`` in the vector table
  uses :data:`NEVER_EXPIRES` for "never"; ``entries.expires_at`` keeps NULL.
- A deleted vector's slot is reused only when its whole chunk (1024 rows) is
  empty; new rows always go to the newest chunk. Random deletes leave holes that
  only a rebuild of the table (``vacuum()``) removes.
- ``ALTER TABLE ... RENAME`` breaks vec0, so a table with a new layout or a new
  dimension is built by DROP + CREATE under the same name inside one transaction,
  filled from a plain table.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import suppress
from typing import Any

from .db import Database
from .lifecycle import (
    EVICT_TO,
    LAZY_PURGE_BATCH,
    Eviction,
    LifecycleConfig,
    NamespacePolicy,
    check_namespace_settings,
    eviction_target,
)
from .validation import FloatVector

VECTOR_TABLE = "entry_vectors"

#: sqlite-vec caps k.
MAX_K = 4096

#: ``expires_at`` in the vec0 table for entries that never expire (vec0 rejects
#: NULL): about the year 3e10, far beyond any clock.
NEVER_EXPIRES = 1e18

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


def vector_table_ddl(dim: int) -> str:
    """The vec0 table: scope and expiry as metadata columns, filtered inside the KNN."""
    return (
        f"CREATE VIRTUAL TABLE {VECTOR_TABLE} USING vec0("
        f"embedding float[{int(dim)}] distance_metric=cosine, "
        "namespace text, user_id text, context_key text, expires_at float)"
    )


def vec_expiry(expires_at: float | None) -> float:
    """``entries.expires_at`` as the vec0 column holds it (a float, never NULL)."""
    return NEVER_EXPIRES if expires_at is None else float(expires_at)


def has_vector_table(conn: Any) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (VECTOR_TABLE,)
    ).fetchone()
    return row is not None


def vector_layout_current(conn: Any) -> bool:
    """The vec0 table exists and has this schema's layout (an ``expires_at`` column)."""
    row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (VECTOR_TABLE,)
    ).fetchone()
    return row is not None and "expires_at" in str(row[0])


class LifecycleStore:
    """Lifecycle SQL over ``self.db``; ``Store`` sets the attributes below."""

    db: Database
    _clock: Callable[[], float]
    lifecycle: LifecycleConfig
    #: Move rows out of sparse vec0 chunks after evictions (see SPARSE_CHUNK_FILL).
    compact_chunks: bool = True

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

    def _policy(self, conn: Any, namespace: str) -> NamespacePolicy:
        return self.lifecycle.for_namespace(self._overrides(conn, namespace))

    # -- deleting entries and their vectors together ---------------------------------

    @staticmethod
    def _delete_ids(conn: Any, ids: Sequence[int]) -> int:
        """Delete entries and their vectors (caller's transaction); return entries deleted."""
        if not ids:
            return 0
        params = [(int(i),) for i in ids]
        if has_vector_table(conn):
            # One statement per rowid: vec0 answers `rowid IN (...)` with a full scan.
            conn.executemany(f"DELETE FROM {VECTOR_TABLE} WHERE rowid = ?", params)
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

        The bound and the scope filters are part of the KNN query, so one query with
        the largest k finds up to 4096 victims; it repeats until a query comes back
        short, all inside one transaction. None for a filter means "any".
        """
        filters, params = "", []
        for column, value in (
            ("namespace", namespace),
            ("user_id", user_id),
            ("context_key", context_key),
        ):
            if value is not None:
                filters += f" AND {column} = ?"
                params.append(value)
        deleted: list[int] = []
        with self.db.transaction() as conn:
            if not has_vector_table(conn):
                return []
            while True:
                rows = conn.execute(
                    f"SELECT rowid FROM {VECTOR_TABLE} WHERE embedding MATCH ? AND k = ? "
                    f"AND distance <= ?{filters}",
                    (vector.tobytes(), MAX_K, float(max_distance), *params),
                ).fetchall()
                ids = [int(r[0]) for r in rows]
                self._delete_ids(conn, ids)
                deleted.extend(ids)
                if len(ids) < MAX_K:
                    return deleted

    # -- limits, enforced inside the write that crosses them -----------------------

    def _after_write(self, conn: Any, namespace: str, now: float, written: Collection[int]) -> int:
        """Purge a few expired entries, then evict if a limit is crossed; return how many went.

        Runs in the write's own transaction, so the entries and vectors it deletes
        go (or stay) together with the write. After an eviction batch, the rows of
        the sparsest vec0 chunks are moved so those chunks can be freed.
        """
        purged = self._delete_ids(conn, self._expired_ids(conn, now, LAZY_PURGE_BATCH))
        removed = 0
        policy = self._policy(conn, namespace)
        if policy.max_entries is not None:
            count = self._count(conn, namespace)
            if count > policy.max_entries:
                excess = count - eviction_target(policy.max_entries)
                removed += self._evict(conn, excess, policy.eviction, now, written, namespace)
        limit = self.lifecycle.max_entries
        if limit is not None:
            count = self._count(conn, None)
            if count > limit:
                excess = count - eviction_target(limit)
                removed += self._evict(conn, excess, self.lifecycle.eviction, now, written)
        max_bytes = self.lifecycle.max_bytes
        if max_bytes is not None and self._bytes_in_use(conn) > max_bytes:
            # Oldest first whatever the policy: rows sit in vec0 chunks in insertion
            # order, and only emptied chunks give their pages back. A soft limit:
            # the entries just written always stay.
            batch = max(1, math.ceil(self._count(conn, None) * (1 - EVICT_TO)))
            removed += self._evict(conn, batch, "fifo", now, written, spare_written=True)
        if removed:
            self._compact_sparse_chunks(conn, max(COMPACT_MIN_BUDGET, removed // 4))
        return purged + removed

    @staticmethod
    def _count(conn: Any, namespace: str | None) -> int:
        if namespace is None:
            row = conn.execute("SELECT coalesce(sum(entries), 0) FROM entry_counts").fetchone()
        else:
            row = conn.execute(
                "SELECT coalesce(sum(entries), 0) FROM entry_counts WHERE namespace = ?",
                (namespace,),
            ).fetchone()
        return int(row[0])

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
        """On a hit with a sliding TTL: the entry now expires ``ttl`` after this hit."""
        if not self._policy(conn, namespace).sliding_ttl:
            return
        row = conn.execute("SELECT ttl FROM entries WHERE id = ?", (entry_id,)).fetchone()
        if row is None or row[0] is None:
            return
        expires_at = now + float(row[0])
        conn.execute("UPDATE entries SET expires_at = ? WHERE id = ?", (expires_at, entry_id))
        conn.execute(
            f"UPDATE {VECTOR_TABLE} SET expires_at = ? WHERE rowid = ?", (expires_at, entry_id)
        )

    # -- the vector table itself -----------------------------------------------------

    def _compact_sparse_chunks(self, conn: Any, budget: int) -> int:
        """Move the rows of the emptiest vec0 chunks (all but the newest, at most
        SPARSE_CHUNK_FILL full, whole chunks only, up to ``budget`` rows) to the newest
        chunk; sqlite-vec then frees the emptied chunks. Returns the rows moved.

        Reads sqlite-vec's own ``<table>_rowids`` map (rowid -> chunk); if a future
        sqlite-vec lays its tables out differently, this does nothing.
        """
        if not self.compact_chunks:
            return 0
        try:
            counts = conn.execute(
                f"SELECT chunk_id, count(*) FROM {VECTOR_TABLE}_rowids "
                "WHERE chunk_id IS NOT NULL GROUP BY chunk_id"
            ).fetchall()
            capacity = conn.execute(f"SELECT max(size) FROM {VECTOR_TABLE}_chunks").fetchone()[0]
        except self.db.driver.OperationalError:  # no such table / column: another layout
            return 0
        if len(counts) < 2 or not capacity:
            return 0
        newest = max(int(chunk) for chunk, _ in counts)
        sparse = sorted(
            (int(n), int(chunk))
            for chunk, n in counts
            if int(chunk) != newest and int(n) <= int(capacity) * SPARSE_CHUNK_FILL
        )
        ids: list[int] = []
        for rows, chunk in sparse:
            if len(ids) + rows > budget:
                break  # a chunk moved half-way frees nothing
            ids.extend(
                int(r[0])
                for r in conn.execute(
                    f"SELECT rowid FROM {VECTOR_TABLE}_rowids WHERE chunk_id = ?", (chunk,)
                )
            )
        if not ids:
            return 0
        # Read every vector first: vec0 point reads interleaved with writes on one
        # connection are several times slower (measured).
        vectors = [
            conn.execute(f"SELECT embedding FROM {VECTOR_TABLE} WHERE rowid = ?", (i,)).fetchone()
            for i in ids
        ]
        scopes = [
            conn.execute(
                "SELECT namespace, user_id, context_key, expires_at FROM entries WHERE id = ?",
                (i,),
            ).fetchone()
            for i in ids
        ]
        conn.executemany(f"DELETE FROM {VECTOR_TABLE} WHERE rowid = ?", [(i,) for i in ids])
        conn.executemany(
            f"INSERT INTO {VECTOR_TABLE} "
            "(rowid, embedding, namespace, user_id, context_key, expires_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (i, vector[0], scope[0], scope[1], scope[2], vec_expiry(scope[3]))
                for i, vector, scope in zip(ids, vectors, scopes, strict=True)
                if vector is not None and scope is not None  # an orphan vector just goes
            ],
        )
        return len(ids)

    def ensure_vector_layout(self, conn: Any, dim: int) -> bool:
        """Create the vec0 table, or upgrade one of the first layout (no ``expires_at``).

        Part of opening a file (the caller's transaction): migration 0002 cannot do
        it in SQL because the table's DDL carries the dimension. Returns True if
        the table was (re)built.
        """
        if not has_vector_table(conn):
            conn.execute(vector_table_ddl(dim))
            return True
        if vector_layout_current(conn):
            return False
        self._rebuild_vector_table(conn, dim)
        return True

    def _rebuild_vector_table(self, conn: Any, dim: int) -> int:
        """Re-create the vec0 table from its own vectors, in the caller's transaction.

        Gives the current layout and packs the rows into as few chunks as possible
        (no holes left by deletes). Vectors without an entry are dropped. Costs
        about 40 us per 384-d row (read out ~19 us, insert ~23 us, measured).
        """
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS vector_rebuild "
            "(id INTEGER PRIMARY KEY, embedding BLOB NOT NULL)"
        )
        conn.execute("DELETE FROM temp.vector_rebuild")
        self._copy_vectors_out(conn)
        conn.execute(f"DROP TABLE {VECTOR_TABLE}")
        conn.execute(vector_table_ddl(dim))
        moved = conn.execute(
            f"INSERT INTO {VECTOR_TABLE} "
            "(rowid, embedding, namespace, user_id, context_key, expires_at) "
            "SELECT e.id, r.embedding, e.namespace, e.user_id, e.context_key, "
            "coalesce(e.expires_at, ?) FROM entries e JOIN temp.vector_rebuild r ON r.id = e.id",
            (NEVER_EXPIRES,),
        ).rowcount
        conn.execute("DROP TABLE temp.vector_rebuild")
        return int(moved)

    def _copy_vectors_out(self, conn: Any) -> None:
        select = f"SELECT rowid, embedding FROM {VECTOR_TABLE}"
        insert = "INSERT INTO temp.vector_rebuild (id, embedding) VALUES (?, ?)"
        if self.db.path == ":memory:":  # no second connection can see this database
            conn.executemany(insert, conn.execute(select).fetchall())
            return
        with self.db.side_connection() as side:
            cursor = side.execute(select)
            while rows := cursor.fetchmany(1024):
                conn.executemany(insert, rows)

    def file_bytes(self) -> int:
        """Size on disk of the file plus its write-ahead log."""
        total = 0
        for suffix in ("", "-wal"):
            with suppress(OSError):  # no -wal file after a clean close
                total += os.path.getsize(self.db.path + suffix)
        return total

    def vacuum(self, compact_vectors: bool = True) -> tuple[int, int, int]:
        """Purge expired entries, optionally rebuild the vec0 table, VACUUM, truncate the WAL.

        Returns (bytes before, bytes after, vectors rebuilt).
        """
        before = self.file_bytes()
        rebuilt = 0
        with self.db.transaction() as conn:
            self._delete_ids(conn, self._expired_ids(conn, self.now(), None))
            if compact_vectors and has_vector_table(conn):
                dim = conn.execute(
                    "SELECT value FROM cache_info WHERE key = 'embedding_dim'"
                ).fetchone()
                rebuilt = self._rebuild_vector_table(conn, int(dim[0]))
        with self.db.reading() as conn:
            conn.execute("VACUUM")  # outside any transaction, as SQLite requires
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return before, self.file_bytes(), rebuilt
