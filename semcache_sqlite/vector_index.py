"""Where a cache file keeps its vectors, and how the nearest entries are found.

Two tables, always written and deleted together (in the caller's transaction):

- ``entry_embeddings`` (plain): ``id -> embedding``, the exact float32 vector of
  every entry (little-endian, ``embedding_dim`` values). Readable with the stock
  sqlite3 shell; re-scoring, export, re-embedding and rebuilding read it.
- ``entry_vectors`` (sqlite-vec ``vec0``): the same vectors quantized to one bit
  per coordinate (its sign), partitioned by namespace and cell, with the scope
  and expiry as metadata columns, so the KNN runs inside SQLite as a Hamming
  scan of one namespace, or of a few cells of it.

Namespaces of fewer than :data:`PROMOTE_AT` entries keep their index rows in a
second vec0 table of the same columns, ``entry_vectors_small``, whose chunks hold
:data:`SMALL_CHUNK_ROWS` rows instead of 1,024: every partition pre-allocates a
whole chunk, and over many small namespaces those chunks were most of the file. A
namespace's rows are in one table: the large one if it has a chunk there, else the
small one (:func:`index_table`); the write that takes a namespace to
:data:`PROMOTE_AT` entries moves its rows to the large table (``promote_namespace``).

A third, ``vector_cells``, holds the centroids of the namespaces large enough to
have cells (see ``vector_cells.py``): in such a namespace an entry sits in the
partition of its nearest centroid, and a lookup scans only the cells nearest
the query (all of them to find the competitors of a servable match).

A lookup is a coarse scan plus an exact re-score: the Hamming KNN returns the
``candidates`` entries of the scope whose bits are nearest, then their exact
vectors are read from ``entry_embeddings`` and ranked by true cosine
similarity. For the near-duplicates a cache serves, the true nearest entry is
among the 16 Hamming-nearest: of the QQP probes whose nearest entry is at
similarity >= 0.8, all 519 at 100k entries and all 529 at 1M; >= 0.75, all but
one of 625 at 1M (with 8 candidates, 2 of 529 at 1M are missed). The
performance suite (benchmarks/perf_search.py) reports this decision fidelity
against exact search on every run.

Why this layout (measured with sqlite-vec 0.1.9, 384-d, on the build machine):

- A float32 vec0 scan costs ~55 ms at 100k entries and ~525 ms at 1M, more
  than numpy in RAM; the bit scan ~2.3 ms / ~26 ms.
- The cost of a vec0 KNN grows with k (~0.09 ms per extra k at 100k) and with
  every metadata filter (~0.4 ms each at 100k), so k stays small and a filter
  that cannot exclude anything (no private entries in the namespace, no other
  context, nothing that expires) is left out of the scan. The exact re-score
  checks namespace, context, user and expiry again from ``entries`` anyway,
  so leaving a filter out can cost recall only, never a wrong answer.
- Namespace as the partition key: a lookup scans only its namespace's chunks
  (0.2 ms instead of 3 ms at 100k entries over 1,000 namespaces). Each
  namespace pre-allocates one chunk (1,024 rows, ~85 KiB at 384-d; 32 rows, ~3 KiB,
  in the small table). sqlite-vec finds a partition's chunks with a query on a
  table it leaves unindexed: the library indexes it (:data:`PARTITION_INDEX`).
- Cell as the second partition key: a lookup in a namespace of 100k entries
  scans 8 of its 32 cells, ~2 ms instead of ~4.5 ms (vector_cells.py). sqlite-vec
  answers ``cell IN (...)`` with one KNN per value anyway, so each cell is its own
  query and the candidates are merged here. A namespace with cells
  pre-allocates a chunk per cell (~2.7 MB for 32) and a query costs per chunk,
  however full, hence cells only from 65,536 entries (2,048 per cell).
- Context and user are 64-bit hashes in INTEGER metadata columns: vec0 keeps
  only a 12-byte prefix of a TEXT value in its chunk and looks longer values
  (context keys are 32 characters) up row by row.
- Reading vectors back out of a vec0 table is slow (0.1-0.3 ms per row), so the
  exact vectors live in the plain table, which costs ~1.6 KB per 384-d entry.

vec0 facts this relies on: metadata columns cannot be NULL (``expires_at`` uses
:data:`NEVER_EXPIRES` for "never"); partition keys cannot be UPDATEd;
``ALTER TABLE ... RENAME`` breaks vec0 (a new layout or dimension is a DROP +
CREATE under the same name, refilled from ``entry_embeddings``).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from . import vector_cells
from .db import in_batches
from .errors import InvalidInputError
from .validation import FloatVector

Matrix = np.ndarray[Any, Any]

logger = logging.getLogger("semcache_sqlite")

VECTOR_TABLE = "entry_vectors"
EMBEDDING_TABLE = "entry_embeddings"

#: sqlite-vec caps k.
MAX_K = 4096

#: ``expires_at`` in the vec0 table for entries that never expire (vec0 rejects
#: NULL): about the year 3e10, far beyond any clock.
NEVER_EXPIRES = 1e18

#: Hamming-nearest candidates re-scored per lookup, at least; a search for k
#: results takes ``CANDIDATES_PER_RESULT * k`` if that is more.
DEFAULT_CANDIDATES = 16
CANDIDATES_PER_RESULT = 4

#: When every candidate ties with the first, up to this many times as many entries
#: at that distance are re-scored before the lookup falls back to an exact scan.
TIE_WIDENING = 4


def check_candidates(value: object) -> int:
    """``search_candidates``: a whole number from 1 to sqlite-vec's k limit."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_K:
        raise InvalidInputError(f"search_candidates must be an int in [1, {MAX_K}], got {value!r}")
    return value


