"""What sqlite-vec's KNN costs by itself: the floor under the library's search path.

Run from the repository root (outside the test run; ~1 minute at 100k):

    python benchmarks/knn_floor.py [--entries 100000] [--probes 200] [--workdir DIR]

The library's lookup is one vec0 Hamming KNN (``vector_index.candidate_ids``) plus an
exact re-score of its candidates. This script times the KNN query alone, with no Python
or re-score around it, on a table shaped like the library's index (``namespace``
partition key, ``bit[width]`` vector, the three metadata columns) holding ``--entries``
random rows in one namespace, against numpy's exact ``X @ q`` over an ``entries x 384``
float32 matrix in RAM (one BLAS thread). numpy runs just before each query, so every
query meets the CPU caches numpy left behind (the performance suite rotates the order
of its methods to the same end). It prints each
query's p50 and its ratio to numpy's, for:

- k = 1 ... 32 at bit widths 128, 256 and 384. The library asks for 16 candidates of
  384 bits; fewer lose the true nearest entry too often (see benchmarks/README.md);
- k = 16 with a ``distance <= D`` bound that no row meets. This is the most such a
  bound can save: sqlite-vec applies it before its top-k selection;
- k = 16 with vec0 ``chunk_size`` 256 and 512 instead of 1024, and the bytes each
  namespace pre-allocates at each chunk size;
- the library's own ``search_vector`` over as many random unit vectors, for the whole
  path next to its KNN.

The scan cost does not depend on what the bits mean, so random bits are used. The
distance bound is the one exception, and no row meeting it is its best case.
"""

from __future__ import annotations

import os

# One BLAS thread for numpy, as in perf_search.py; only works before numpy is imported.
for _variable in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import sqlite_vec  # noqa: E402
from perf_build import remove_db  # noqa: E402

from semcache_sqlite import LocalEmbedder, SemanticCache  # noqa: E402
from semcache_sqlite.db import Database  # noqa: E402

DIM = 384
WIDTHS = (128, 256, 384)
KS = (1, 4, 8, 12, 16, 32)
CANDIDATES = 16  # what the library asks for (vector_index.DEFAULT_CANDIDATES)
SMALL_CHUNKS = (256, 512)
DEFAULT_CHUNK = 1024
TINY_NAMESPACES = 200  # one row each, to measure what a namespace pre-allocates
BATCH = 4096

Bits = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]


class Timer:
    """Times a query interleaved with numpy's exact scan: numpy runs just before each
    query, so every query starts with the CPU caches numpy left (a lookup in an app
    also runs between other work). numpy's own times are pooled."""

    def __init__(self, matrix: Floats, queries: Floats) -> None:
        self.matrix, self.queries = matrix, queries
        self.numpy_seconds: list[float] = []

    def p50_ms(self, run: Callable[[int], object]) -> float:
        """Median wall time of ``run(i)`` over the probes, after 5 untimed calls."""
        for i in range(min(5, len(self.queries))):
            run(i)
        times = []
        for i, query in enumerate(self.queries):
            t0 = time.perf_counter()
            int(np.argmax(self.matrix @ query))
            t1 = time.perf_counter()
            run(i)
            t2 = time.perf_counter()
            self.numpy_seconds.append(t1 - t0)
            times.append(t2 - t1)
        return statistics.median(times) * 1e3

    def numpy_ms(self) -> float:
        return statistics.median(self.numpy_seconds) * 1e3


def build(path: Path, bits: Bits, chunk_size: int) -> tuple[Database, int]:
    """A fresh file with the library's index shape, ``bits`` in one namespace; returns
    it and the bytes each further namespace of one row adds."""
    remove_db(path)
    db = Database(path)
    try:
        return db, fill(db, bits, chunk_size)
    except BaseException:
        db.close()
        raise


def fill(db: Database, bits: Bits, chunk_size: int) -> int:
    """Create and fill the table; return the bytes each further namespace adds."""
    width = bits.shape[1] * 8
    option = "" if chunk_size == DEFAULT_CHUNK else f", chunk_size={chunk_size}"
    insert = (
        "INSERT INTO v (rowid, namespace, embedding, context, owner, expires_at) "
        "VALUES (?, ?, vec_bit(?), 0, 0, 1e18)"
    )
    with db.transaction() as conn:
        conn.execute(
            "CREATE VIRTUAL TABLE v USING vec0(namespace text partition key, "
            f"embedding bit[{width}], context integer, owner integer, expires_at float{option})"
        )
        # As the library's (vector_index.PARTITION_INDEX): sqlite-vec finds a
        # partition's chunks with a query on this table, which it leaves unindexed.
        conn.execute("CREATE INDEX v_chunks_partition ON v_chunks(partition00)")
    for start in range(0, len(bits), BATCH):
        stop = min(len(bits), start + BATCH)
        with db.transaction() as conn:
            conn.executemany(
                insert, ((i + 1, "big", bits[i].tobytes()) for i in range(start, stop))
            )
    conn = db.connection()
    before = file_bytes(conn)
    with db.transaction() as conn:
        conn.executemany(
            insert,
            ((len(bits) + 1 + j, f"tiny-{j}", bits[j].tobytes()) for j in range(TINY_NAMESPACES)),
        )
    return (file_bytes(conn) - before) // TINY_NAMESPACES


