"""SQL of re-embedding: stage new vectors beside the live ones, then switch in one go.

The new vectors are written, batch by batch, to a PLAIN table
(``reembed_vectors``), not to a second vec0 table, and the target model is
recorded in ``cache_info`` (``reembed_model``, ``reembed_dim``). Until the
switch, the file's vec0 table, model and dimension are untouched: lookups keep
using the old vectors with the old embedder, and a crash or an exception leaves
the staged batches in place for the next ``reembed()`` to continue from.

The switch is ONE write transaction: embed whatever changed since it was staged,
replace the exact vectors (``entry_embeddings``) with the staged blobs, DROP the
vec0 index, CREATE it again with the new dimension under the same name and fill
it from the exact vectors (``vector_index.rebuild_index``), and record the new
model. Readers are never blocked (WAL).

Why not build a second vec0 table and point at it? ``ALTER TABLE RENAME``
breaks vec0, so the live table's name would have to change with every model
change, and every piece of SQL (and every other process holding the old name)
would have to follow it. Copying out of a vec0 table is also slow (~160 us per
row), so staging the vectors where they are cheap to read back wins.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .db import Database, table_exists
from .errors import EmbedderMismatchError
from .validation import FloatMatrix
from .vector_index import EMBEDDING_TABLE, rebuild_index

STAGING_TABLE = "reembed_vectors"


def staging_exists(conn: Any) -> bool:
    """A re-embed has staged vectors (finished or not) in the file."""
    return table_exists(conn, STAGING_TABLE)


def staged_bytes(conn: Any) -> int:
    """About the bytes the staging table of an unfinished re-embed takes up in the file
    (0 without one). ``max_bytes`` leaves them out: they are not entries, and a
    re-embed stopped half-way made every later write evict 5% of the cache until the
    staged bytes were made up for (at a steady state of 1,194 entries, 20 writes
    evicted half of them).

    Rows of a rowid table are packed whole into pages, so: rows per page from their
    average size. But a row holds its query, and a prompt of a few thousand characters
    does not fit a page: SQLite keeps a part of it on the leaf page, beside other rows,
    and the rest on overflow pages of its own (counted as whole pages per row, 8,000-
    character prompts were estimated at 1.7 times their size, and the cache grew past
    max_bytes by the difference). That split is computed per row, as SQLite does it
    (btreeParseCellAdjustSizeForOverflow; no reserved bytes)."""
    if not staging_exists(conn):
        return 0
    page = int(conn.execute("PRAGMA page_size").fetchone()[0])
    max_local = page - 35  # the most payload a table leaf cell keeps on its page
    min_local = (page - 12) * 32 // 255 - 23  # kept on the page when a row overflows
    chunk = page - 4  # payload per overflow page
    rows, local, overflow = conn.execute(
        "SELECT count(*), coalesce(sum(local), 0), "
        "coalesce(sum((p - local + :chunk - 1) / :chunk), 0) "
        "FROM (SELECT p, CASE WHEN p <= :max THEN p "
        "WHEN :min + (p - :min) % :chunk <= :max THEN :min + (p - :min) % :chunk "
        "ELSE :min END AS local "
        "FROM (SELECT length(embedding) + length(CAST(query AS BLOB)) + 8 AS p "  # + header
        f"FROM {STAGING_TABLE}))",
        {"chunk": chunk, "max": max_local, "min": min_local},
    ).fetchone()
    if not rows:
        return 0
    row_bytes = int(local) / int(rows) + 8  # + rowid, payload size, cell pointer
    per_page = max(1, int((page - 100) // row_bytes))  # 100: a page's own header, at most
    return (math.ceil(int(rows) / per_page) + int(overflow)) * page


@dataclass(frozen=True)
class ReembedState:
    """A re-embed in progress: the target model and how many entries have new vectors."""

    model_id: str
    dim: int
    done: int
    total: int


class ReembedStore:
    """Re-embedding SQL over ``self.db``; ``Store`` sets the attributes below."""

    db: Database
    bound: tuple[str, int] | None
    #: (model, dim) of the re-embed this Store began staging towards (reembed_begin).
    _staging_towards: tuple[str, int] | None = None

    def reembed_state(self) -> ReembedState | None:
        with self.db.reading() as conn:
            return self._state(conn)

    def _state(self, conn: Any) -> ReembedState | None:
        info = dict(
            conn.execute(
                "SELECT key, value FROM cache_info WHERE key IN ('reembed_model', 'reembed_dim')"
            ).fetchall()
        )
        if "reembed_model" not in info or not staging_exists(conn):
            return None
        done = conn.execute(
            f"SELECT count(*) FROM entries e JOIN {STAGING_TABLE} s "
            "ON s.entry_id = e.id AND s.query = e.query"
        ).fetchone()[0]
        total = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        return ReembedState(str(info["reembed_model"]), int(info["reembed_dim"]), done, total)

    def reembed_begin(self, model_id: str, dim: int) -> ReembedState:
        """Start re-embedding towards (model_id, dim), or continue one already started.

        A re-embed towards another model that was left unfinished is discarded.
        """
        with self.db.transaction() as conn:
            state = self._state(conn)
            if state is None or (state.model_id, state.dim) != (model_id, dim):
                self._drop_staging(conn)
                conn.execute(
                    f"CREATE TABLE {STAGING_TABLE} (entry_id INTEGER PRIMARY KEY, "
                    "query TEXT NOT NULL, embedding BLOB NOT NULL)"
                )
                conn.executemany(
                    "INSERT INTO cache_info (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [("reembed_model", model_id), ("reembed_dim", str(int(dim)))],
                )
                state = self._state(conn)
            assert state is not None
            self._staging_towards = (model_id, int(dim))
            return state

    def reembed_cancel(self) -> bool:
        """Forget a re-embed in progress; True if there was one."""
        with self.db.transaction() as conn:
            had = staging_exists(conn)
            self._drop_staging(conn)
            return had

    @staticmethod
    def _drop_staging(conn: Any) -> None:
        conn.execute(f"DROP TABLE IF EXISTS {STAGING_TABLE}")
        conn.execute("DELETE FROM cache_info WHERE key IN ('reembed_model', 'reembed_dim')")

    def reembed_pending(self, after_id: int, limit: int) -> list[tuple[int, str]]:
        """(id, query) of entries after ``after_id`` with no staged vector for their
        current query text (new entries, or queries changed since staging)."""
        with self.db.reading() as conn:
            return self._pending(conn, after_id, limit)

    @staticmethod
    def _pending(conn: Any, after_id: int, limit: int | None) -> list[tuple[int, str]]:
        sql = (
            f"SELECT e.id, e.query FROM entries e LEFT JOIN {STAGING_TABLE} s "
            "ON s.entry_id = e.id WHERE e.id > ? "
            "AND (s.entry_id IS NULL OR s.query IS NOT e.query) ORDER BY e.id"
        )
        params: tuple[Any, ...] = (after_id,)
        if limit is not None:
            sql += " LIMIT ?"
            params = (after_id, limit)
        return [(int(r[0]), str(r[1])) for r in conn.execute(sql, params)]

    def reembed_save(self, rows: Sequence[tuple[int, str]], vectors: FloatMatrix) -> None:
        """Stage a batch of the re-embed this Store began (reembed_begin)."""
        with self.db.transaction() as conn:
            self._check_staging(conn)
            self._save(conn, rows, vectors)

    def _check_staging(self, conn: Any) -> None:
        """Refuse to stage into a re-embed this Store did not begin: another process may
        have cancelled ours, or started one towards another model (which drops and
        recreates the staging table) since. Its run would take our vectors as staged
        vectors of its model, skip those entries, and switch the file to its model with
        ours in it."""
        state = self._state(conn)
        current = None if state is None else (state.model_id, state.dim)
        if self._staging_towards is None or current != self._staging_towards:
            now = "none" if state is None else f"one towards {state.model_id!r}"
            raise EmbedderMismatchError(
                f"{self.db.path}: the re-embed this cache began was cancelled or replaced "
                f"while it ran ({now} is in progress now); nothing of this batch was staged"
            )

    @staticmethod
    def _save(conn: Any, rows: Sequence[tuple[int, str]], vectors: FloatMatrix) -> None:
        conn.executemany(
            f"INSERT OR REPLACE INTO {STAGING_TABLE} (entry_id, query, embedding) VALUES (?, ?, ?)",
            [
                (entry_id, query, np.ascontiguousarray(vector, dtype=np.float32).tobytes())
                for (entry_id, query), vector in zip(rows, vectors, strict=True)
            ],
        )

    def reembed_switch(
        self,
        model_id: str,
        dim: int,
        embed: Callable[[list[str]], FloatMatrix],
    ) -> int:
        """Make the staged vectors live and (model_id, dim) the file's model, atomically.

        ``embed`` is called (inside the transaction) for the few entries written or
        changed since their batch was staged. Returns the number of entries converted.
        """
        with self.db.transaction() as conn:
            state = self._state(conn)
            if state is None or (state.model_id, state.dim) != (model_id, dim):
                raise EmbedderMismatchError(
                    f"{self.db.path}: no re-embed towards {model_id!r} ({dim}-d) in progress"
                )
            late = self._pending(conn, 0, None)
            if late:
                self._save(conn, late, embed([query for _, query in late]))
            conn.execute(f"DELETE FROM {EMBEDDING_TABLE}")
            converted = conn.execute(
                f"INSERT INTO {EMBEDDING_TABLE} (id, embedding) SELECT e.id, s.embedding "
                f"FROM entries e JOIN {STAGING_TABLE} s ON s.entry_id = e.id"
            ).rowcount
            rebuild_index(conn, dim)
            conn.execute(
                "UPDATE entries SET embedding_model = ?, embedding_dim = ?",
                (model_id, int(dim)),
            )
            conn.executemany(
                "INSERT INTO cache_info (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [("embedding_model", model_id), ("embedding_dim", str(int(dim)))],
            )
            self._drop_staging(conn)
        self.bound = (model_id, int(dim))
        return int(converted)