def check_cells(value: object) -> int:
    """``search_cells``: a whole number from 1 up (more than a namespace has: all of them)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_K:
        raise InvalidInputError(f"search_cells must be an int in [1, {MAX_K}], got {value!r}")
    return value


#: Rows read per batch by the exact scan and the rebuild.
_BATCH = 4096


CELLS_TABLE = "vector_cells"


#: Rows per vec0 chunk (sqlite-vec's default) in the table of the large namespaces.
#: A query costs per chunk, however full: measured with the partition index below
#: (interleaved, the suite's QQP files), lookups at 100k entries in one namespace were
#: 7-12% slower with 256-row chunks, and 9% at 10k, than with 1,024.
CHUNK_ROWS = 1024

#: The table of the namespaces below PROMOTE_AT entries, and its chunk size. Every
#: partition pre-allocates one chunk: at 1,024 rows ~85 KiB, so 1,000 small
#: namespaces took ~8.7 KB of index per entry over 10k entries and ~920 B over 100k;
#: with 32-row chunks for those below 512 entries, ~370 and ~130 B, and their KNN
#: is up to 3x faster (a chunk of 32 rows reads less than one of 1,024 holding as
#: many): benchmarks/chunk_tiers.py. At 512 entries (16 small chunks) both tables
#: cost about the same per query.
SMALL_VECTOR_TABLE = f"{VECTOR_TABLE}_small"
SMALL_CHUNK_ROWS = 32
#: A namespace's rows move to the large table when it reaches this many entries.
PROMOTE_AT = 512

#: sqlite-vec 0.1.9 finds a partition's chunks (every KNN query, every insert) with
#: ``... FROM <table>_chunks WHERE partition00 = ? AND partition01 = ?`` on a table
#: it does not index: a scan of every chunk of every partition. This index turns
#: that into a lookup. Measured (interleaved, the suite's QQP files at 100k entries):
#: search_vector p50 0.77x over 1,000 namespaces, 0.88x in one namespace of cells.
_CHUNKS_TABLE = f"{VECTOR_TABLE}_chunks"  # sqlite-vec's shadow table of the chunks
PARTITION_INDEX = f"{_CHUNKS_TABLE}_partition"


def _partition_index(table: str) -> str:
    return f"{table}_chunks_partition"


def vector_table_ddl(dim: int) -> str:
    """The vec0 index of the large namespaces: one bit per coordinate, one partition
    per namespace and cell."""
    return vec0_ddl(VECTOR_TABLE, dim, CHUNK_ROWS)


def small_table_ddl(dim: int) -> str:
    """The vec0 index of the small namespaces: the same columns, smaller chunks."""
    return vec0_ddl(SMALL_VECTOR_TABLE, dim, SMALL_CHUNK_ROWS)


def vec0_ddl(table: str, dim: int, chunk_rows: int) -> str:
    """The library's vec0 columns under ``table`` with ``chunk_rows``-row chunks."""
    return (
        f"CREATE VIRTUAL TABLE {table} USING vec0("
        "namespace text partition key, cell integer partition key, "
        f"embedding bit[{bit_width(dim)}], context integer, owner integer, expires_at float, "
        f"chunk_size={chunk_rows})"
    )


def create_vector_table(conn: Any, dim: int) -> None:
    """CREATE the vec0 index (both tables) and the index of their partitions (caller's
    transaction)."""
    conn.execute(vector_table_ddl(dim))
    conn.execute(small_table_ddl(dim))
    complete_index(conn)


def complete_index(conn: Any) -> bool:
    """Add what a vector index of this layout written by an earlier version lacks: the
    table of the small namespaces (its namespaces stay in the large table until a
    rebuild) and the index of each table's chunks by partition. True if anything was
    added. Best effort for the partition index: it is on sqlite-vec's shadow table, so
    a version of it with another one leaves the lookups as they were."""
    if not index_incomplete(conn):
        return False
    if not has_small_table(conn):
        conn.execute(small_table_ddl(_bits_of(conn)))  # the large table's width
    for table in index_tables(conn):
        if _partitions_unindexed(conn, table):
            conn.execute(
                f"CREATE INDEX {_partition_index(table)} "
                f"ON {table}_chunks(partition00, partition01)"
            )
    return True


def index_incomplete(conn: Any) -> bool:
    """The vector index lacks the small namespaces' table or a partition index that
    ``complete_index`` would add."""
    if not has_vector_table(conn):
        return False
    if not has_small_table(conn):
        return True
    return any(_partitions_unindexed(conn, table) for table in index_tables(conn))


