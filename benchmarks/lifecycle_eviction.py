"""File size and write latency of a size-limited cache under each eviction policy.

Stores ``--inserts`` entries (default 200,000) into a cache with
``max_entries=--max-entries`` (default 20,000), once per policy (lru, lfu, fifo),
each into a fresh file, and reports per policy: write latency of ``store()``
(p50 / p99 / p99.9 / max, and the amortised mean, which includes the batched
evictions), the file size over time and at the end, sqlite-vec's vector chunk
count, the hit rate of the "hot" lookups, and what ``vacuum()`` gives back.

Vectors are given (``store(query, vector, response)``): random 384-d unit
vectors, so no embedding model runs. That is fine for a storage benchmark:
sqlite-vec stores and frees a vector the same whatever it contains.

Traffic model: 5% of stored entries are "hot"; after every insert, one exact
lookup hits a random entry among the 2,000 most recent hot ones (popularity
that fades). LRU and LFU therefore keep some old entries alive, FIFO does not:
this is what separates the policies' file sizes (a surviving row pins its whole
1024-row vec0 chunk).

Run (about 10-20 minutes at full size on a 2-core machine):

    python benchmarks/lifecycle_eviction.py                      # full size
    python benchmarks/lifecycle_eviction.py --inserts 20000 --max-entries 2000   # quick

``--no-compaction`` turns off the moving of rows out of sparse vec0 chunks after
evictions, to see what it saves. Results are printed and written as JSON to
benchmarks/results/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from semcache_sqlite import SemanticCache
from semcache_sqlite.lifecycle import check_eviction
from semcache_sqlite.store import Scope
from semcache_sqlite.validation import query_hash

RESULTS = Path(__file__).parent / "results"


class VectorsGiven:
    """An embedder that is never asked to embed: every store() comes with its vector."""

    def __init__(self, dim: int) -> None:
        self._dim = dim

    @property
    def model_id(self) -> str:
        return f"random-unit-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def default_threshold(self) -> float:
        return 0.9

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        raise RuntimeError("this benchmark gives every vector; nothing should be embedded")


def percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def exact_lookup(cache: SemanticCache, query: str) -> bool:
    """What ``cache.lookup`` does on the exact path (hit counted, LRU/LFU data updated),
    without falling back to embedding on a miss: this benchmark has no model."""
    store = cache._store
    row = store.find_exact(Scope("default", "", ""), query_hash(query))
    store.record_lookup("default", None if row is None else row.id)
    return row is not None


def entry_count(cache: SemanticCache) -> int:
    with cache._store.db.reading() as conn:
        return int(conn.execute("SELECT sum(entries) FROM entry_counts").fetchone()[0])


def file_facts(cache: SemanticCache) -> dict[str, int]:
    store = cache._store
    with store.db.reading() as conn:
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        chunks = int(conn.execute("SELECT count(*) FROM entry_vectors_chunks").fetchone()[0])
        entries = int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
    wal = Path(store.db.path + "-wal")
    return {
        "db_bytes": pages * page_size,
        "free_bytes": free * page_size,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        "vec_chunks": chunks,
        "entries": entries,
    }


def run_policy(policy: str, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    path = directory / f"eviction-{policy}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    rng = np.random.default_rng(args.seed)
    pick = random.Random(args.seed)
    latencies: list[float] = []
    evicting: list[float] = []  # latency of the writes that ran an eviction batch
    count = 0
    samples: list[dict[str, int]] = []
    hot: list[int] = []
    hot_hits = hot_lookups = 0
    every = max(1, args.inserts // 20)
    started = time.perf_counter()
    with SemanticCache(
        path,
        embedder=VectorsGiven(args.dim),
        max_entries=args.max_entries,
        eviction=check_eviction(policy),
    ) as cache:
        cache._store.compact_chunks = not args.no_compaction
        block: npt.NDArray[np.float32] = np.zeros((0, args.dim), dtype=np.float32)
        for i in range(args.inserts):
            if i % 4096 == 0:
                block = rng.standard_normal((4096, args.dim)).astype(np.float32)
                block /= np.linalg.norm(block, axis=1, keepdims=True)
            vector = block[i % 4096]
            t0 = time.perf_counter()
            cache.store(f"query {i}", vector, f"response {i}")
            latencies.append(time.perf_counter() - t0)
            before, count = count, entry_count(cache)
            if count <= before:  # this write evicted (beyond its own new entry)
                evicting.append(latencies[-1])
            if pick.random() < args.hot_fraction:
                hot.append(i)
            if hot:
                target = pick.choice(hot[-args.hot_window :])
                hot_lookups += 1
                hot_hits += exact_lookup(cache, f"query {target}")
            if (i + 1) % every == 0:
                facts = file_facts(cache)
                samples.append({"inserts": i + 1, **facts})
                print(
                    f"  {policy} {i + 1:>7} inserts: {facts['db_bytes'] / 1e6:7.1f} MB file, "
                    f"{facts['vec_chunks']:4d} vec0 chunks, {facts['entries']} entries",
                    flush=True,
                )
        elapsed = time.perf_counter() - started
        final = file_facts(cache)
        vacuum: dict[str, Any] = {}
        if not args.no_vacuum:
            t0 = time.perf_counter()
            report = cache.vacuum()
            vacuum = {**report, "seconds": time.perf_counter() - t0, **file_facts(cache)}
        assert cache._store.orphan_counts() == (0, 0)
    ordered = sorted(latencies)
    return {
        "policy": policy,
        "chunk_compaction": not args.no_compaction,
        "inserts": args.inserts,
        "max_entries": args.max_entries,
        "dim": args.dim,
        "seconds": elapsed,
        "latency_ms": {
            "p50": percentile(ordered, 0.50) * 1e3,
            "p99": percentile(ordered, 0.99) * 1e3,
            "p99.9": percentile(ordered, 0.999) * 1e3,
            "max": ordered[-1] * 1e3,
            "mean (amortised)": statistics.fmean(latencies) * 1e3,
        },
        "eviction_writes": {
            "count": len(evicting),
            "median_ms": statistics.median(evicting) * 1e3 if evicting else 0.0,
            "max_ms": max(evicting) * 1e3 if evicting else 0.0,
        },
        "hot_hit_rate": hot_hits / hot_lookups if hot_lookups else 0.0,
        "final": final,
        "max_db_bytes": max(s["db_bytes"] for s in samples) if samples else final["db_bytes"],
        "samples": samples,
        "after_vacuum": vacuum,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inserts", type=int, default=200_000)
    parser.add_argument("--max-entries", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--policies", default="lru,lfu,fifo")
    parser.add_argument("--hot-fraction", type=float, default=0.05)
    parser.add_argument("--hot-window", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-vacuum", action="store_true", help="skip vacuum() at the end")
    parser.add_argument(
        "--no-compaction",
        action="store_true",
        help="do not move rows out of sparse vec0 chunks after evictions (to compare)",
    )
    parser.add_argument("--dir", type=Path, default=None, help="where the .db files go")
    args = parser.parse_args(argv)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="semcache-eviction-"))
    directory.mkdir(parents=True, exist_ok=True)
    results = []
    for policy in args.policies.split(","):
        print(f"{policy}: {args.inserts} inserts, max_entries={args.max_entries}", flush=True)
        results.append(run_policy(policy, args, directory))
    print()
    print(
        "policy  p50 ms  p99 ms  p99.9 ms  max ms  mean ms  evicting writes: n, median ms  "
        "file MB (max)  vec0 chunks  hot hits  after vacuum MB (s)"
    )
    for r in results:
        lat, final, vac = r["latency_ms"], r["final"], r["after_vacuum"]
        vacuumed = f"{vac['db_bytes'] / 1e6:6.1f} ({vac['seconds']:.1f})" if vac else "-"
        print(
            f"{r['policy']:6}  {lat['p50']:6.2f}  {lat['p99']:6.2f}  {lat['p99.9']:8.2f}  "
            f"{lat['max']:6.1f}  {lat['mean (amortised)']:7.3f}  "
            f"{r['eviction_writes']['count']:6d} {r['eviction_writes']['median_ms']:10.1f}  "
            f"{final['db_bytes'] / 1e6:6.1f} ({r['max_db_bytes'] / 1e6:5.1f})  "
            f"{final['vec_chunks']:11d}  {r['hot_hit_rate']:8.1%}  {vacuumed}"
        )
    RESULTS.mkdir(exist_ok=True)
    mode = "no-compaction" if args.no_compaction else "compaction"
    out = RESULTS / f"lifecycle_eviction_{args.inserts}_{args.max_entries}_{mode}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
