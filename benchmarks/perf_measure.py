"""The timed parts of the performance suite: search, fidelity, exact path, e2e, bulk, embedder.

Every latency is one call for one probe, timed with ``time.perf_counter`` with the
garbage collector paused. In the search benchmark the methods run INTERLEAVED on
each probe (rotating which goes first), so a burst of load from another process on
a shared machine hits every method alike and the ratios stay meaningful.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from perf_build import remove_db
from perf_data import SINGLE_NAMESPACE, IntArray, Layout, Rows, Source, exact_nearest

from semcache_sqlite import LLMError, LocalEmbedder, SemanticCache
from semcache_sqlite.cache import GIVEN_VECTORS_BATCH
from semcache_sqlite.validation import SIMILARITY_EPSILON, FloatMatrix, normalize_query, query_hash

Floats = npt.NDArray[np.float64]

#: Thresholds at which decision fidelity is reported besides the cache's default.
FIDELITY_THRESHOLDS = (0.8, 0.9, 0.95)
#: Two entries whose exact cosines to a probe differ by less than this are a tie.
TIE_TOLERANCE = 1e-6
METHODS = ("search_vector", "find_similar", "sqlite_vec_float", "numpy_exact", "python_loop")


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Percentiles in milliseconds (p99 of fewer than 100 samples is close to the max)."""
    if not seconds:
        return {"n": 0}
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "n": len(ms),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


def refuse(query: str) -> str:
    """The LLM of timed get_or_compute calls: a lookup the guards refuse stores nothing."""
    raise RuntimeError("benchmark: no LLM here")


@contextmanager
def gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class SearchInputs:
    rows: Rows
    layout: Layout
    cache: SemanticCache
    raw_conn: Any  # a connection to the raw vec0 file (sqlite-vec loaded)
    raw_sql: str
    probe_vectors: FloatMatrix
    probes: int
    loop_probes: int
    row_list: list[FloatMatrix]  # the seed's list of embeddings, for the Python loop
    warmup: int = 2


@dataclass
class _Picks:
    """Which row each method chose for each probe, and the similarity it reported."""

    row: IntArray
    sim: Floats

    @classmethod
    def empty(cls, n: int) -> _Picks:
        return cls(np.full(n, -1, dtype=np.int64), np.full(n, np.nan, dtype=np.float64))


def measure_search(inp: SearchInputs) -> dict[str, Any]:
    """Latency of every method on the same probes, then the library's decision fidelity."""
    rows, layout, cache = inp.rows, inp.layout, inp.cache
    default = cache.threshold  # find_similar at the lookups' threshold (default guards)
    n = min(inp.probes, len(inp.probe_vectors))
    n_loop = min(inp.loop_probes, n)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    picks = {m: _Picks.empty(n) for m in METHODS}
    leaks = {"search_vector": 0, "sqlite_vec_float": 0}
    matrix, row_list = rows.vectors, inp.row_list
    with_ns = "namespace = ?" in inp.raw_sql
    schedule = [*range(min(inp.warmup, n)), *range(n)]  # warm-up probes first, untimed
    with gc_paused():
        for step, i in enumerate(schedule):
            timed = step >= len(schedule) - n
            q = inp.probe_vectors[i]
            ns = int(layout.probe_ns[i])
            name = layout.names[ns]
            lo, hi = layout.bounds(ns)
            rotation = step % len(METHODS)
            for method in METHODS[rotation:] + METHODS[:rotation]:
                if method == "python_loop" and (not timed or i >= n_loop):
                    continue
                result: Any
                t0 = time.perf_counter()
                if method == "search_vector":
                    result = cache.search_vector(q, k=1, namespace=name)
                elif method == "find_similar":
                    result = cache.find_similar(q, namespace=name, threshold=default)
                elif method == "sqlite_vec_float":
                    params = (q.tobytes(), name) if with_ns else (q.tobytes(),)
                    result = inp.raw_conn.execute(inp.raw_sql, params).fetchall()
                elif method == "numpy_exact":
                    sims = matrix[lo:hi] @ q
                    j = int(np.argmax(sims))
                    result = (lo + j, float(sims[j]))
                else:  # the seed tutorial: a Python loop of np.dot over rows, keeping the best
                    best, best_row = -2.0, -1
                    for r in range(lo, hi):
                        s = float(np.dot(row_list[r], q))
                        if s > best:
                            best, best_row = s, r
                    result = (best_row, best)
                elapsed = time.perf_counter() - t0
                if not timed:
                    continue
                times[method].append(elapsed)
                _record(method, result, picks[method], i, rows, leaks, layout, ns)
    out: dict[str, Any] = {
        "probes": n,
        "loop_probes": n_loop,
        "latency": {m: summarize(times[m]) for m in METHODS},
        "namespace_leaks": leaks,
    }
    out.update(_fidelity(inp, picks, n, default))
    return out