def _partitions_unindexed(conn: Any, table: str) -> bool:
    """The table's chunks could be indexed by partition and are not."""
    indexed = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
        (_partition_index(table),),
    ).fetchone()
    if indexed is not None:
        return False
    columns = {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table}_chunks)")}
    return {"partition00", "partition01"} <= columns


def _bits_of(conn: Any) -> int:
    """The bit width of the large table's vectors (from its DDL)."""
    sql = _table_sql(conn, VECTOR_TABLE) or ""
    start = sql.index("bit[") + len("bit[")
    return int(sql[start : sql.index("]", start)])


def bit_width(dim: int) -> int:
    """vec0 bit vectors come in whole bytes: the dimension rounded up to 8."""
    return (int(dim) + 7) // 8 * 8


def quantize(vectors: np.ndarray[Any, Any]) -> list[bytes]:
    """One bit per coordinate, set where it is > 0, least significant bit first
    (the layout of sqlite-vec's ``vec_quantize_binary``); padded with 0 bits."""
    matrix = np.atleast_2d(np.asarray(vectors))
    packed = np.packbits(matrix > 0, axis=1, bitorder="little")
    return [row.tobytes() for row in packed]


@lru_cache(maxsize=4096)  # a bulk load repeats the same few users and contexts
def scope_hash(value: str) -> int:
    """A context key or user id as a signed 64-bit integer; '' (none / shared) is 0."""
    if not value:
        return 0
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


def vec_expiry(expires_at: float | None) -> float:
    """``entries.expires_at`` as the vec0 column holds it (a float, never NULL)."""
    return NEVER_EXPIRES if expires_at is None else float(expires_at)


def _table_sql(conn: Any, name: str) -> str | None:
    row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return None if row is None else str(row[0])


def has_vector_table(conn: Any) -> bool:
    return _table_sql(conn, VECTOR_TABLE) is not None


def has_small_table(conn: Any) -> bool:
    return _table_sql(conn, SMALL_VECTOR_TABLE) is not None


def index_tables(conn: Any) -> list[str]:
    """The vec0 tables the file has: the large one, and the small one unless the file
    was written by a version before it (opened read-only since)."""
    return [VECTOR_TABLE, SMALL_VECTOR_TABLE] if has_small_table(conn) else [VECTOR_TABLE]


def index_table(conn: Any, namespace: str) -> str:
    """The vec0 table holding a namespace's index rows: the large one if it has a chunk
    of the namespace (sqlite-vec drops a chunk once it is empty) or cells (an emptied
    namespace keeps its centroids: its next rows go to their cells, in the large
    table), else the small one (the large one in a file without it)."""
    large, small = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM {_CHUNKS_TABLE} WHERE partition00 = ?) "
        f"OR EXISTS (SELECT 1 FROM {CELLS_TABLE} WHERE namespace = ? AND cells > 0), "
        "EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?)",
        (namespace, namespace, SMALL_VECTOR_TABLE),
    ).fetchone()
    return SMALL_VECTOR_TABLE if small and not large else VECTOR_TABLE


def split_namespaces(conn: Any) -> list[tuple[str, int]]:
    """(namespace, its rows in the small table) of the namespaces in the large one (rows
    there, or cells: ``index_table``): lookups scan the large table only, so those rows
    are never found. Only a hand edit of the index (or a bug: the version before
    ``index_table`` counted cells put an emptied namespace's new rows there) makes
    one; a rebuild mends it."""
    if not has_small_table(conn):
        return []
    rows = conn.execute(
        f"SELECT namespace, count(*) FROM {SMALL_VECTOR_TABLE} WHERE namespace IN "
        f"(SELECT DISTINCT partition00 FROM {_CHUNKS_TABLE}) OR namespace IN "
        f"(SELECT namespace FROM {CELLS_TABLE} WHERE cells > 0) GROUP BY namespace ORDER BY 1"
    ).fetchall()
    return [(str(n), int(c)) for n, c in rows]


def index_row_count(conn: Any) -> int:
    """Index rows over both vec0 tables."""
    return sum(
        int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        for table in index_tables(conn)
    )


def vector_layout_current(conn: Any) -> bool:
    """The vec0 index exists with this layout (bits, namespace and cell partitions)
    and the exact vectors have their table."""
    sql = _table_sql(conn, VECTOR_TABLE)
    return (
        sql is not None
        and "bit[" in sql
        and "cell integer partition key" in sql
        and _table_sql(conn, EMBEDDING_TABLE) is not None
    )


def index_up_to_date(conn: Any) -> bool:
    """No vector index yet, or one of this version's layout, complete: nothing for an
    upgrade to do."""
    if not has_vector_table(conn):
        return True
    return vector_layout_current(conn) and not index_incomplete(conn)


def has_float_index(conn: Any) -> bool:
    """The vec0 table is of a layout before migration 0005: it holds the float32
    vectors themselves (there is no ``entry_embeddings`` content yet)."""
    sql = _table_sql(conn, VECTOR_TABLE)
    return sql is not None and "float[" in sql


