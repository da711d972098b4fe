"""Small namespaces in a second vec0 table with small chunks: what it would save.

Run from the repository root (outside the test run; ~1 minute):

    python benchmarks/chunk_tiers.py [--entries 10000,100000] [--small-chunk 32]
                                     [--promote-at 512] [--probes 200] [--workdir DIR]

Measures a layout the library does not have yet, to decide whether to build it. Every
vec0 partition (a namespace, or a cell of one) pre-allocates one chunk of
``chunk_size`` rows: ~85 KiB at the library's 1,024 rows of bit[384]. Over 1,000
namespaces of uneven sizes that is most of the file (the performance suite's file-size
goal fails there), and a lookup in a namespace of a few rows still reads a whole
chunk. Smaller chunks for every namespace would slow the large ones (a query costs
per chunk: benchmarks/README.md, "sqlite-vec's chunk lookup"). So this compares,
on the same rows:

- ``one``: the library's layout, one table with 1,024-row chunks;
- ``two``: namespaces of fewer than ``--promote-at`` rows in a second table with
  ``--small-chunk``-row chunks, the others in the 1,024-row table.

Both tables have the library's columns and its partition index. It prints the bytes
per entry of each file (the index alone, after VACUUM) and, per namespace size, the
p50 of the KNN query for 16 candidates (the variants interleaved probe by probe).
Namespace sizes follow the suite's Zipf-like layout (perf_data.zipf_sizes); the bits
are random, since the scan's cost does not depend on what they mean.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlite_vec
from perf_build import remove_db
from perf_data import zipf_sizes

from semcache_sqlite.db import Database
from semcache_sqlite.vector_index import vec0_ddl

NAMESPACES = 1000
DIM = 384
CANDIDATES = 16  # what the library asks for (vector_index.DEFAULT_CANDIDATES)
LARGE_CHUNK = 1024  # the library's (vector_index.CHUNK_ROWS)
#: The namespaces timed: positions in the size order (0 = the largest).
TIMED = (0, 2, 5, 10, 30, 100, 300, 999)

Bits = npt.NDArray[np.uint8]


def build(path: Path, sizes: list[int], bits: Bits, small: tuple[int, int] | None) -> int:
    """A file holding ``sizes[j]`` rows in namespace ``ns-j``; ``small`` = (chunk rows,
    promote at): namespaces below that size go to table ``small``. Returns its bytes."""
    remove_db(path)
    db = Database(path)
    try:
        with db.transaction() as conn:
            tables = [("large", LARGE_CHUNK)] + ([("small", small[0])] if small else [])
            for name, chunk in tables:
                conn.execute(vec0_ddl(name, DIM, chunk))  # the library's columns
                conn.execute(f"CREATE INDEX {name}_p ON {name}_chunks(partition00, partition01)")
            row = 0
            for j, size in enumerate(sizes):
                table = "small" if small and size < small[1] else "large"
                conn.executemany(
                    f"INSERT INTO {table} (rowid, namespace, cell, embedding, context, owner, "
                    "expires_at) VALUES (?, ?, -1, vec_bit(?), 0, 0, 1e18)",
                    ((row + i + 1, f"ns-{j}", bits[row + i].tobytes()) for i in range(size)),
                )
                row += size
        db.connection().execute("VACUUM")
    finally:
        db.close()
    return path.stat().st_size


def knn_p50_ms(
    paths: dict[str, Path], tables: dict[str, list[str]], timed: list[int], probes: Bits
) -> dict[str, list[float]]:
    """p50 ms of each variant's KNN in each timed namespace (``tables[variant][t]`` holds
    namespace ``timed[t]``), the variants interleaved probe by probe."""
    dbs = {name: Database(path, read_only=True) for name, path in paths.items()}
    try:
        times: dict[str, list[list[float]]] = {v: [[] for _ in timed] for v in paths}
        for probe in probes:
            for t, j in enumerate(timed):
                for variant, db in dbs.items():
                    sql = (
                        f"SELECT rowid FROM {tables[variant][t]} WHERE embedding MATCH vec_bit(?) "
                        "AND k = ? AND namespace = ? AND cell = -1"
                    )
                    conn = db.connection()
                    t0 = time.perf_counter()
                    conn.execute(sql, (probe.tobytes(), CANDIDATES, f"ns-{j}")).fetchall()
                    times[variant][t].append(time.perf_counter() - t0)
        return {v: [statistics.median(ts) * 1e3 for ts in per] for v, per in times.items()}
    finally:
        for db in dbs.values():
            db.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print the tables; return {entries: {"bytes_per_entry": {...}, "p50_ms": {...},
    "sizes": [...]}}."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", default="10000,100000", help="comma-separated")
    parser.add_argument("--small-chunk", type=int, default=32)
    parser.add_argument("--promote-at", type=int, default=512)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--workdir", default=tempfile.gettempdir())
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    probes = rng.integers(0, 256, size=(args.probes, DIM // 8), dtype=np.uint8)
    print(
        f"sqlite-vec {sqlite_vec.__version__}; {NAMESPACES:,} namespaces; two = namespaces "
        f"under {args.promote_at} rows in {args.small_chunk}-row chunks, the rest in "
        f"{LARGE_CHUNK}-row chunks; KNN k={CANDIDATES}, p50 ms"
    )
    out: dict[str, Any] = {}
    for entries in (int(e) for e in args.entries.split(",")):
        sizes = sorted(zipf_sizes(entries, NAMESPACES), reverse=True)
        timed = [j for j in TIMED if j < len(sizes)]
        bits = rng.integers(0, 256, size=(sum(sizes), DIM // 8), dtype=np.uint8)
        paths = {v: Path(args.workdir) / f"semcache-chunk-tiers-{v}.db" for v in ("one", "two")}
        try:
            size = {
                "one": build(paths["one"], sizes, bits, None),
                "two": build(paths["two"], sizes, bits, (args.small_chunk, args.promote_at)),
            }
            tables = {
                "one": ["large" for _ in timed],
                "two": ["small" if sizes[j] < args.promote_at else "large" for j in timed],
            }
            p50 = knn_p50_ms(paths, tables, timed, probes)
        finally:
            for path in paths.values():
                remove_db(path)
        per_entry = {v: s / sum(sizes) for v, s in size.items()}
        print(f"\n{sum(sizes):,} entries: index bytes per entry", end="")
        print("".join(f"  {v} {b:,.0f}" for v, b in per_entry.items()))
        print(f"  {'namespace rows':<16}" + "".join(f"{sizes[j]:>8,}" for j in timed))
        for variant, values in p50.items():
            print(f"  {variant:<16}" + "".join(f"{ms:>8.3f}" for ms in values))
        out[str(sum(sizes))] = {
            "bytes_per_entry": per_entry,
            "p50_ms": p50,
            "sizes": [sizes[j] for j in timed],
        }
    return out


if __name__ == "__main__":
    main()
