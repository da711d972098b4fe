"""What the cache saves in front of a slow LLM, and what single-flight saves in a stampede.

Not part of the test run. With the offline local model and a simulated LLM of
fixed latency (``--llm-ms``), it

1. asks ``--queries`` distinct questions (misses: embed + search + LLM + store),
   then asks each again in other words (hits), and prints the latency figures
   ``stats()`` keeps in the file (mean hit / miss / LLM latency, time saved);
2. fires ``--threads`` identical concurrent requests at a new question and
   prints how many LLM calls they caused (1 with single-flight).

    python benchmarks/llm_fallback_latency.py --queries 20 --llm-ms 300
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from semcache_sqlite import SemanticCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--llm-ms", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=20)
    args = parser.parse_args()
    calls = 0
    lock = threading.Lock()

    def slow_llm(prompt: str) -> str:
        nonlocal calls
        with lock:
            calls += 1
        time.sleep(args.llm_ms / 1000)  # the simulated LLM's latency
        return f"An answer about: {prompt}"

    with (
        tempfile.TemporaryDirectory() as folder,
        SemanticCache(Path(folder) / "bench.db", llm=slow_llm) as cache,
    ):
        cache.lookup("warm up the model")  # load the ONNX model outside the timings
        for i in range(args.queries):
            cache.get_or_compute(f"How do I configure feature number {i} of the product?")
        for i in range(args.queries):
            cache.get_or_compute(f"How can I configure feature number {i} of the product?")
        stats = cache.stats()
        print(f"hits {stats['hits']}  misses {stats['misses']}  LLM calls {calls}")
        for key in ("mean_hit_latency", "mean_miss_latency", "mean_llm_latency"):
            print(f"{key:>20}: {stats[key] * 1000:8.2f} ms")
        print(f"{'time_saved_fraction':>20}: {stats['time_saved_fraction']:8.3f}")
        print(f"{'seconds_saved':>20}: {stats['seconds_saved']:8.2f} s")

        calls = 0
        with ThreadPoolExecutor(args.threads) as pool:
            list(
                pool.map(
                    lambda _: cache.get_or_compute("A brand new question nobody asked"),
                    range(args.threads),
                )
            )
        print(f"{args.threads} identical concurrent misses -> {calls} LLM call(s)")


if __name__ == "__main__":
    main()