def file_bytes(conn: Any) -> int:
    """Size of the database as this connection sees it (WAL pages included)."""
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    return pages * int(conn.execute("PRAGMA page_size").fetchone()[0])


def knn(conn: Any, probes: Bits, k: int, bound: float | None = None) -> Callable[[int], object]:
    sql = "SELECT rowid FROM v WHERE embedding MATCH vec_bit(?) AND namespace = 'big' AND k = ?"
    if bound is None:
        return lambda i: conn.execute(sql, (probes[i].tobytes(), k)).fetchall()
    sql += " AND distance <= ?"
    return lambda i: conn.execute(sql, (probes[i].tobytes(), k, bound)).fetchall()


def library_search_ms(path: Path, timer: Timer, rng: np.random.Generator) -> float:
    """p50 of the library's own search path (``search_vector``, k=1: the KNN for 16
    candidates, their re-score, the scope checks) over the same number of random unit
    vectors in one namespace."""
    n, dim = timer.matrix.shape
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    remove_db(path)
    with SemanticCache(path, embedder=LocalEmbedder()) as cache:
        texts = [f"question {i}" for i in range(n)]
        cache.store_many(texts, texts, embeddings=vectors, namespace="big")
        del vectors
        return timer.p50_ms(lambda i: cache.search_vector(timer.queries[i], k=1, namespace="big"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run, print the tables, and return the figures (p50 ms per query, bytes per
    namespace per chunk size)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    n, probes = args.entries, args.probes
    path = Path(args.workdir) / "semcache-knn-floor.db"

    timer = Timer(
        rng.standard_normal((n, DIM), dtype=np.float32),
        rng.standard_normal((probes, DIM), dtype=np.float32),
    )
    print(f"sqlite-vec {sqlite_vec.__version__}, {n:,} rows in one namespace, {probes} probes")
    print(f"{'query (numpy runs just before each)':<52} {'p50 ms':>7}")
    results: list[tuple[str, float]] = []

    def report(label: str, ms: float) -> None:
        results.append((label, ms))
        print(f"{label:<52} {ms:>7.2f}", flush=True)

    per_namespace: dict[int, int] = {}
    for width in WIDTHS:
        bits = rng.integers(0, 256, size=(n, width // 8), dtype=np.uint8)
        asks = rng.integers(0, 256, size=(probes, width // 8), dtype=np.uint8)
        chunks = (DEFAULT_CHUNK, *SMALL_CHUNKS) if width == DIM else (DEFAULT_CHUNK,)
        for chunk in chunks:
            db, extra = build(path, bits, chunk)
            try:
                conn = db.connection()
                if chunk != DEFAULT_CHUNK:
                    report(
                        f"bit[{width}] k={CANDIDATES}, chunk_size={chunk}",
                        timer.p50_ms(knn(conn, asks, CANDIDATES)),
                    )
                    per_namespace[chunk] = extra
                    continue
                for k in KS:
                    report(f"bit[{width}] k={k}", timer.p50_ms(knn(conn, asks, k)))
                if width == DIM:
                    per_namespace[chunk] = extra
                    # Random 384-bit rows sit ~192 +- 10 bits apart: none within 100.
                    report(
                        f"bit[{width}] k={CANDIDATES}, distance <= 100 (no row)",
                        timer.p50_ms(knn(conn, asks, CANDIDATES, 100.0)),
                    )
            finally:
                db.close()
    report("the library's search_vector (k=1, 16 candidates)", library_search_ms(path, timer, rng))
    remove_db(path)
    numpy_ms = timer.numpy_ms()
    print(f"\nnumpy exact X @ q over {n:,} x {DIM} float32 (1 BLAS thread): p50 {numpy_ms:.2f} ms")
    print(f"{'query':<52} {'/ numpy':>8}")
    for label, ms in results:
        print(f"{label:<52} {ms / numpy_ms:>7.2f}x")
    print()
    for chunk, size in sorted(per_namespace.items()):
        print(
            f"chunk_size {chunk}: each namespace pre-allocates ~{size / 1024:.0f} KiB (bit[{DIM}])"
        )
    return {"numpy_ms": numpy_ms, "queries": dict(results), "namespace_bytes": per_namespace}


if __name__ == "__main__":
    main()
