"""Performance suite of semcache-sqlite: every figure measured in ONE run on the SAME data.

Run from the repository root (outside the test run):

    python benchmarks/perf_search.py [--sizes 10000,100000] [--with-1m] [--probes N]
                                     [--workdir DIR] [--reuse] [--json out.json]

What it measures, at each size (10k, 100k, opt-in 1M cached 384-d entries) and with
1 namespace and with 1,000 namespaces of Zipf-like sizes (a probe is asked in one
namespace and must only see it):

- lookup latency p50/p99 of this library's search path (``SemanticCache.search_vector``,
  k=1; ``find_similar`` too, which also counts the lookup), of sqlite-vec's float32 exact
  KNN on a raw vec0 table, of numpy exact search in RAM (``X @ q``, per-namespace slice),
  and of the seed tutorial's Python loop of ``np.dot`` over rows; ratios ours/numpy and
  ours/sqlite-vec;
- decision fidelity of the search path: the share of probes whose hit/miss decision and
  chosen entry equal exact numpy search's, at the cache's default threshold and at
  0.8/0.9/0.95;
- the exact repeat path (``lookup`` of a cached query re-typed), end-to-end
  ``get_or_compute`` paraphrase hits with the local embedder (at 100k), bulk insert
  throughput (vectors given), file size per entry, cold open + first lookup of each file
  in a fresh subprocess (also with the file dropped from the OS page cache), peak RSS per
  size in fresh subprocesses, and the default embedder's throughput.

Data: QQP questions embedded with the local model (see ``perf_data.py``); sizes above
the ~112k distinct QQP questions (1M) are PADDED WITH SYNTHETIC VECTORS (normalised
mixtures of 2-3 real embeddings plus small noise); the output says how many. Without the
QQP data or its cached embeddings, ``--source auto`` falls back to a small synthetic set.

Absolute times are noisy on a shared machine: read the ratios. Built files stay in the
work dir; ``--reuse`` skips rebuilding a file whose entries (and, for the library's file,
the library's code) are unchanged.
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: numpy's BLAS is pinned to one thread unless you set these yourself: sqlite-vec scans
#: on one thread too, and on a busy 2-core machine multi-threaded OpenBLAS gemv is
#: several times slower and far noisier than single-threaded (measured: 10k rows,
#: p50 4.8 ms vs 0.55 ms). It only works if numpy is not imported yet (as when run as
#: a script); the report records the setting.
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the suite (arguments as on the command line); print, write and return results."""
    numpy_loaded = "numpy" in sys.modules
    for variable in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(variable, "1")
    from perf_suite import run

    return run(argv, blas_pinned=not numpy_loaded)


if __name__ == "__main__":
    main()
