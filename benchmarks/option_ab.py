"""A/B of SemanticCache options on one of the suite's files, lookups interleaved.

Run from the repository root, after ``perf_search.py`` has built the file (QQP
embeddings cached as for perf_search.py; ~3 minutes at 100k entries):

    python benchmarks/option_ab.py                                  # the memory map, off vs on
    python benchmarks/option_ab.py --variant "default" --variant "c12 search_cells=12"

Each ``--variant "NAME [option=value ...]"`` opens the file once with those
``SemanticCache`` options (values are Python literals); ``file='PATH'`` opens another
file instead, e.g. a copy of the suite's in another layout (the same entries and ids),
to compare layouts the same way:

    python benchmarks/option_ab.py --namespaces 1000 \
        --variant "old file='/tmp/old.db' read_only=True" \
        --variant "new file='/tmp/new.db' read_only=True"

Every probe of the suite is
asked of every variant in turn, the order rotating per probe, so that each variant
meets the same machine load and the same state of the CPU caches: differences of a
few percent between separate runs of the suite are the machine's noise, not the
option's. Per variant, p50 / p99 in ms and the p50 against the first variant:

- ``search_vector``: k=1, every probe;
- ``find_similar, servable``: the probes whose exact nearest entry is at or above
  the threshold (in a namespace with cells every cell is then scanned for the guards'
  neighbours; the lookup is counted, a small write);
- ``get_or_compute hit``: the same probes by text, the local embedder included; hits
  only (the guards refuse many; a refusal calls an LLM that raises, and stores nothing).
"""

from __future__ import annotations

import argparse
import ast
import time
from pathlib import Path
from typing import Any

import numpy as np
from perf_build import library_file_name
from perf_data import exact_nearest, make_layout, make_rows, qqp_source, synthetic_source
from perf_measure import gc_paused, refuse, summarize
from qqp_data import add_data_arguments

from semcache_sqlite import LLMError, LocalEmbedder, SemanticCache
from semcache_sqlite.validation import SIMILARITY_EPSILON

FIGURES = ("search_vector", "find_similar, servable", "get_or_compute hit")
DEFAULT_VARIANTS = ["default", "mapped mmap_size=268435456"]


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``"NAME key=value ..."`` -> (NAME, options); a value is a Python literal."""
    name, *pairs = text.split()
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"{pair!r}: expected option=value")
        options[key] = ast.literal_eval(value)
    return name, options


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Prints the table; returns {variant: {figure: summarize(...)}}."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--entries", type=int, default=100_000, help="as perf_search.py's size")
    parser.add_argument("--namespaces", type=int, default=1, help="1 or perf_search.py's")
    parser.add_argument(
        "--probes",
        type=int,
        default=1000,
        help="the probes perf_search.py drew: the largest of its --probes, --probes-1m "
        "and --e2e-probes (default: %(default)s, as its defaults)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/semcache-perf"))
    parser.add_argument("--variant", action="append", help="NAME [option=value ...]")
    parser.add_argument(
        "--source",
        choices=("qqp", "synthetic"),
        default="qqp",
        help="as the file was built with (synthetic: the smoke test's)",
    )
    args = parser.parse_args(argv)
    path = args.workdir / library_file_name(args.entries, args.namespaces)
    if not path.is_file():
        parser.error(f"{path} not found: run benchmarks/perf_search.py with this size first")
    variants = dict(parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS))

    if args.source == "qqp":
        source = qqp_source(args.data, args.cache_dir, args.limit, args.probes, args.seed)
    else:
        source = synthetic_source(LocalEmbedder(), args.probes, args.seed)
    rows = make_rows(source, args.entries, args.seed)
    layout = make_layout(source, rows, args.namespaces, args.seed)
    embedder = LocalEmbedder()
    caches = {
        name: SemanticCache(opts.pop("file", path), embedder=embedder, **opts)
        for name, opts in variants.items()
    }
    first = next(iter(caches.values()))
    if first.stats()["cached_entries"] != args.entries:
        parser.error(f"{path} does not hold {args.entries:,} entries")
    _, best = exact_nearest(rows, layout, source.probe_vectors, layout.probe_ns)
    threshold = first.threshold  # find_similar at the lookups' threshold (default guards)
    servable = best >= threshold - SIMILARITY_EPSILON
    embedder.embed(["warm up the embedding model"])

    def lookups(cache: SemanticCache, i: int) -> dict[str, float]:
        """Probe i's figures on this cache, in seconds (absent: not timed)."""
        vector, namespace = source.probe_vectors[i], layout.names[int(layout.probe_ns[i])]
        spent = {}
        start = time.perf_counter()
        cache.search_vector(vector, namespace=namespace)
        spent[FIGURES[0]] = time.perf_counter() - start
        if servable[i]:
            start = time.perf_counter()
            cache.find_similar(vector, namespace=namespace, threshold=threshold)
            spent[FIGURES[1]] = time.perf_counter() - start
            start = time.perf_counter()
            try:
                _, hit = cache.get_or_compute(source.probes[i].text, refuse, namespace=namespace)
            except LLMError:
                hit = False
            if hit:
                spent[FIGURES[2]] = time.perf_counter() - start
        return spent

    names = list(caches)
    times: dict[tuple[str, str], list[float]] = {(n, f): [] for n in names for f in FIGURES}
    with gc_paused():
        for i in range(len(source.probes)):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                for figure, seconds in lookups(caches[name], i).items():
                    times[(name, figure)].append(seconds)
    for cache in caches.values():
        cache.close()
    summary = {n: {f: summarize(times[(n, f)]) for f in FIGURES} for n in names}

    print(
        f"{path}: {args.entries:,} entries in {args.namespaces} namespace(s), "
        f"{len(source.probes)} probes, {int(np.sum(servable))} servable; p50 / p99 ms "
        f"(p50 over {names[0]}'s)"
    )
    for name, opts in variants.items():
        print(f"  {name}: {opts or 'the defaults'}")
    for figure in FIGURES:
        base = summary[names[0]][figure].get("p50_ms", float("nan"))
        cells = []
        for name in names:
            s = summary[name][figure]
            if s["n"]:
                cells.append(
                    f"{name} {s['p50_ms']:.2f} / {s['p99_ms']:.2f} "
                    f"({s['p50_ms'] / base:.2f}x, n={s['n']})"
                )
        print(f"  {figure:24s} " + "   ".join(cells))
    return summary


if __name__ == "__main__":
    main()