def exact_vector_source(conn: Any) -> tuple[str, str] | None:
    """(table, id column) holding the exact float32 vectors: ``entry_embeddings``, or
    the vec0 table itself in a file of an older layout not upgraded yet (read-only
    inspection); None when the file has no vectors yet."""
    if vector_layout_current(conn):
        return EMBEDDING_TABLE, "id"
    if has_float_index(conn):
        return VECTOR_TABLE, "rowid"
    return None


def vector_sources(conn: Any) -> list[tuple[str, str]]:
    """(table, id column) of every source holding a vector row per entry: the index
    rows of both vec0 tables count as one (a subquery), the exact vectors another."""
    if not has_vector_table(conn):
        return []
    tables = index_tables(conn)
    index_rows = " UNION ALL ".join(f"SELECT rowid FROM {table}" for table in tables)
    source = tables[0] if len(tables) == 1 else f"({index_rows})"
    if vector_layout_current(conn):
        return [(source, "rowid"), (EMBEDDING_TABLE, "id")]
    return [(source, "rowid")]  # an older layout: the vec0 table only


@dataclass(frozen=True)
class VectorRow:
    """One entry's vector with the scope and expiry the index filters on."""

    entry_id: int
    namespace: str
    user_id: str
    context_key: str
    expires_at: float | None
    embedding: bytes  # float32, little-endian


def vector_row(
    entry_id: int,
    namespace: str,
    user_id: str,
    context_key: str,
    expires_at: float | None,
    vector: FloatVector,
) -> VectorRow:
    blob = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    return VectorRow(entry_id, namespace, user_id, context_key, expires_at, blob)


def put_vectors(conn: Any, rows: Sequence[VectorRow], *, replace: bool = False) -> None:
    """Write entries' exact vectors and their index rows (``replace``: they may exist)."""
    if not rows:
        return
    if replace:
        # vec0 supports neither INSERT OR REPLACE nor UPDATE of a partition key.
        _delete_index_rows(conn, [r.entry_id for r in rows])
    conn.executemany(
        f"INSERT OR REPLACE INTO {EMBEDDING_TABLE} (id, embedding) VALUES (?, ?)",
        [(r.entry_id, r.embedding) for r in rows],
    )
    _index(conn, rows)


def uniform_blobs(blobs: Sequence[bytes]) -> tuple[list[int], np.ndarray[Any, Any]]:
    """The positions of the blobs that have the file's vector size (the most common
    size, a whole number of float32 values) and those blobs as a float32 matrix, one
    row each. A blob of another size is damage, left out."""
    width = Counter(len(b) for b in blobs).most_common(1)[0][0] if blobs else 0
    good = [i for i, b in enumerate(blobs) if len(b) == width and width % 4 == 0]
    if not good:
        return [], np.empty((0, 0), dtype=np.float32)
    joined = b"".join(blobs[i] for i in good)
    return good, np.frombuffer(joined, dtype="<f4").reshape(len(good), -1)


def _index(conn: Any, rows: Sequence[VectorRow]) -> int:
    """Insert the index rows of these vectors, each in its namespace's table and, in a
    namespace with cells, its nearest cell; return how many were indexed. A namespace
    of the small table that has reached :data:`PROMOTE_AT` entries moves to the large
    one first (``promote_namespace``); one without cells that has reached
    :data:`~.vector_cells.CLUSTER_AT` entries gets them after (``cluster_namespace``).

    All vectors of a file have one size; a blob of another is damage: left out of
    the index (so never returned) and reported, instead of failing the whole write."""
    namespaces = {r.namespace for r in rows}
    # Each namespace's centroids read once: they place the rows and say which
    # namespaces have no cells yet.
    centroids = {n: namespace_centroids(conn, n) for n in namespaces}
    large = _large_namespaces(conn, namespaces)
    for namespace in namespaces - large:
        if counted_entries(conn, namespace) >= PROMOTE_AT:  # the entries are counted already
            promote_namespace(conn, namespace, {r.entry_id for r in rows})
            large.add(namespace)
    indexed = _insert_index_rows(conn, rows, centroids, large)
    for namespace, centres in centroids.items():
        if centres is None and counted_entries(conn, namespace) >= vector_cells.CLUSTER_AT:
            cluster_namespace(conn, namespace)
    return indexed


def _large_namespaces(conn: Any, namespaces: Iterable[str]) -> set[str]:
    """Those of the namespaces whose index rows are in the large table (index_table)."""
    return {n for n in namespaces if index_table(conn, n) == VECTOR_TABLE}


def promote_namespace(conn: Any, namespace: str, pending: Collection[int] = ()) -> int:
    """Move a namespace's index rows from the small table to the large one (vec0 cannot
    move a row between tables: DELETE + INSERT from the exact vectors), in the caller's
    transaction; ``pending``: ids of the namespace's entries not indexed yet (the
    caller's batch). Returns the rows moved (~25 us each, so ~13 ms at PROMOTE_AT).

    The ids come from ``entries``: a vec0 query for the namespace's rows
    (``WHERE namespace = ?`` without MATCH) reads every row of the small table, 268 ms
    at 48k rows."""
    if not has_small_table(conn):
        return 0
    skip = set(pending)
    ids = [i for i in _namespace_ids(conn, namespace) if i not in skip]
    moved = 0
    for part, _ in in_batches(ids):
        rows = vector_rows(conn, part)
        _delete_index_rows(conn, part)
        moved += _insert_index_rows(conn, rows, large={namespace})
    return moved


