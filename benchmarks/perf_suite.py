"""The orchestration behind ``perf_search.py`` (see its docstring and benchmarks/README.md)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_vec
from perf_build import (
    Workdir,
    build_library,
    build_raw_vec,
    drop_os_cache,
    file_bytes,
    layout_fingerprint,
    library_code_hash,
    library_file_name,
    raw_knn_sql,
    rows_fingerprint,
)
from perf_data import (
    Layout,
    Rows,
    Source,
    make_layout,
    make_rows,
    padding_note,
    qqp_available,
    qqp_source,
    synthetic_source,
)
from perf_measure import (
    SearchInputs,
    measure_bulk,
    measure_e2e,
    measure_embedder,
    measure_exact_repeat,
    measure_guarded_fidelity,
    measure_search,
)
from perf_report import compute_goals, print_report, ratios
from qqp_data import add_data_arguments

import semcache_sqlite
from semcache_sqlite import LocalEmbedder, SemanticCache
from semcache_sqlite.db import DEFAULT_MMAP_SIZE, Database
from semcache_sqlite.vector_cells import PROBED_CELLS
from semcache_sqlite.vector_index import DEFAULT_CANDIDATES

HERE = Path(__file__).resolve().parent
CHILD = HERE / "perf_child.py"
LARGE = 200_000  # sizes above this use the --probes-1m / --rss-probes-1m counts
E2E_SIZE = 100_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="semcache-sqlite performance suite (see benchmarks/README.md)"
    )
    add_data_arguments(parser)
    parser.add_argument("--sizes", default="10000,100000", help="entries (default: %(default)s)")
    parser.add_argument("--with-1m", action="store_true", help="add 1,000,000 entries (slow)")
    parser.add_argument("--namespaces", type=int, default=1000, help="multi-namespace layout")
    parser.add_argument("--probes", type=int, default=1000, help="probes per size <= 200k")
    parser.add_argument("--probes-1m", type=int, default=50, help="probes per size > 200k")
    parser.add_argument("--loop-probes", type=int, default=50, help="probes for the Python loop")
    parser.add_argument("--exact-probes", type=int, default=500, help="exact-repeat lookups")
    parser.add_argument(
        "--guarded-probes",
        type=int,
        default=200,
        help="probes whose guarded decision is compared with an exact scan's (slow: O(entries))",
    )
    parser.add_argument("--e2e-probes", type=int, default=200, help="get_or_compute hits to time")
    parser.add_argument("--bulk-entries", type=int, default=50_000, help="bulk insert test")
    parser.add_argument("--open-repeats", type=int, default=3, help="subprocess runs per file")
    parser.add_argument("--rss-probes", type=int, default=10, help="lookups per RSS subprocess")
    parser.add_argument("--rss-probes-1m", type=int, default=3, help="the same above 200k")
    parser.add_argument(
        "--source",
        choices=("auto", "qqp", "synthetic"),
        default="auto",
        help="qqp: real data (embeds it if not cached); auto: qqp if its embeddings are "
        "cached, else synthetic (default: %(default)s)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=DEFAULT_CANDIDATES,
        help="SemanticCache(search_candidates=...) of the fast path: Hamming-nearest "
        "entries re-scored per lookup (default: %(default)s, the library's)",
    )
    parser.add_argument(
        "--cells",
        type=int,
        default=PROBED_CELLS,
        help="SemanticCache(search_cells=...) of the fast path: cells scanned per lookup "
        "in a namespace with cells (default: %(default)s, the library's)",
    )
    parser.add_argument(
        "--mmap-size",
        type=int,
        default=DEFAULT_MMAP_SIZE,
        help="SemanticCache(mmap_size=...): bytes of the file read through a memory map "
        "(default: %(default)s, the library's; 268435456 = 256 MiB)",
    )
    parser.add_argument("--workdir", default="/tmp/semcache-perf", help="where files are built")
    parser.add_argument("--reuse", action="store_true", help="reuse unchanged built files")
    parser.add_argument("--json", type=Path, default=None, help="default: <workdir>/results.json")
    args = parser.parse_args(argv)
    sizes = {int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()}
    if args.with_1m:
        sizes.add(1_000_000)
    args.size_list = sorted(sizes)
    return args


def fast_options(args: argparse.Namespace) -> dict[str, Any]:
    """SemanticCache options of the fast path under test."""
    return {
        "search_candidates": args.candidates,
        "search_cells": args.cells,
        "mmap_size": args.mmap_size,
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_source(args: argparse.Namespace) -> Source:
    wanted = max(args.probes, args.probes_1m, args.e2e_probes)
    if args.source == "auto":
        reason = qqp_available(args.data, args.cache_dir, args.limit, args.seed)
        if reason is not None:
            log(f"{reason}: falling back to the SYNTHETIC data set (--source synthetic)")
            return synthetic_source(LocalEmbedder(), wanted, args.seed)
    if args.source == "synthetic":
        return synthetic_source(LocalEmbedder(), wanted, args.seed)
    return qqp_source(args.data, args.cache_dir, args.limit, wanted, args.seed)


def run_child(mode: str, spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(CHILD), mode, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{CHILD.name} {mode} failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure_open(
    args: argparse.Namespace, workdir: Workdir, path: str, source: Source, layout: Layout, tag: str
) -> dict[str, Any]:
    """Fresh subprocesses: open + first search (OS cache warm, then dropped) and peak RSS."""
    large = int(layout.offsets[-1]) > LARGE
    count = max(1, min(args.rss_probes_1m if large else args.rss_probes, len(source.probes)))
    probes_file = workdir.file(f"probes-{tag}.npy")
    np.save(probes_file, source.probe_vectors[:count])
    names = [layout.names[int(ns)] for ns in layout.probe_ns[:count]]
    spec = {
        "path": path,
        "probes": str(probes_file),
        "namespaces": names,
        "fast": fast_options(args),
    }
    first_only = {**spec, "namespaces": names[:1]}
    np.save(workdir.file(f"probes-{tag}-1.npy"), source.probe_vectors[:1])
    first_only["probes"] = str(workdir.file(f"probes-{tag}-1.npy"))
    warm = [run_child("open", spec) for _ in range(args.open_repeats)]
    dropped_ok = True
    dropped = []
    for _ in range(args.open_repeats):
        dropped_ok = drop_os_cache(path) and dropped_ok
        dropped.append(run_child("open", first_only))

    def median_ms(runs: list[dict[str, Any]], key: str) -> float:
        return float(np.median([r[key] for r in runs])) * 1e3

    return {
        "warm": {
            "open_ms": median_ms(warm, "open_s"),
            "first_search_ms": median_ms(warm, "first_search_s"),
            "open_and_first_ms": median_ms(warm, "open_and_first_s"),
            "import_ms": median_ms(warm, "import_s"),
        },
        "dropped": {
            "os_cache_dropped": dropped_ok,
            "open_ms": median_ms(dropped, "open_s"),
            "first_search_ms": median_ms(dropped, "first_search_s"),
            "open_and_first_ms": median_ms(dropped, "open_and_first_s"),
        },
        "rss_searches": count,
        "rss_after_import": int(np.median([r["rss_after_import"] for r in warm])),
        "rss_end": max(r["rss_end"] for r in warm),
        "rss_growth_over_import": max(r["rss_end"] - r["rss_after_import"] for r in warm),
        "peak_rss": max(r["peak_rss"] for r in warm),
        "sqlite_cache_bytes": warm[0]["sqlite_cache_bytes"],
        "sqlite_mmap_bytes": warm[0].get("sqlite_mmap_bytes"),
        "private_growth": _max_or_none(r.get("private_growth") for r in warm),
        "file_backed_growth": _max_or_none(r.get("file_backed_growth") for r in warm),
        "runs": {"warm": warm, "dropped": dropped},
    }


def file_figures(rows: Rows, lib_path: str, raw_path: str) -> dict[str, Any]:
    text = sum(len(t.encode("utf-8")) for t in rows.texts)
    text += sum(len(rows.response(i).encode("utf-8")) for i in range(rows.size))
    lib, raw = file_bytes(lib_path), file_bytes(raw_path)
    return {
        "library_bytes": lib,
        "library_bytes_per_entry": lib / rows.size,
        "text_bytes_per_entry": text / rows.size,
        "library_bytes_per_entry_minus_text": (lib - text) / rows.size,
        "raw_vec_bytes": raw,
        "raw_vec_bytes_per_entry": raw / rows.size,
    }


def run_case(
    args: argparse.Namespace,
    workdir: Workdir,
    source: Source,
    rows: Rows,
    rows_fp: str,
    row_list: list[Any],
    namespaces: int,
    e2e: list[dict[str, Any]],
) -> dict[str, Any]:
    layout = make_layout(source, rows, namespaces, args.seed)
    tag = f"{rows.size}-{layout.count}ns"
    fp = layout_fingerprint(rows_fp, layout)
    log(f"{rows.size:,} entries, {layout.label}: building / reusing files")
    lib = build_library(workdir, library_file_name(rows.size, layout.count), rows, layout, fp)
    raw = build_raw_vec(workdir, f"raw-{tag}.db", rows, layout, fp)
    files = file_figures(rows, lib.path, raw.path)
    large = rows.size > LARGE
    probes = args.probes_1m if large else args.probes
    log(f"{rows.size:,} entries, {layout.label}: search latency over {probes} probes")
    raw_db = Database(raw.path)
    try:
        fast = fast_options(args)
        with SemanticCache(lib.path, embedder=LocalEmbedder(), **fast) as cache:
            inputs = SearchInputs(
                rows=rows,
                layout=layout,
                cache=cache,
                raw_conn=raw_db.connection(),
                raw_sql=raw_knn_sql(layout),
                probe_vectors=source.probe_vectors,
                probes=probes,
                loop_probes=min(args.loop_probes, probes),
                row_list=row_list,
            )
            search = measure_search(inputs)
            exact = measure_exact_repeat(cache, rows, layout, args.exact_probes, args.seed)
        log(f"{rows.size:,} entries, {layout.label}: guarded decisions, fast vs exact scan")
        guarded = min(probes, args.guarded_probes)
        search["guarded_fidelity"] = measure_guarded_fidelity(lib.path, inputs, guarded, fast)
        with SemanticCache(lib.path, embedder=LocalEmbedder(), **fast) as cache:
            if rows.size == e2e_size(args.size_list):
                log(f"{rows.size:,} entries, {layout.label}: end-to-end get_or_compute")
                e2e.append(
                    {
                        "entries": rows.size,
                        "layout": layout.label,
                        **measure_e2e(cache, rows, layout, source, args.e2e_probes),
                    }
                )
    finally:
        raw_db.close()
    log(f"{rows.size:,} entries, {layout.label}: cold open and RSS in subprocesses")
    sizes = layout.sizes()
    return {
        "entries": rows.size,
        "namespaces": layout.count,
        "layout": layout.label,
        "real_entries": rows.real,
        "synthetic_entries": rows.synthetic,
        "namespace_sizes": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "max": int(sizes.max()),
        },
        "search": search,
        "ratios": ratios(search["latency"]),
        "exact_repeat": exact,
        "files": files,
        "build": {"library": lib.__dict__, "raw_vec": raw.__dict__},
        "open": measure_open(args, workdir, lib.path, source, layout, tag),
    }


def _max_or_none(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def e2e_size(sizes: list[int]) -> int:
    """100k if measured, else the largest size below it, else the smallest."""
    below = [s for s in sizes if s <= E2E_SIZE]
    return max(below) if below else min(sizes)


def meta(args: argparse.Namespace, source: Source) -> dict[str, Any]:
    probe_db = Database(":memory:")
    try:
        info = probe_db.driver_info()
    finally:
        probe_db.close()
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv[1:],
        "sizes": args.size_list,
        "source_kind": source.kind,
        "source": source.description,
        "padding": {},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "driver": info.driver,
        "sqlite_version": info.sqlite_version,
        "sqlite_vec": getattr(sqlite_vec, "__version__", info.sqlite_vec_version),
        "library_version": semcache_sqlite.__version__,
        "library_code_sha256": library_code_hash(),
        "workdir": str(Path(args.workdir).expanduser()),
        "load_average_start": load_average(),
        "search_candidates": args.candidates,
        "search_cells": args.cells,
        "mmap_size": args.mmap_size,
    }


def load_average() -> list[float] | None:
    """1/5/15-minute load averages: how busy the shared machine was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run(argv: list[str] | None = None, blas_pinned: bool = False) -> dict[str, Any]:
    """Run the suite; print the report; write and return the results."""
    args = parse_args(argv)
    started = time.perf_counter()
    workdir = Workdir(args.workdir, args.reuse)
    source = load_source(args)
    log(source.description)
    results: dict[str, Any] = {"meta": meta(args, source), "cases": [], "e2e": [], "bulk": {}}
    results["meta"]["blas"] = {
        "threads": {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "set_before_numpy_import": blas_pinned,
    }
    log("embedder throughput")
    results["embedder"] = {
        **measure_embedder(source.sample_texts, workdir.file("warm-up.db")),
        "cold": run_child("embed", {}),
    }
    bulk_at = next((s for s in args.size_list if s >= args.bulk_entries), args.size_list[-1])
    for size in args.size_list:
        log(f"{size:,} entries: preparing data")
        rows = make_rows(source, size, args.seed)
        results["meta"]["padding"][str(size)] = padding_note(rows)
        rows_fp = rows_fingerprint(rows)
        row_list = list(rows.vectors)
        for namespaces in sorted({1, max(1, args.namespaces)}):
            results["cases"].append(
                run_case(args, workdir, source, rows, rows_fp, row_list, namespaces, results["e2e"])
            )
        if size == bulk_at:
            log(f"bulk insert of {min(args.bulk_entries, size):,} entries into fresh files")
            results["bulk"] = measure_bulk(workdir.file, rows, args.bulk_entries)
        del rows, row_list
    results["meta"]["load_average_end"] = load_average()
    results["goals"] = compute_goals(results)
    results["meta"]["seconds"] = time.perf_counter() - started
    print_report(results)
    out = args.json or workdir.file("results.json")
    Path(out).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nJSON: {out} ({results['meta']['seconds']:.0f} s)")
    return results
