"""Pieces shared by the reliability scripts (stress.py, crash.py) and their tests.

Nothing here is part of the library: a fast deterministic embedder (the stress
and crash runs test the storage layer, not the model), and ``check_file()``,
the verdict on a cache file after a run or a kill: ``PRAGMA integrity_check``,
no orphan between entries and vectors, no duplicate entry for one scope and
query, and the schema version.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from semcache_sqlite import SemCacheError, vector_cells
from semcache_sqlite.db import Database
from semcache_sqlite.store import Store
from semcache_sqlite.vector_index import (
    VECTOR_TABLE,
    namespace_centroids,
    split_namespaces,
    vector_layout_current,
)

_WORD = re.compile(r"\w+")


class HashEmbedder:
    """Bag of hashed words, L2-normalised: shared words mean similar, none mean orthogonal.

    ``delay`` seconds are spent in every ``embed()`` call (the model stays the same):
    the crash scenarios use it to make a batched operation last long enough for
    kills to land in the middle of it.
    """

    def __init__(self, dim: int = 32, delay: float = 0.0) -> None:
        self._dim = dim
        self._delay = delay

    @property
    def model_id(self) -> str:
        return f"reliability-hash-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def default_threshold(self) -> float:
        return 0.8

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if self._delay:
            time.sleep(self._delay)
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()) or [text]:
                digest = hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=4)
                out[row, int.from_bytes(digest.digest(), "little") % self._dim] += 1.0
            out[row] /= np.linalg.norm(out[row])
        return out


@dataclass(frozen=True)
class FileCheck:
    """What a cache file looks like from the outside after a run or a kill."""

    integrity: str  # "ok", or the first problems PRAGMA integrity_check reported
    entries_without_vector: int
    vectors_without_entry: int
    duplicate_scopes: int  # (namespace, user, context, query) stored more than once
    entries: int
    user_version: int
    wal_bytes: int
    #: index rows not in their namespace's nearest cell, or namespaces at the cell
    #: threshold without cells (vector_cells.py)
    misplaced_cells: int = 0

    @property
    def ok(self) -> bool:
        return (
            self.integrity == "ok"
            and self.entries_without_vector == 0
            and self.vectors_without_entry == 0
            and self.duplicate_scopes == 0
            and self.misplaced_cells == 0
        )

    def problems(self) -> list[str]:
        found = [] if self.integrity == "ok" else [f"integrity_check: {self.integrity}"]
        if self.entries_without_vector or self.vectors_without_entry:
            found.append(
                f"orphans: {self.entries_without_vector} entries without a vector, "
                f"{self.vectors_without_entry} vectors without an entry"
            )
        if self.duplicate_scopes:
            found.append(f"{self.duplicate_scopes} (scope, query) pairs stored more than once")
        if self.misplaced_cells:
            found.append(f"{self.misplaced_cells} index rows or namespaces not in their cells")
        return found


def misplaced_cells(conn: Any) -> int:
    """Index rows of a namespace with cells that are not in the cell of their nearest
    centroid (or outside any cell, or in the small namespaces' table), plus namespaces
    of ``CLUSTER_AT`` entries or more without cells, plus the rows in the small table of
    namespaces that also have rows in the large one (a namespace lives in one table).
    0 for a file of a layout without cells."""
    if not vector_layout_current(conn):
        return 0
    split = sum(rows for _, rows in split_namespaces(conn))
    cell_of = {
        int(r[0]): (str(r[1]), int(r[2]))
        for r in conn.execute(
            f"SELECT r.rowid, c.partition00, c.partition01 FROM {VECTOR_TABLE}_rowids r "
            f"JOIN {VECTOR_TABLE}_chunks c ON c.chunk_id = r.chunk_id"
        )
    }
    wrong = 0
    for namespace, count in conn.execute("SELECT namespace, entries FROM entry_counts"):
        centroids = namespace_centroids(conn, str(namespace))
        if centroids is None:
            wrong += int(count) >= vector_cells.CLUSTER_AT
            continue
        rows = conn.execute(
            "SELECT e.id, b.embedding FROM entries e JOIN entry_embeddings b USING (id) "
            "WHERE e.namespace = ?",
            (namespace,),
        ).fetchall()
        vectors = np.array([np.frombuffer(r[1], dtype="<f4") for r in rows])
        nearest = vector_cells.nearest_cells(centroids, vectors) if rows else []
        wrong += sum(
            cell_of.get(int(r[0])) != (str(namespace), cell)
            for r, cell in zip(rows, nearest, strict=True)
        )
    return wrong + split


def check_file(path: str | Path) -> FileCheck:
    """Open ``path`` without migrating or binding an embedder and check it thoroughly.

    A file that cannot even be read comes back with the error as its integrity verdict.
    """
    wal = Path(f"{path}-wal")
    db = Database(path)
    try:
        with db.reading() as conn:
            rows = conn.execute("PRAGMA integrity_check(20)").fetchall()
            integrity = "; ".join(str(r[0]) for r in rows)
            user_version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            has_entries = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'entries'"
            ).fetchone()
            entries = duplicates = 0
            if has_entries:
                entries = int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
                duplicates = int(
                    conn.execute(
                        "SELECT count(*) FROM (SELECT 1 FROM entries GROUP BY namespace, "
                        "user_id, context_key, query_hash HAVING count(*) > 1)"
                    ).fetchone()[0]
                )
            misplaced = misplaced_cells(conn) if has_entries else 0
        no_vector, no_entry = Store(db).orphan_counts() if has_entries else (0, 0)
    except SemCacheError as exc:
        return FileCheck(f"unreadable: {exc}", 0, 0, 0, 0, -1, 0)
    finally:
        db.close()
    return FileCheck(
        integrity=integrity,
        entries_without_vector=no_vector,
        vectors_without_entry=no_entry,
        duplicate_scopes=duplicates,
        entries=entries,
        user_version=user_version,
        wal_bytes=wal.stat().st_size if wal.exists() else 0,
        misplaced_cells=misplaced,
    )