def _insert_index_rows(
    conn: Any,
    rows: Sequence[VectorRow],
    centroids: dict[str, Matrix | None] | None = None,
    large: set[str] | None = None,
) -> int:
    """Insert index rows (no promotion, no clustering); ``centroids``: of the rows'
    namespaces, where the caller already has them; ``large``: the namespaces whose rows
    go to the large table (default: those already there, ``index_table``; a caller that
    passes them has the small table: the rest go there)."""
    good, matrix = uniform_blobs([r.embedding for r in rows])
    if len(good) < len(rows):
        kept = set(good)
        damaged = [r.entry_id for i, r in enumerate(rows) if i not in kept]
        logger.warning("entries %s have unusable vectors (corrupt file?)", damaged)
        rows = [rows[i] for i in good]
        if not rows:
            return 0
    known = dict(centroids or {})
    cells = [vector_cells.NO_CELL] * len(rows)
    for namespace in {r.namespace for r in rows}:
        if namespace not in known:
            known[namespace] = namespace_centroids(conn, namespace)
        centres = known[namespace]
        if centres is None or centres.shape[1] != matrix.shape[1]:
            continue
        where = [i for i, r in enumerate(rows) if r.namespace == namespace]
        for i, cell in zip(where, vector_cells.nearest_cells(centres, matrix[where]), strict=True):
            cells[i] = cell
    values = [
        (
            r.entry_id,
            r.namespace,
            cell,
            bits,
            scope_hash(r.context_key),
            scope_hash(r.user_id),
            vec_expiry(r.expires_at),
        )
        for r, cell, bits in zip(rows, cells, quantize(matrix), strict=True)
    ]
    # Partition by partition: vec0 finds a partition's chunk again for every row
    # that follows one of another partition (inserts ~25% faster in 64 cells).
    values.sort(key=lambda v: (v[1], v[2]))
    if large is None:  # without the small table (a file not upgraded yet): every namespace
        large = _large_namespaces(conn, {r.namespace for r in rows})
    by_table: dict[str, list[tuple[Any, ...]]] = {VECTOR_TABLE: [], SMALL_VECTOR_TABLE: []}
    for v in values:
        by_table[VECTOR_TABLE if v[1] in large else SMALL_VECTOR_TABLE].append(v)
    for table, chosen in by_table.items():
        if chosen:
            conn.executemany(
                f"INSERT INTO {table} "
                "(rowid, namespace, cell, embedding, context, owner, expires_at) "
                "VALUES (?, ?, ?, vec_bit(?), ?, ?, ?)",
                chosen,
            )
    return len(rows)


def counted_entries(conn: Any, namespace: str | None = None) -> int:
    """Entries of ``namespace`` (None: of the file) as ``entry_counts`` has them: one
    lookup instead of count(*), kept by the library's writes (rows written around it,
    with the sqlite3 shell, are counted again by vacuum)."""
    if namespace is None:
        row = conn.execute("SELECT coalesce(sum(entries), 0) FROM entry_counts").fetchone()
    else:
        row = conn.execute(
            "SELECT coalesce(sum(entries), 0) FROM entry_counts WHERE namespace = ?",
            (namespace,),
        ).fetchone()
    return int(row[0])


# -- cells (see vector_cells.py) ---------------------------------------------------


