"""What the cache saves in front of a slow LLM, and what single-flight saves in a stampede.

Not part of the test run. With the offline local model and a simulated LLM of
fixed latency (``--llm-ms``), it

1. asks ``--queries`` distinct questions (misses: embed + search + LLM + store),
   then asks each again in other words (hits), and prints the latency figures
   ``stats()`` keeps in the file (mean hit / miss / LLM latency, time saved);
2. fires ``--threads`` identical concurrent requests at a new question and
   prints how many LLM calls they caused (1 with single-flight).

    python benchmarks/llm_fallback_latency.py --queries 10 --llm-ms 300
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from semcache_sqlite import SemanticCache

#: Distinct questions and a paraphrase of each (numbered variants of one question
#: would be near-duplicates to any small embedding model).
PAIRS = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("What are the pricing plans?", "Which pricing plans do you offer?"),
    ("Can I export my data to CSV?", "Is it possible to export my data as CSV?"),
    ("How do I delete my account?", "How can I delete my account?"),
    ("Do you offer a student discount?", "Is there a discount for students?"),
    ("Which browsers are supported?", "What browsers do you support?"),
    ("How do I enable two-factor authentication?", "How can I turn on two-factor authentication?"),
    ("Where can I download the mobile app?", "Where do I download the mobile app?"),
    ("How do I change my email address?", "How can I change my email address?"),
    ("What is your refund policy?", "What's the refund policy?"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=len(PAIRS), help=f"<= {len(PAIRS)}")
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
        cache.embedder.embed(["warm up"])  # load the ONNX model; not a lookup, not counted
        pairs = PAIRS[: args.queries]
        for question, _ in pairs:
            cache.get_or_compute(question)
        for _, paraphrase in pairs:
            cache.get_or_compute(paraphrase)
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