def _record(
    method: str,
    result: Any,
    picks: _Picks,
    i: int,
    rows: Rows,
    leaks: dict[str, int],
    layout: Layout,
    ns: int,
) -> None:
    if method == "search_vector":
        if result:
            picks.row[i] = rows.row_of_text[result[0].query]
            picks.sim[i] = result[0].similarity
            leaks[method] += int(result[0].namespace != layout.names[ns])
    elif method == "find_similar":
        if result is not None:
            picks.row[i] = Rows.row_of_response(result[0])
            picks.sim[i] = result[1]
    elif method == "sqlite_vec_float":
        if result:
            picks.row[i] = int(result[0][0]) - 1
            picks.sim[i] = 1.0 - float(result[0][1])
            leaks[method] += int(layout.namespace_of_row(int(picks.row[i])) != ns)
    else:
        picks.row[i], picks.sim[i] = result


def _same_choice(inp: SearchInputs, pick: _Picks, exact: _Picks, n: int) -> npt.NDArray[np.bool_]:
    """The same entry as exact search, or one exactly as similar (a tie, e.g. equal vectors)."""
    chosen = np.zeros(n, dtype=np.float64)
    ok = pick.row[:n] >= 0
    idx = np.nonzero(ok)[0]
    chosen[idx] = np.einsum(
        "ij,ij->i", inp.rows.vectors[pick.row[idx]], inp.probe_vectors[idx]
    ).astype(np.float64)
    same: npt.NDArray[np.bool_] = ok & (
        (pick.row[:n] == exact.row[:n]) | (chosen >= exact.sim[:n] - TIE_TOLERANCE)
    )
    return same


def _fidelity(
    inp: SearchInputs, picks: dict[str, _Picks], n: int, default: float
) -> dict[str, Any]:
    exact, ours = picks["numpy_exact"], picks["search_vector"]
    same = _same_choice(inp, ours, exact, n)
    ours_cos = np.full(n, np.nan)
    ok = ours.row[:n] >= 0
    ours_cos[ok] = np.einsum(
        "ij,ij->i", inp.rows.vectors[ours.row[:n][ok]], inp.probe_vectors[:n][ok]
    )
    fidelity: dict[str, Any] = {}
    labels = [("default", default), *((f"{t:.2f}", t) for t in FIDELITY_THRESHOLDS)]
    for label, t in labels:
        exact_hit = exact.sim[:n] >= t - SIMILARITY_EPSILON
        ours_hit = np.nan_to_num(ours.sim[:n], nan=-2.0) >= t - SIMILARITY_EPSILON
        agree = (exact_hit == ours_hit) & (~exact_hit | same)
        fidelity[label] = {
            "threshold": t,
            "agree": float(agree.mean()) if n else 0.0,
            "disagree": int((~agree).sum()),
            "exact_hit_rate": float(exact_hit.mean()) if n else 0.0,
            "ours_hit_rate": float(ours_hit.mean()) if n else 0.0,
        }
    fs = picks["find_similar"]
    fs_hit = fs.row[:n] >= 0
    exact_hit = exact.sim[:n] >= default - SIMILARITY_EPSILON
    fs_agree = (fs_hit == exact_hit) & (~exact_hit | _same_choice(inp, fs, exact, n))
    raw_same = _same_choice(inp, picks["sqlite_vec_float"], exact, n)
    errors = np.abs(ours.sim[:n][ok] - ours_cos[ok])
    loop_n = min(inp.loop_probes, n)
    loop_same = _same_choice(inp, picks["python_loop"], exact, n)[:loop_n]
    return {
        "fidelity": fidelity,
        "find_similar_agree_default": float(fs_agree.mean()) if n else 0.0,
        "top1_agree": {
            "search_vector": float(same.mean()) if n else 0.0,
            "sqlite_vec_float": float(raw_same.mean()) if n else 0.0,
            "python_loop": float(loop_same.mean()) if loop_n else 0.0,
        },
        "ties": int((same & (ours.row[:n] != exact.row[:n])).sum()),
        "max_similarity_error": float(errors.max()) if len(errors) else 0.0,
    }