def namespace_centroids(conn: Any, namespace: str) -> Matrix | None:
    """The centroids of a namespace's cells, one unit row each; None if it has none."""
    row = conn.execute(
        f"SELECT centroids, cells FROM {CELLS_TABLE} WHERE namespace = ?", (namespace,)
    ).fetchone()
    if row is None or not row[1]:
        return None
    blob = bytes(row[0])
    return vector_cells.centroids_from_blob(blob, len(blob) // 4 // int(row[1]))


def lookup_cells(
    conn: Any, namespace: str, vector: FloatVector, count: int
) -> tuple[list[int], list[int]] | None:
    """The partitions of a namespace a lookup of ``vector`` scans first: the ``count``
    cells nearest it, and the unclustered partition (empty once a namespace has
    cells; a query of an empty partition costs ~17 us, and an entry left there by a
    damaged file stays findable); then the namespace's other cells. None when the
    namespace has no cells (a lookup scans all of it at once)."""
    centroids = namespace_centroids(conn, namespace)
    if centroids is None or centroids.shape[1] != len(vector):
        return None
    first = [*vector_cells.cells_to_probe(centroids, vector, count), vector_cells.NO_CELL]
    return first, [c for c in range(len(centroids)) if c not in first]


def _namespace_ids(conn: Any, namespace: str) -> list[int]:
    return [
        int(r[0]) for r in conn.execute("SELECT id FROM entries WHERE namespace = ?", (namespace,))
    ]


def train_namespace_cells(conn: Any, namespace: str, ids: Sequence[int]) -> Matrix | None:
    """Train and store the centroids of a namespace from (a sample of) its entries'
    exact vectors; None (and nothing stored) if none of them has a usable vector."""
    seed = int.from_bytes(
        hashlib.blake2b(namespace.encode("utf-8"), digest_size=8).digest(), "little"
    )
    rng = np.random.default_rng(seed)
    sample = list(ids)
    if len(sample) > vector_cells.TRAINING_SAMPLE:
        picked = rng.choice(len(sample), vector_cells.TRAINING_SAMPLE, replace=False)
        sample = [sample[int(i)] for i in np.sort(picked)]
    _, matrix = uniform_blobs([r.embedding for r in vector_rows(conn, sample)])
    if not len(matrix):
        return None
    centroids = vector_cells.train_centroids(matrix, vector_cells.CELLS, seed)
    conn.execute(
        f"INSERT OR REPLACE INTO {CELLS_TABLE} (namespace, cells, trained_on, centroids) "
        "VALUES (?, ?, ?, ?)",
        (namespace, len(centroids), len(ids), vector_cells.centroids_blob(centroids)),
    )
    return centroids


def cluster_namespace(conn: Any, namespace: str) -> int:
    """Give a namespace cells: train its centroids, then move each of its index rows
    into its nearest cell (vec0 cannot UPDATE a partition key: DELETE + INSERT), in
    the caller's transaction. Returns the rows moved (~25 us each)."""
    ids = _namespace_ids(conn, namespace)
    centroids = train_namespace_cells(conn, namespace, ids)
    if centroids is None:
        return 0
    moved = 0
    for part, _ in in_batches(ids):
        rows = vector_rows(conn, part)
        _delete_index_rows(conn, [r.entry_id for r in rows])
        moved += _insert_index_rows(conn, rows, {namespace: centroids}, large={namespace})
    return moved


def delete_vectors(conn: Any, ids: Iterable[int]) -> None:
    """Delete the vectors of these entries (the entries themselves are the caller's)."""
    params = [(int(i),) for i in ids]
    if not params:
        return
    _delete_index_rows(conn, [i for (i,) in params])
    conn.executemany(f"DELETE FROM {EMBEDDING_TABLE} WHERE id = ?", params)


def _delete_index_rows(conn: Any, ids: Sequence[int]) -> None:
    # One statement per rowid: vec0 answers `rowid IN (...)` with a full scan. A rowid
    # a table does not hold is no error (the row is in the other table).
    params = [(int(i),) for i in ids]
    for table in index_tables(conn):
        conn.executemany(f"DELETE FROM {table} WHERE rowid = ?", params)


#: A delete by scope (``delete_vectors_where``) removes the index rows one rowid at a
#: time while they are fewer than 1/ROWID_DELETE_RATIO of the entries, otherwise with
#: one ``rowid IN (...)`` statement per vec0 table, which vec0 answers with a full scan.
#: Measured on the suite's 100k-entry file over 1,000 namespaces: ~37 us per rowid
#: against ~0.33 us per index row scanned plus ~13 us per row deleted (a namespace of
#: 13 entries: 0.6-1.4 ms against 33-41 ms; of 13,861: 0.51 s against 0.21-0.27 s).
ROWID_DELETE_RATIO = 64


def delete_vectors_where(conn: Any, where: str, params: Sequence[Any]) -> None:
    """Delete the vectors of the entries ``SELECT id FROM entries {where}`` finds."""
    # Rowid by rowid while found * ROWID_DELETE_RATIO < entries, i.e. found < most: asking
    # for at most `most` ids tells which, and gives the ids, in one statement.
    most = -(-counted_entries(conn) // ROWID_DELETE_RATIO)
    ids = [
        int(r[0]) for r in conn.execute(f"SELECT id FROM entries {where} LIMIT ?", [*params, most])
    ]
    if len(ids) < most:  # a few in a large file (or none): no scan
        delete_vectors(conn, ids)
        return
    sources = [(table, "rowid") for table in index_tables(conn)] + [(EMBEDDING_TABLE, "id")]
    for table, key in sources:
        conn.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT id FROM entries {where})", params)


def set_expiry(conn: Any, entry_id: int, expires_at: float | None) -> None:
    for table in index_tables(conn):  # a no-op in the table without the row
        conn.execute(
            f"UPDATE {table} SET expires_at = ? WHERE rowid = ?",
            (vec_expiry(expires_at), int(entry_id)),
        )


#: An entry's scope, expiry and exact vector: the columns of a VectorRow.
_VECTOR_ROW_SELECT = (
    "SELECT e.id, e.namespace, e.user_id, e.context_key, e.expires_at, b.embedding "
    f"FROM entries e JOIN {EMBEDDING_TABLE} b ON b.id = e.id"
)


def vector_rows(conn: Any, ids: Sequence[int]) -> list[VectorRow]:
    """The stored vectors of these entries, with their scope (entries without one are left out)."""
    rows: list[VectorRow] = []
    for part, marks in in_batches([int(i) for i in ids]):
        rows.extend(
            _row(r) for r in conn.execute(f"{_VECTOR_ROW_SELECT} WHERE e.id IN ({marks})", part)
        )
    return rows


def rebuild_index(conn: Any, dim: int) -> int:
    """DROP and CREATE the vec0 index, filled from ``entry_embeddings`` (caller's
    transaction); exact vectors without an entry are dropped. Returns rows indexed."""
    conn.execute(f"DELETE FROM {EMBEDDING_TABLE} WHERE id NOT IN (SELECT id FROM entries)")
    conn.execute(f"DROP TABLE IF EXISTS {VECTOR_TABLE}")
    conn.execute(f"DROP TABLE IF EXISTS {SMALL_VECTOR_TABLE}")
    create_vector_table(conn, dim)
    # Each namespace in the table for its size now; cells trained on the namespaces as
    # they are now, before their rows go in.
    conn.execute(f"DELETE FROM {CELLS_TABLE}")
    sizes = {
        str(n): int(c)
        for n, c in conn.execute("SELECT namespace, count(*) FROM entries GROUP BY namespace")
    }
    large = {n for n, count in sizes.items() if count >= PROMOTE_AT}
    for namespace, count in sizes.items():
        if count >= vector_cells.CLUSTER_AT:
            train_namespace_cells(conn, namespace, _namespace_ids(conn, namespace))
            large.add(namespace)  # cells live in the large table (cluster_namespace)
    # In id order: each partition fills its own chunks, whatever the order.
    done = last = 0
    while True:
        rows = conn.execute(
            f"{_VECTOR_ROW_SELECT} WHERE e.id > ? ORDER BY e.id LIMIT ?", (last, _BATCH)
        ).fetchall()
        if not rows:
            return done
        batch = [_row(r) for r in rows]
        done += _insert_index_rows(conn, batch, large=large)  # with their cells
        last = batch[-1].entry_id


def _row(r: Sequence[Any]) -> VectorRow:
    return VectorRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), r[4], bytes(r[5]))


