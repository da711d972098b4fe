"""The seed tutorial's session, runnable offline: ``semcache demo``.

It warms the cache from a small FAQ shipped with the package (one batch
embedding call), then asks five queries: a paraphrase of an FAQ question, a new
question, a paraphrase of that new question, an exact repeat, and a question
that looks alike but means something else. Misses go to an LLM when one is
configured; with none, a miss stays a miss and nothing is stored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from importlib import resources

from .cache import SemanticCache

DEMO_QUERIES = (
    "How can I reset my password?",  # paraphrase of an FAQ question
    "What is the capital of France?",  # not in the FAQ: needs the LLM
    "What's the capital city of France?",  # paraphrase of the previous query
    "How do I reset my password?",  # exact repeat of an FAQ question
    "How do I reset my router?",  # looks alike, means something else
)

NO_LLM_HINT = (
    "no LLM configured, so misses stay misses and nothing is stored. To call one, set "
    "OPENAI_API_KEY (and OPENAI_BASE_URL for an OpenAI-compatible server such as Ollama "
    "or vLLM) or pass --base-url/--model."
)


def load_faq() -> list[tuple[str, str]]:
    text = resources.files("semcache_sqlite.data").joinpath("demo_faq.jsonl").read_text("utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [(str(row["question"]), str(row["answer"])) for row in rows]


def run_demo(
    cache: SemanticCache,
    llm: Callable[[str], str] | None,
    echo: Callable[[str], None] = print,
) -> dict[str, object]:
    """Warm the cache, ask the five queries, print what happened; return stats()."""
    faq = load_faq()
    before = cache.stats()["cached_entries"]
    started = time.perf_counter()
    # "keep": a second run finds its FAQ stored and leaves it (no embedding, no new
    # versions); the answers it learnt from the LLM stay too.
    cache.store_many([q for q, _ in faq], [a for _, a in faq], on_duplicate="keep")
    echo(
        f"cache file: {cache.path} ({before} entries before this run); warmed with "
        f"{len(faq)} FAQ entries in {time.perf_counter() - started:.2f}s "
        f"[{cache.embedder.model_id}, threshold {cache.threshold:.2f}]"
    )
    if llm is None:
        echo(f"note: {NO_LLM_HINT}")
    echo("")
    for query in DEMO_QUERIES:
        started = time.perf_counter()
        result = cache.lookup(query)
        elapsed = (time.perf_counter() - started) * 1000
        if result is not None:
            how = "exact" if result.exact else f"similarity {result.similarity:.3f}"
            echo(f"HIT  ({how}, {elapsed:.1f} ms) {query}")
            echo(f"     matched: {result.query}")
            echo(f"     answer:  {result.response}")
            continue
        nearest = cache.search(query, k=1)
        closest = f"closest {nearest[0].similarity:.3f}" if nearest else "cache empty"
        if llm is None:
            echo(f"MISS ({closest}, {elapsed:.1f} ms) {query}")
            echo("     no LLM configured: not answered, nothing stored")
            continue
        # The demo's entries, FAQ and learnt answers alike, live in one scope (no LLM
        # context), so the LLM is asked here and its answer stored beside the FAQ.
        answer = llm(query)  # an LLMError propagates: nothing is stored
        cache.store(query, None, answer)
        echo(f"MISS ({closest}, {elapsed:.1f} ms) {query}")
        echo(f"     LLM answer stored: {answer}")
    stats = cache.stats()
    echo("")
    echo(
        "statistics (persisted in the file): "
        f"{stats['cached_entries']} entries, {stats['hits']} hits, {stats['misses']} misses, "
        f"{stats['total_requests']} requests, hit rate {stats['hit_rate']:.0%}"
    )
    return stats
