"""Read and admin SQL for the ``semcache`` command: listing, bulk deletes, export
iteration, imports, file facts and health checks.

Like ``store.py`` this module is SQL only: it knows nothing about embedders,
thresholds or output formats. ``Store`` keeps the cache's hot path (lookups,
upserts, counters); ``Admin`` holds what operators need and the hot path does
not. Every multi-row write keeps the invariant of ``store.py``: an entry row and
its vector row are written and deleted in the same transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from . import vector_cells
from .db import Database, in_batches, table_exists
from .migrate import schema_version
from .store import _ENTRY_COLUMNS, VECTOR_TABLE, EntryRow, Store
from .store_lifecycle import count_inserted
from .timing import latency_figures
from .validation import FloatMatrix, FloatVector
from .vector_index import (
    CELLS_TABLE,
    EMBEDDING_TABLE,
    delete_vectors,
    delete_vectors_where,
    exact_vector_source,
    has_vector_table,
    index_incomplete,
    index_row_count,
    index_tables,
    put_vectors,
    split_namespaces,
    uniform_blobs,
    vector_layout_current,
    vector_row,
)

SortOrder = Literal["newest", "oldest", "most-hit"]

_ORDER_BY: dict[str, str] = {
    "newest": "created_at DESC, id DESC",
    "oldest": "created_at ASC, id ASC",
    "most-hit": "hit_count DESC, last_hit_at DESC, id DESC",
}


_CASEFOLD_SQL_FUNCTION = "semcache_casefold"


def _casefold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


#: ``Admin.sample_vectors`` reads this many runs of consecutive ids.
SAMPLE_RUNS = 20


@dataclass(frozen=True)
class NamespaceCells:
    """A namespace's cells: 0 cells = none yet; ``unclustered`` = its index rows
    outside any cell (None when sqlite-vec's own tables could not tell)."""

    namespace: str
    entries: int
    cells: int
    trained_on: int
    unclustered: int | None


def _unclustered_rows(conn: Any) -> dict[str, int]:
    """Index rows in each namespace's unclustered partition, from sqlite-vec's own
    ``<table>_chunks`` / ``<table>_rowids`` tables."""
    rows = conn.execute(
        f"SELECT c.partition00, count(*) FROM {VECTOR_TABLE}_rowids r "
        f"JOIN {VECTOR_TABLE}_chunks c ON c.chunk_id = r.chunk_id "
        # NULL: a row written by a process of the version before cells still running
        # after the upgrade; lookups in a namespace with cells never scan it.
        "WHERE c.partition01 = ? OR c.partition01 IS NULL GROUP BY c.partition00",
        (vector_cells.NO_CELL,),
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


@dataclass(frozen=True)
class EntryFilter:
    """Which entries an admin operation touches; every field None = no condition."""

    namespace: str | None = None
    user_id: str | None = None
    #: case-insensitive substring of the query or the response
    match: str | None = None
    #: unix seconds: only entries last written (``updated_at``) before this moment
    updated_before: float | None = None
    ids: tuple[int, ...] | None = None

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.namespace is not None:
            clauses.append("namespace = ?")
            params.append(self.namespace)
        if self.user_id is not None:
            clauses.append("user_id = ?")
            params.append(self.user_id)
        if self.match:
            clauses.append(
                f"(instr({_CASEFOLD_SQL_FUNCTION}(query), ?) > 0 "
                f"OR instr({_CASEFOLD_SQL_FUNCTION}(response), ?) > 0)"
            )
            needle = self.match.casefold()
            params.extend([needle, needle])
        if self.updated_before is not None:
            clauses.append("updated_at < ?")
            params.append(float(self.updated_before))
        if self.ids is not None:
            clauses.append(f"id IN ({','.join('?' * len(self.ids)) or 'NULL'})")
            params.extend(int(i) for i in self.ids)
        return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


@dataclass(frozen=True)
class FileFacts:
    """What ``stats`` and ``doctor`` report about the file itself."""

    schema_version: int
    application_id: int
    journal_mode: str
    page_size: int
    page_count: int
    freelist_count: int
    info: dict[str, str]
    has_vector_table: bool
    vector_table_dim: int | None  # the width in its DDL (bits are rounded up to bytes)
    vector_layout_current: bool
    index_complete: bool  # vector_index.complete_index has nothing to add

    @property
    def embedding_model(self) -> str | None:
        return self.info.get("embedding_model")

    @property
    def embedding_dim(self) -> int | None:
        dim = self.info.get("embedding_dim")
        return None if dim is None else int(dim)


@dataclass(frozen=True)
class ImportRow:
    """One entry to write as it was exported (times are unix seconds)."""

    namespace: str
    user_id: str
    context_key: str
    query: str
    query_hash: str
    response: str
    created_at: float
    updated_at: float
    version: int
    hit_count: int
    last_hit_at: float | None
    metadata: dict[str, Any]
    preferred_id: int | None = None
    #: the entry's TTL in seconds and when it expires (unix seconds); None = never
    ttl: float | None = None
    expires_at: float | None = None


@dataclass(frozen=True)
class ExistingEntry:
    id: int
    response: str
    metadata: dict[str, Any]


class Admin:
    """Admin SQL over one cache file (see module docstring)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.store = Store(db)

    # -- file facts --------------------------------------------------------------

    def facts(self) -> FileFacts:
        with self.db.reading() as conn:
            pragma = {
                name: conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("application_id", "journal_mode", "page_size", "page_count")
            }
            freelist = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            info = {str(k): str(v) for k, v in conn.execute("SELECT key, value FROM cache_info")}
            row = conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (VECTOR_TABLE,)
            ).fetchone()
            dim_match = re.search(r"(?:float|bit)\[(\d+)\]", str(row[0])) if row else None
            return FileFacts(
                schema_version=schema_version(conn),
                application_id=int(pragma["application_id"]),
                journal_mode=str(pragma["journal_mode"]).lower(),
                page_size=int(pragma["page_size"]),
                page_count=int(pragma["page_count"]),
                freelist_count=freelist,
                info=info,
                has_vector_table=row is not None,
                vector_table_dim=int(dim_match.group(1)) if dim_match else None,
                vector_layout_current=vector_layout_current(conn),
                index_complete=not index_incomplete(conn),
            )

    def namespace_counters(self) -> dict[str, tuple[int, int, int]]:
        return self.store.namespace_counters()

    def time_saved(self) -> dict[str, float | None] | None:
        """Seconds of wall time hits saved per namespace (``stats()``'s ``seconds_saved``:
        hits x (mean LLM latency - mean hit latency)); None for a namespace whose cache
        never timed an LLM call, and None overall for a file older than the latency
        counters (migration 0004)."""
        with self.db.reading() as conn:
            columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(namespace_stats)")}
        if "llm_seconds" not in columns:
            return None
        return {
            name: latency_figures(sums)["seconds_saved"] if sums.llm_calls else None
            for name, sums in self.store.latency_counters().items()
        }

    # -- listing -----------------------------------------------------------------

    @contextmanager
    def _filtered(self, flt: EntryFilter) -> Iterator[tuple[Any, str, list[Any]]]:
        with self.db.reading() as conn:
            conn.create_function(_CASEFOLD_SQL_FUNCTION, 1, _casefold, deterministic=True)
            where, params = flt.where()
            yield conn, where, params

    def list_entries(
        self, flt: EntryFilter, sort: SortOrder = "newest", limit: int = 50, offset: int = 0
    ) -> list[EntryRow]:
        order = _ORDER_BY[sort]
        with self._filtered(flt) as (conn, where, params):
            rows = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries {where} ORDER BY {order} LIMIT ? OFFSET ?",
                (*params, max(0, int(limit)), max(0, int(offset))),
            ).fetchall()
        return [EntryRow.from_row(r) for r in rows]

    def count(self, flt: EntryFilter) -> int:
        with self._filtered(flt) as (conn, where, params):
            return int(conn.execute(f"SELECT count(*) FROM entries {where}", params).fetchone()[0])

    def ttls(self, ids: Sequence[int]) -> dict[int, float | None]:
        """The TTL in seconds (None = never expires) of these entries."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self.db.reading() as conn:
            columns = {str(r[1]) for r in conn.execute("PRAGMA table_info(entries)")}
            if "ttl" not in columns:  # a file of the first schema: no TTLs yet
                return {}
            rows = conn.execute(
                f"SELECT id, ttl FROM entries WHERE id IN ({marks})", [int(i) for i in ids]
            ).fetchall()
        return {int(r[0]): None if r[1] is None else float(r[1]) for r in rows}

    def expired_count(self, now: float, namespace: str | None = None) -> int:
        """Entries expired at ``now`` (of one namespace, or all): what a purge would delete."""
        sql = "SELECT count(*) FROM entries WHERE expires_at <= ?"
        params: list[Any] = [float(now)]
        if namespace is not None:
            sql += " AND namespace = ?"
            params.append(namespace)
        with self.db.reading() as conn:
            return int(conn.execute(sql, params).fetchone()[0])

    def namespaces(self) -> list[str]:
        """Every namespace holding entries or lifecycle overrides, sorted."""
        with self.db.reading() as conn:
            configured = table_exists(conn, "namespace_config")
            union = " UNION SELECT namespace FROM namespace_config" if configured else ""
            rows = conn.execute(f"SELECT namespace FROM entries{union} ORDER BY 1").fetchall()
        return [str(r[0]) for r in rows]

    def existing_ids(self, ids: Sequence[int]) -> set[int]:
        return {row.id for row in self.list_entries(EntryFilter(ids=tuple(ids)), limit=len(ids))}

    def iter_entries(self, flt: EntryFilter, batch: int = 500) -> Iterator[EntryRow]:
        """Every matching entry by ascending id, read in pages (keyset, not OFFSET)."""
        last = 0
        while True:
            with self._filtered(flt) as (conn, where, params):
                joiner = "AND" if where else "WHERE"
                rows = conn.execute(
                    f"SELECT {_ENTRY_COLUMNS} FROM entries {where} {joiner} id > ? "
                    "ORDER BY id LIMIT ?",
                    (*params, last, batch),
                ).fetchall()
            if not rows:
                return
            yield from (EntryRow.from_row(r) for r in rows)
            last = int(rows[-1][0])

    def vectors(self, ids: Sequence[int]) -> dict[int, bytes]:
        """The raw float32 vector blobs of these entries (missing ones are left out)."""
        if not ids:
            return {}
        with self.db.reading() as conn:
            source = exact_vector_source(conn)
            if source is None:
                return {}
            table, key = source
            rows = []
            for part, marks in in_batches([int(i) for i in ids]):
                rows.extend(
                    conn.execute(
                        f"SELECT {key}, embedding FROM {table} WHERE {key} IN ({marks})", part
                    )
                )
        return {int(r[0]): bytes(r[1]) for r in rows}

    def sample_vectors(self, count: int, seed: int = 0) -> FloatMatrix:
        """Up to ``count`` stored exact vectors: runs of consecutive ids from
        :data:`SAMPLE_RUNS` random starting points (a sample without reading the whole
        table, whether ids are dense or thinned by deletes). Blobs of another size than
        the most common one are left out."""
        rng = np.random.default_rng(seed)
        found: dict[int, bytes] = {}
        with self.db.reading() as conn:
            source = exact_vector_source(conn)
            if source is None:
                return np.empty((0, 0), dtype=np.float32)
            table, key = source
            low, high = conn.execute(f"SELECT min({key}), max({key}) FROM {table}").fetchone()
            if low is None:
                return np.empty((0, 0), dtype=np.float32)
            run = max(1, count // SAMPLE_RUNS)
            for start in sorted(rng.integers(int(low), int(high) + 1, size=SAMPLE_RUNS)):
                rows = conn.execute(
                    f"SELECT {key}, embedding FROM {table} WHERE {key} >= ? ORDER BY {key} LIMIT ?",
                    (int(start), run),
                ).fetchall()
                found.update((int(r[0]), bytes(r[1])) for r in rows)  # runs may overlap
        matrix: FloatMatrix = uniform_blobs(list(found.values()))[1]
        return matrix

    def namespace_cells(self) -> list[NamespaceCells]:
        """The namespaces that have cells, or are large enough to (vector_cells.py)."""
        with self.db.reading() as conn:
            if not vector_layout_current(conn):
                return []
            trained = {
                str(r[0]): (int(r[1]), int(r[2]))
                for r in conn.execute(f"SELECT namespace, cells, trained_on FROM {CELLS_TABLE}")
            }
            counts = {
                str(r[0]): int(r[1])
                for r in conn.execute("SELECT namespace, entries FROM entry_counts")
            }
            unclustered: dict[str, int] | None
            try:
                unclustered = _unclustered_rows(conn)
            except self.db.driver.OperationalError:  # a sqlite-vec laid out otherwise
                unclustered = None
        names = sorted(
            set(trained) | {n for n, c in counts.items() if c >= vector_cells.CLUSTER_AT}
        )
        return [
            NamespaceCells(
                n,
                counts.get(n, 0),
                *trained.get(n, (0, 0)),
                None if unclustered is None else unclustered.get(n, 0),
            )
            for n in names
        ]

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """A read transaction: everything read inside sees one consistent state of the file."""
        with self.db.reading() as conn:
            conn.execute("BEGIN DEFERRED")
            try:
                yield
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    # -- deletes -----------------------------------------------------------------

    def delete(self, flt: EntryFilter) -> int:
        """Delete matching entries and their vectors in one transaction; return how many."""
        with self.db.transaction() as conn:
            conn.create_function(_CASEFOLD_SQL_FUNCTION, 1, _casefold, deterministic=True)
            where, params = flt.where()
            if has_vector_table(conn):
                delete_vectors_where(conn, where, params)
            return int(conn.execute(f"DELETE FROM entries {where}", params).rowcount)

    # -- bulk writes -------------------------------------------------------------

    def existing(
        self, namespace: str, user_id: str, context_key: str, query_hashes: Sequence[str]
    ) -> dict[str, ExistingEntry]:
        """query_hash -> the unexpired entry stored under exactly this namespace, user and
        context (the one ``Store.upsert_many`` would replace; an expired one counts as
        absent there too: it is deleted and the entry stored afresh)."""
        if not query_hashes:
            return {}
        marks = ",".join("?" * len(query_hashes))
        with self.db.reading() as conn:
            rows = conn.execute(
                "SELECT query_hash, id, response, metadata FROM entries WHERE namespace = ? "
                f"AND user_id = ? AND context_key = ? AND query_hash IN ({marks}) "
                "AND (expires_at IS NULL OR expires_at > ?) ORDER BY id",
                (namespace, user_id, context_key, *query_hashes, self.store.now()),
            ).fetchall()
        return {str(r[0]): ExistingEntry(int(r[1]), str(r[2]), json.loads(r[3])) for r in rows}

    def import_rows(
        self,
        conn: Any,
        rows: Sequence[ImportRow],
        vectors: Sequence[FloatVector],
        model_id: str,
    ) -> tuple[int, int]:
        """Write exported entries as they were (times, version, hit count, metadata) inside
        the caller's open transaction ``conn``. An entry with the same namespace, user,
        context and normalised query as a stored one replaces it; a new entry keeps its
        exported id when that id is free. Returns (added, replaced)."""
        added = replaced = 0
        for row, vector in zip(rows, vectors, strict=True):
            values = (
                row.response,
                row.created_at,
                row.updated_at,
                model_id,
                int(vector.shape[0]),
                row.version,
                row.hit_count,
                row.last_hit_at,
                json.dumps(row.metadata),
                row.ttl,
                row.expires_at,
            )
            found = conn.execute(
                "SELECT id FROM entries WHERE namespace = ? AND user_id = ? AND context_key = ? "
                "AND query_hash = ? ORDER BY id DESC LIMIT 1",
                (row.namespace, row.user_id, row.context_key, row.query_hash),
            ).fetchone()
            if found is not None:
                entry_id = int(found[0])
                conn.execute(
                    "UPDATE entries SET response = ?, created_at = ?, updated_at = ?, "
                    "embedding_model = ?, embedding_dim = ?, version = ?, hit_count = ?, "
                    "last_hit_at = ?, metadata = ?, ttl = ?, expires_at = ? WHERE id = ?",
                    (*values, entry_id),
                )
                delete_vectors(conn, [entry_id])
                replaced += 1
            else:
                entry_id_param = row.preferred_id if self._id_free(conn, row.preferred_id) else None
                cursor = conn.execute(
                    "INSERT INTO entries (id, namespace, user_id, context_key, query, query_hash, "
                    "response, created_at, updated_at, embedding_model, embedding_dim, version, "
                    "hit_count, last_hit_at, metadata, ttl, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        entry_id_param,
                        row.namespace,
                        row.user_id,
                        row.context_key,
                        row.query,
                        row.query_hash,
                        *values,
                    ),
                )
                entry_id = int(cursor.lastrowid)
                count_inserted(conn, [row.namespace])
                added += 1
            # The index row carries the entry's expiry (TTL filter inside the KNN).
            put_vectors(
                conn,
                [
                    vector_row(
                        entry_id,
                        row.namespace,
                        row.user_id,
                        row.context_key,
                        row.expires_at,
                        vector,
                    )
                ],
            )
        return added, replaced

    @staticmethod
    def _id_free(conn: Any, entry_id: int | None) -> bool:
        if entry_id is None or entry_id < 1:
            return False
        # Ids are never reused: only an id above every id this file ever gave out is
        # free (a fresh file keeps the exported ids), and no vector row may hold it.
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'entries'").fetchone()
        if seq is not None and entry_id <= int(seq[0]):
            return False
        for sql in (
            "SELECT 1 FROM entries WHERE id = ?",
            f"SELECT 1 FROM {EMBEDDING_TABLE} WHERE id = ?",
            *(f"SELECT 1 FROM {table} WHERE rowid = ?" for table in index_tables(conn)),
        ):
            if conn.execute(sql, (entry_id,)).fetchone() is not None:
                return False
        return True

    # -- health ------------------------------------------------------------------

    def integrity_problems(self, limit: int = 20) -> list[str]:
        """``PRAGMA integrity_check`` messages (empty list: the file is sound)."""
        with self.db.reading() as conn:
            rows = conn.execute(f"PRAGMA integrity_check({int(limit)})").fetchall()
        messages = [str(r[0]) for r in rows]
        return [] if messages == ["ok"] else messages

    def orphan_counts(self) -> tuple[int, int]:
        return self.store.orphan_counts()

    def miscounted_namespaces(self) -> list[tuple[str, int, int]]:
        """(namespace, counted, stored) where ``entry_counts``, which the limits are
        checked against, disagrees with the entries (rows written around the library)."""
        with self.db.reading() as conn:
            if not table_exists(conn, "entry_counts"):
                return []  # a file from before the limits (migration 0002)
            rows = conn.execute(
                "SELECT namespace, sum(counted), sum(stored) FROM ("
                "SELECT namespace, entries AS counted, 0 AS stored FROM entry_counts "
                "UNION ALL SELECT namespace, 0, count(*) FROM entries GROUP BY namespace"
                ") GROUP BY namespace HAVING sum(counted) != sum(stored) ORDER BY namespace"
            ).fetchall()
        return [(str(n), int(c), int(e)) for n, c, e in rows]

    def split_namespaces(self) -> list[tuple[str, int]]:
        """(namespace, index rows lookups never find) of namespaces whose rows are in
        both vec0 tables (``vector_index.split_namespaces``)."""
        with self.db.reading() as conn:
            return split_namespaces(conn) if vector_layout_current(conn) else []

    def vector_count(self) -> int:
        with self.db.reading() as conn:
            if not has_vector_table(conn):
                return 0
            return index_row_count(conn)

    def model_mismatches(self, model_id: str, dim: int) -> int:
        """Entries recorded with another embedding model or dimension than the file's."""
        with self.db.reading() as conn:
            return int(
                conn.execute(
                    "SELECT count(*) FROM entries WHERE embedding_model != ? OR embedding_dim != ?",
                    (model_id, dim),
                ).fetchone()[0]
            )