# -- finding the nearest entries ---------------------------------------------------


def candidate_ids(
    conn: Any,
    vector: FloatVector,
    k: int,
    now: float,
    *,
    namespace: str,
    context_key: str,
    user_id: str,
    cells: Sequence[int] | None = None,
    keep: int | None = None,
    widen: bool = True,
) -> list[int] | None:
    """Ids of the ``k`` entries of one namespace and context, shared or ``user_id``'s
    own ('' = shared only), unexpired at ``now``, whose bits are nearest (Hamming),
    among the given ``cells`` of the namespace (None: all of it).

    The cells are one statement, ``cell IN (...)``: sqlite-vec 0.1.9 answers it with
    one KNN per cell (a partition each), ``k`` nearest from each, which costs ~0.3 ms
    less than as many statements over 24 cells of a 100k namespace. They are merged by
    distance here and the ``keep`` nearest (default ``k``) returned. A ``keep`` above
    ``k`` (the guards' pass over the other cells) relies on ``k`` rows from each cell:
    a sqlite-vec that returned the ``k`` nearest of them all would need one statement
    per cell again (tests/test_vector_index.py checks that it does not).
    ``widen=False``: no tie widening (below); ties are cut arbitrarily.

    When all ``k`` are as far as the first, more entries may tie than came back,
    and which ones did is arbitrary (many stored copies of one query share their
    bits). Then every entry at that distance is returned, if no query finds
    :data:`TIE_WIDENING` times ``k`` of them. Otherwise None: the bits cannot tell
    the entries apart (an embedder whose coordinates share their sign, say), and
    the caller ranks by an exact scan. The cap bounds the widening query, since
    sqlite-vec makes one pass over each chunk per row it returns.
    """
    sql = (
        f"SELECT rowid, distance FROM {index_table(conn, namespace)} "
        "WHERE embedding MATCH vec_bit(?) AND k = ? AND namespace = ?"
    )
    k = max(1, min(int(k), MAX_K))
    params: list[Any] = [quantize(vector)[0], k, namespace]
    other_contexts, private_rows, expiring_rows = _filters_needed(conn, namespace, context_key)
    if other_contexts:
        sql += " AND context = ?"
        params.append(scope_hash(context_key))
    if private_rows:
        if user_id:
            sql += " AND owner IN (0, ?)"
            params.append(scope_hash(user_id))
        else:
            sql += " AND owner = 0"
    if expiring_rows:
        sql += " AND expires_at > ?"
        params.append(float(now))
    if cells is None:
        found = conn.execute(sql, params).fetchall()
    elif cells:
        marks = ",".join("?" * len(cells))
        found = conn.execute(f"{sql} AND cell IN ({marks})", [*params, *map(int, cells)]).fetchall()
    else:
        return []
    keep = k if keep is None else keep
    rows = sorted(found, key=lambda r: float(r[1]))[:keep]
    if widen and k > 1 and len(rows) == k and rows[0][1] == rows[-1][1]:
        # One statement per cell here: each must tell whether it hit the cap.
        params[1] = wider = min(MAX_K, TIE_WIDENING * k)
        bound = rows[0][1]
        scans: list[tuple[str, list[Any]]] = (
            [(sql, [])] if cells is None else [(f"{sql} AND cell = ?", [int(c)]) for c in cells]
        )
        per_scan = [
            conn.execute(f"{q} AND distance <= ?", [*params, *extra, bound]).fetchall()
            for q, extra in scans
        ]
        if any(len(found) == wider for found in per_scan):
            return None
        rows = [r for found in per_scan for r in found]
    return [int(r[0]) for r in rows]