def measure_guarded_fidelity(
    path: Path | str, inp: SearchInputs, count: int, fast: Mapping[str, Any]
) -> dict[str, Any]:
    """The whole decision with the guards on (``find_similar`` at the cache's default
    threshold): the fast path (``fast``: its SemanticCache options) vs the same file opened with
    ``exact_search=True`` (every exact vector of the namespace scanned). Same hit/miss
    and the same entry."""
    n = min(count, len(inp.probe_vectors))
    agree = hits = 0
    opts: dict[str, Any] = {"embedder": LocalEmbedder(), "read_only": True}
    with (
        SemanticCache(path, **fast, **opts) as fast_cache,
        SemanticCache(path, exact_search=True, **opts) as exact,
    ):
        threshold = fast_cache.threshold  # the lookups' (default guards), as measure_search
        for i in range(n):
            name = inp.layout.names[int(inp.layout.probe_ns[i])]
            vector = inp.probe_vectors[i]
            ours = fast_cache.find_similar(vector, namespace=name, threshold=threshold)
            want = exact.find_similar(vector, namespace=name, threshold=threshold)
            hits += want is not None
            same_entry = ours is not None and want is not None and ours[0] == want[0]
            agree += (ours is None and want is None) or same_entry
    return {
        "probes": n,
        "agree": agree / n if n else 0.0,
        "disagree": n - agree,
        "exact_hit_rate": hits / n if n else 0.0,
    }


def measure_exact_repeat(
    cache: SemanticCache, rows: Rows, layout: Layout, count: int, seed: int
) -> dict[str, Any]:
    """``lookup()`` of a cached query re-typed (upper case, extra spaces): the exact path."""
    rng = random.Random(seed)
    picked = rng.sample(range(rows.size), min(count, rows.size))
    times: list[float] = []
    exact = 0
    with gc_paused():
        for row in picked:
            text = rows.texts[row]
            variant = f"  {text.upper()}  "
            if normalize_query(variant) != normalize_query(text):
                variant = f"{text}  "
            name = layout.names[layout.namespace_of_row(row)]
            t0 = time.perf_counter()
            result = cache.lookup(variant, namespace=name)
            times.append(time.perf_counter() - t0)
            exact += int(result is not None and result.exact and result.query == text)
    return {**summarize(times), "exact_share": exact / len(picked) if picked else 0.0}


def measure_e2e(
    cache: SemanticCache, rows: Rows, layout: Layout, source: Source, count: int
) -> dict[str, Any]:
    """``get_or_compute(text)`` served from the cache: paraphrase hits, end to end.

    Probes whose exact nearest entry is at or above the threshold are asked in turn
    until ``count`` of them are served (or none are left). The embedder runs on every
    call (no probe text is cached). The LLM passed raises, so a lookup the guards
    refuse stores nothing; its time is reported apart ("refused"), since a refused
    lookup is followed by an LLM call and is not a hit. "embed only" (the embedder on
    the same text) and "guarded search" (``find_similar`` on the probe's vector: the
    KNN and the guards' neighbours, the guards without the text signals, and the
    lookup counted, one small write) run interleaved with each call, to show how a
    hit's time splits under the same load. The interleaving rotates with the hits
    timed so far, so served hits take each position in turn.
    """
    threshold = cache.threshold
    best_row, best_cos = exact_nearest(rows, layout, source.probe_vectors, layout.probe_ns)
    chosen = [i for i in range(len(source.probes)) if best_cos[i] >= threshold - SIMILARITY_EPSILON]

    cache.embedder.embed(["warm up the embedding model"])
    times: dict[str, list[float]] = {"hit": [], "refused": [], "embed": [], "search": []}
    same = tried = 0
    with gc_paused():
        for i in chosen:
            if len(times["hit"]) >= count:
                break
            tried += 1
            text, vector = source.probes[i].text, source.probe_vectors[i]
            name = layout.names[int(layout.probe_ns[i])]
            rotation = len(times["hit"]) % 3
            response, cached = "", False
            spent: dict[str, float] = {}
            for part in (["e2e", "embed", "search"] * 2)[rotation : rotation + 3]:
                t0 = time.perf_counter()
                if part == "e2e":
                    try:
                        response, cached = cache.get_or_compute(text, refuse, namespace=name)
                    except LLMError:
                        response, cached = "", False
                elif part == "embed":
                    cache.embedder.embed([text])
                else:
                    cache.find_similar(vector, namespace=name, threshold=threshold)
                spent[part] = time.perf_counter() - t0
            times["hit" if cached else "refused"].append(spent["e2e"])
            if cached:  # the splits are of the hits
                times["embed"].append(spent["embed"])
                times["search"].append(spent["search"])
                row = Rows.row_of_response(response)
                cos = float(rows.vectors[row] @ vector)
                same += int(row == best_row[i] or cos >= best_cos[i] - TIE_TOLERANCE)
    return {
        "threshold": threshold,
        "candidates": len(chosen),
        "tried": tried,
        "hits": len(times["hit"]),
        "same_entry_as_exact": same,
        "latency": summarize(times["hit"]),
        "refused": summarize(times["refused"]),
        "embed_only": summarize(times["embed"]),
        "search_only": summarize(times["search"]),
    }


