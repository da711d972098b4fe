"""Run in a FRESH subprocess by ``perf_search.py``; prints one JSON object on stdout.

    python benchmarks/perf_child.py open '{"path": ..., "probes": "p.npy", "namespaces": [...]}'
    python benchmarks/perf_child.py embed '{}'

``open``: import the library, open the cache file (``SemanticCache(path,
embedder=LocalEmbedder())``; the model is not loaded, lookups get vectors), time the
first ``search_vector`` (k=1), run the remaining probes, and report times and the
process's RSS at each stage and its peak (and, on Linux, how much of its growth is private
memory and how much file pages read through SQLite's memory map), plus SQLite's
page-cache and memory-map limits of the connection.
``embed``: the embedder's cold start (import, model load, first query).

A fresh process per figure means one size's memory never pollutes another's.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _status_bytes(*fields: str) -> list[int] | None:
    """These kB fields of /proc/self/status, in bytes; None off Linux or if one is missing."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    values = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
    if any(f not in values for f in fields):
        return None
    return [int(values[f].split()[0]) * 1024 for f in fields]


def rss_bytes() -> tuple[int, int]:
    """(current RSS, peak RSS) of this process image.

    On Linux from /proc/self/status (VmRSS, VmHWM): ``ru_maxrss`` is no good here,
    because Linux carries it over fork + exec, so it would report the parent's size.
    """
    found = _status_bytes("VmRSS", "VmHWM")
    if found is not None:
        return found[0], found[1]
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    peak = peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere
    return peak, peak


def rss_split() -> tuple[int, int] | None:
    """(private, file-backed) resident bytes now: RssAnon, RssFile (Linux only).

    The file-backed part holds the shared libraries and the pages of the cache file
    SQLite reads through its memory map (``mmap_size``): OS page cache, shared and
    reclaimable. The private part holds everything else, SQLite's own page cache
    included.
    """
    found = _status_bytes("RssAnon", "RssFile")
    return None if found is None else (found[0], found[1])


def _pragmas(cache: Any, *names: str) -> list[int] | None:
    """Integer PRAGMA values of the cache's connection; None if they cannot be read."""
    try:
        with cache._db.reading() as conn:
            return [int(conn.execute(f"PRAGMA {name}").fetchone()[0]) for name in names]
    except Exception:
        return None


def sqlite_mmap_bytes(cache: Any) -> int | None:
    """The connection's memory-map limit (PRAGMA mmap_size)."""
    found = _pragmas(cache, "mmap_size")
    return None if found is None else found[0]


def sqlite_cache_bytes(cache: Any) -> int | None:
    """The connection's page-cache limit (PRAGMA cache_size: pages, or KiB if negative)."""
    found = _pragmas(cache, "cache_size", "page_size")
    if found is None:
        return None
    size, page = found
    return -size * 1024 if size < 0 else size * page


def open_and_search(spec: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    import numpy as np

    from semcache_sqlite import LocalEmbedder, SemanticCache

    t1 = time.perf_counter()
    rss_import = rss_bytes()
    split_import = rss_split()
    probes = np.load(spec["probes"])
    namespaces: list[str] = spec["namespaces"]
    t2 = time.perf_counter()
    cache = SemanticCache(spec["path"], embedder=LocalEmbedder(), **spec["fast"])
    t3 = time.perf_counter()
    first = cache.search_vector(probes[0], k=1, namespace=namespaces[0])
    t4 = time.perf_counter()
    rss_first = rss_bytes()
    later: list[float] = []
    for vector, namespace in zip(probes[1:], namespaces[1:], strict=True):
        s = time.perf_counter()
        cache.search_vector(vector, k=1, namespace=namespace)
        later.append(time.perf_counter() - s)
    rss_end = rss_bytes()
    split_end = rss_split()
    page_cache = sqlite_cache_bytes(cache)
    mapped = sqlite_mmap_bytes(cache)
    cache.close()
    return {
        "import_s": t1 - t0,
        "open_s": t3 - t2,
        "first_search_s": t4 - t3,
        "open_and_first_s": t4 - t2,
        "later_searches": len(later),
        "later_search_median_s": float(np.median(later)) if later else None,
        "found": len(first),
        "rss_after_import": rss_import[0],
        "rss_after_first": rss_first[0],
        "rss_end": rss_end[0],
        "peak_rss": rss_end[1],
        "sqlite_cache_bytes": page_cache,
        "sqlite_mmap_bytes": mapped,
        # growth over import of private and of file-backed memory (None off Linux)
        "private_growth": _growth(split_import, split_end, 0),
        "file_backed_growth": _growth(split_import, split_end, 1),
    }


def _growth(before: tuple[int, int] | None, after: tuple[int, int] | None, part: int) -> int | None:
    return None if before is None or after is None else after[part] - before[part]


def embed_cold() -> dict[str, Any]:
    t0 = time.perf_counter()
    from semcache_sqlite import LocalEmbedder

    t1 = time.perf_counter()
    LocalEmbedder().embed(["How do I reset my password?"])
    t2 = time.perf_counter()
    return {"import_s": t1 - t0, "first_embed_s": t2 - t1, "peak_rss": rss_bytes()[1]}


def main(argv: list[str]) -> int:
    mode = argv[1]
    spec = json.loads(argv[2]) if len(argv) > 2 else {}
    result = open_and_search(spec) if mode == "open" else embed_cold()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