def _filters_needed(conn: Any, namespace: str, context_key: str) -> tuple[bool, bool, bool]:
    """Whether the namespace has entries of other contexts, private entries, and whether
    any entry expires: the filters the KNN needs, in one statement (10 us; three took
    14, measured on the suite's 1,000-namespace file). The context test is two range
    probes of entries_by_exact_query:
    `context_key != ?` would walk every row of the namespace that has this context."""
    row = conn.execute(
        "SELECT (EXISTS (SELECT 1 FROM entries WHERE namespace = ? AND context_key < ?) "
        "OR EXISTS (SELECT 1 FROM entries WHERE namespace = ? AND context_key > ?)), "
        "EXISTS (SELECT 1 FROM entries WHERE namespace = ? AND user_id > ''), "
        "EXISTS (SELECT 1 FROM entries WHERE expires_at IS NOT NULL)",
        (namespace, context_key, namespace, context_key, namespace),
    ).fetchone()
    return bool(row[0]), bool(row[1]), bool(row[2])


def sign_bit_information(matrix: np.ndarray[Any, Any]) -> float:
    """At most how many bits of information the index's sign bits carry per vector,
    judged from ``matrix`` (a sample of stored vectors, one per row): the sum over
    coordinates of the binary entropy of the share of vectors positive there. The
    dimension when every sign splits the sample in half; 0 when all vectors share
    their signs, so the Hamming KNN cannot tell entries apart."""
    share = (np.atleast_2d(np.asarray(matrix)) > 0).mean(axis=0)
    p = np.clip(share, 1e-12, 1 - 1e-12)
    entropy = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    entropy[(share == 0) | (share == 1)] = 0.0
    return float(entropy.sum())


def cosine_similarities(blobs: Sequence[bytes], vector: FloatVector) -> np.ndarray[Any, Any]:
    """Exact cosine similarity of each stored float32 blob with ``vector`` (float64);
    NaN for a blob of the wrong size or without a direction (a damaged file)."""
    q = np.asarray(vector, dtype=np.float64)
    out = np.full(len(blobs), np.nan)
    width = q.shape[0] * 4
    good = [i for i, b in enumerate(blobs) if len(b) == width]
    if not good:
        return out
    matrix = np.frombuffer(b"".join(blobs[i] for i in good), dtype="<f4").reshape(len(good), -1)
    norms = np.linalg.norm(matrix, axis=1) * np.linalg.norm(q)
    with np.errstate(divide="ignore", invalid="ignore"):
        sims = (matrix @ q.astype(np.float32)).astype(np.float64) / norms
    sims[~np.isfinite(sims)] = np.nan
    out[good] = sims
    return out


def scope_conditions(
    prefix: str,
    *,
    namespace: str | None,
    user_ids: Sequence[str] | None,
    context_key: str | None = None,
    unexpired_at: float | None = None,
) -> tuple[list[str], list[Any]]:
    """SQL conditions on ``entries`` (columns named ``prefix`` + name) and their
    parameters for the given filters; None = any. ``unexpired_at``: alive then."""
    clauses: list[str] = []
    params: list[Any] = []
    if unexpired_at is not None:
        clauses.append(f"({prefix}expires_at IS NULL OR {prefix}expires_at > ?)")
        params.append(float(unexpired_at))
    if namespace is not None:
        clauses.append(f"{prefix}namespace = ?")
        params.append(namespace)
    if context_key is not None:
        clauses.append(f"{prefix}context_key = ?")
        params.append(context_key)
    if user_ids is not None:
        clauses.append(f"{prefix}user_id IN ({','.join('?' * len(user_ids))})")
        params.extend(user_ids)
    return clauses, params


def scan_scope(
    conn: Any,
    vector: FloatVector,
    *,
    namespace: str | None,
    user_ids: Sequence[str] | None,
    context_key: str | None,
    unexpired_at: float | None = None,
) -> Iterable[tuple[list[int], np.ndarray[Any, Any]]]:
    """Exact scan: (ids, cosine similarities) batch by batch over every entry matching
    the filters (None = any; ``unexpired_at``: only entries alive then). O(entries):
    for maintenance and ``exact_search``, not for the default lookups."""
    clauses, params = scope_conditions(
        "e.",
        namespace=namespace,
        user_ids=user_ids,
        context_key=context_key,
        unexpired_at=unexpired_at,
    )
    where = "".join(f" AND {c}" for c in clauses)
    last = 0
    while True:
        rows = conn.execute(
            f"SELECT e.id, b.embedding FROM entries e JOIN {EMBEDDING_TABLE} b ON b.id = e.id "
            f"WHERE e.id > ?{where} ORDER BY e.id LIMIT ?",
            (last, *params, _BATCH),
        ).fetchall()
        if not rows:
            return
        yield [int(r[0]) for r in rows], cosine_similarities([bytes(r[1]) for r in rows], vector)
        last = int(rows[-1][0])