def measure_bulk(workdir_file: Callable[[str], Path], rows: Rows, count: int) -> dict[str, Any]:
    """Entries/s into a fresh file, vectors given: public ``store_many`` (it checks each
    query for an existing duplicate) vs the private ``Store.insert_many`` (no check), both
    GIVEN_VECTORS_BATCH entries per transaction (store_many's default batch when the
    vectors are given)."""
    count = min(count, rows.size)
    texts, vectors, responses = rows.texts[:count], rows.vectors[:count], rows.responses(0, count)
    out: dict[str, Any] = {"entries": count, "batch": GIVEN_VECTORS_BATCH}
    path = workdir_file("bulk-store_many.db")
    remove_db(path)
    with SemanticCache(path, embedder=LocalEmbedder()) as cache:
        t0 = time.perf_counter()
        cache.store_many(texts, responses, embeddings=vectors, namespace=SINGLE_NAMESPACE)
        seconds = time.perf_counter() - t0
    out["store_many"] = {"seconds": seconds, "entries_per_s": count / seconds}
    remove_db(path)
    path = workdir_file("bulk-insert_many.db")
    remove_db(path)
    try:
        seconds = _insert_many_private(path, texts, responses, vectors)
    except (AttributeError, ImportError, TypeError) as exc:  # the private API changed
        out["insert_many_private"] = {"error": f"{type(exc).__name__}: {exc}"}
    else:
        out["insert_many_private"] = {"seconds": seconds, "entries_per_s": count / seconds}
    remove_db(path)
    return out


def _insert_many_private(
    path: Path, texts: list[str], responses: list[str], vectors: FloatMatrix
) -> float:
    """Seconds to bulk-load through the private ``Store.insert_many``, as many per
    transaction as store_many puts."""
    from semcache_sqlite.store import NewEntry  # private: imported here so a rename is caught

    with SemanticCache(path, embedder=LocalEmbedder()) as cache:
        store, model_id, context_key = cache._store, cache.embedder.model_id, cache.context_key()
        t0 = time.perf_counter()
        for s in range(0, len(texts), GIVEN_VECTORS_BATCH):
            e = min(len(texts), s + GIVEN_VECTORS_BATCH)
            entries = [
                NewEntry(SINGLE_NAMESPACE, "", context_key, t, query_hash(t), r, {})
                for t, r in zip(texts[s:e], responses[s:e], strict=True)
            ]
            store.insert_many(entries, list(vectors[s:e]), model_id)
        return time.perf_counter() - t0


def measure_embedder(
    texts: Sequence[str], warm_file: Path, single: int = 100, batch: int = 512
) -> dict[str, Any]:
    """The default embedder in this process: one query at a time, in batches, and as
    ``store_many`` uses it to warm a cache (the same texts, embedded by the cache)."""
    embedder = LocalEmbedder()
    embedder.embed(["warm up the embedding model"])
    singles: list[float] = []
    with gc_paused():
        for text in list(texts)[:single]:
            t0 = time.perf_counter()
            embedder.embed([text])
            singles.append(time.perf_counter() - t0)
    chunk = list(texts)[:batch]
    t0 = time.perf_counter()
    embedder.embed(chunk)
    seconds = time.perf_counter() - t0
    remove_db(warm_file)
    with SemanticCache(warm_file, embedder=embedder) as cache:
        t0 = time.perf_counter()
        cache.store_many(chunk, [f"answer {i}" for i in range(len(chunk))])
        warm = time.perf_counter() - t0
    remove_db(warm_file)
    return {
        "model_id": embedder.model_id,
        "single_query": summarize(singles),
        "batch": {"texts": len(chunk), "seconds": seconds, "sentences_per_s": len(chunk) / seconds},
        "warm_up": {"texts": len(chunk), "seconds": warm, "entries_per_s": len(chunk) / warm},
    }
