"""How long a lookup takes while another process holds the file's write lock.

Run from the repository root (outside the test run; a few seconds):

    python benchmarks/lookup_during_write.py [--hold 3] [--entries 200] [--json]

Every lookup counts its hit or miss in the file, which is a small write. Another process
can hold the write lock for seconds (an import, a vacuum, a re-embed, a namespace's rows
moved into cells). This script fills a file with ``--entries`` entries, then looks them
up (exact repeats, the cheapest lookup, so the counter's share shows) in a loop for
``--hold`` seconds each:

- with the lock free (the baseline, same run);
- while a child process holds the write lock in an open transaction (it takes the lock,
  says so through a pipe, and commits after ``--hold`` seconds).

It prints, for both: lookups done, the first lookup's time, p50, p99 and the slowest;
and after ``close()``, whether the hits in the file equal the lookups made (counts that
waited for the lock are written late, not lost). The embedder is a bag of hashed words
(reliability.HashEmbedder): the embedder's cost is not what is measured.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability import HashEmbedder

from semcache_sqlite import SemanticCache
from semcache_sqlite.db import Database


def hold_write_lock(path: str, seconds: float, pipe: Connection) -> None:
    """Child process: an open write transaction for ``seconds``, announced on ``pipe``."""
    db = Database(path)
    with db.transaction() as conn:
        conn.execute("UPDATE entries SET response = response")
        pipe.send("locked")
        pipe.poll(seconds)  # the parent may end it early by sending anything
    db.close()


def lookups_for(cache: SemanticCache, queries: list[str], seconds: float) -> list[float]:
    """Look the queries up in turn for ``seconds``; each lookup's time in ms."""
    times: list[float] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        started = time.perf_counter()
        found = cache.lookup(queries[i % len(queries)])
        times.append((time.perf_counter() - started) * 1000)
        if found is None:
            raise SystemExit(f"{queries[i % len(queries)]!r} was not found: the file is wrong")
        i += 1
    return times


def summary(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {
        "lookups": len(times),
        "first_ms": times[0],
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max_ms": ordered[-1],
    }


def run(hold: float, entries: int, path: str) -> dict[str, Any]:
    queries = [f"question {i} about subject {i * 7} and case {i * 13}" for i in range(entries)]
    with SemanticCache(path, embedder=HashEmbedder(), threshold=0.8) as cache:
        cache.store_many(queries, [f"answer {i}" for i in range(entries)])
    figures: dict[str, Any] = {"hold_s": hold, "entries": entries}
    cache = SemanticCache(path, embedder=HashEmbedder(), threshold=0.8)
    try:
        figures["lock_free"] = summary(lookups_for(cache, queries, hold))
        parent, child_end = multiprocessing.Pipe()
        holder = multiprocessing.get_context("spawn").Process(
            target=hold_write_lock, args=(path, hold, child_end)
        )
        holder.start()
        if parent.recv() != "locked":
            raise SystemExit("the lock holder did not start")
        figures["lock_held"] = summary(lookups_for(cache, queries, hold))
        parent.send("done")
        holder.join(60)
    finally:
        cache.close()
    with SemanticCache(path, embedder=HashEmbedder(), read_only=True) as reader:
        figures["hits_in_file"] = reader.stats()["hits"]
    figures["lookups_made"] = figures["lock_free"]["lookups"] + figures["lock_held"]["lookups"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hold", type=float, default=3.0, help="seconds the lock is held")
    parser.add_argument("--entries", type=int, default=200, help="entries in the file")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = run(args.hold, args.entries, os.path.join(tmp, "cache.db"))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"exact-repeat lookups for {args.hold:g} s each, {args.entries} entries")
    print(f"  {'':>22}  lookups  first ms  p50 ms  p99 ms  max ms")
    for name in ("lock_free", "lock_held"):
        f = figures[name]
        print(
            f"  {name.replace('_', ' '):>22}  {f['lookups']:>7}  {f['first_ms']:>8.2f}"
            f"  {f['p50_ms']:>6.3f}  {f['p99_ms']:>6.3f}  {f['max_ms']:>6.1f}"
        )
    ratio = figures["lock_held"]["p50_ms"] / figures["lock_free"]["p50_ms"]
    print(f"  p50 with the lock held / lock free: {ratio:.2f}x")
    print(
        f"  hits in the file after close: {figures['hits_in_file']:,} "
        f"of {figures['lookups_made']:,} lookups made"
    )


if __name__ == "__main__":
    main()
