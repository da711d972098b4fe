"""Entry lifecycle on a real file: TTL, purge, eviction policies, duplicates, updates,
invalidation and vacuum, all with a clock the tests move by hand."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clock import FakeClock
from fakes import FakeEmbedder

from semcache_sqlite import (
    EmbedderError,
    InvalidInputError,
    SemanticCache,
    VersionConflictError,
)
from semcache_sqlite import vector_index as vector_index_module
from semcache_sqlite.db import Database
from semcache_sqlite.store_reembed import staged_bytes


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_cache(path: Path, clock: FakeClock, **options: Any) -> SemanticCache:
    options.setdefault("threshold", 0.8)
    options.setdefault("guards", False)  # lifecycle semantics, judged on plain cosine
    return SemanticCache(path, embedder=FakeEmbedder(), clock=clock, **options)


@pytest.fixture
def ttl_cache(db_path: Path, clock: FakeClock) -> Iterator[SemanticCache]:
    with make_cache(db_path, clock, ttl=60) as cache:
        yield cache


def entry_count(cache: SemanticCache) -> int:
    return int(cache.stats()["cached_entries"])


def vector_count(cache: SemanticCache) -> int:
    with cache._store.db.reading() as conn:
        return sum(
            int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("entry_vectors", "entry_vectors_small")
        )


def surviving(cache: SemanticCache, ids: list[int]) -> set[int]:
    with cache._store.db.reading() as conn:
        return {int(r[0]) for r in conn.execute("SELECT id FROM entries")} & set(ids)


# -- TTL ---------------------------------------------------------------------------------


def test_expired_entry_never_served_exact_or_semantic(
    ttl_cache: SemanticCache, clock: FakeClock
) -> None:
    ttl_cache.store("alpha beta gamma delta", None, "fresh")
    clock.advance(59)
    exact = ttl_cache.lookup("alpha beta gamma delta")
    near = ttl_cache.lookup("alpha beta gamma delta epsilon")
    assert exact is not None and exact.exact and near is not None and not near.exact
    clock.advance(1)  # expires_at == now: expired
    assert ttl_cache.lookup("alpha beta gamma delta") is None
    assert ttl_cache.lookup("alpha beta gamma delta epsilon") is None
    vector = ttl_cache.embedder.embed(["alpha beta gamma delta"])[0]
    assert ttl_cache.find_similar(vector) is None
    assert ttl_cache.search("alpha beta gamma delta", k=5) == []
    assert ttl_cache.get_or_compute("alpha beta gamma delta", lambda q: "recomputed") == (
        "recomputed",
        False,
    )
    # the expired entry was replaced by a new one, not updated in place
    assert ttl_cache.get_or_compute("alpha beta gamma delta", lambda q: "x") == ("recomputed", True)
    again = ttl_cache.lookup("alpha beta gamma delta")
    assert again is not None and again.entry.version == 1 and again.entry.hit_count == 1
    assert again.created_at.timestamp() == clock.now and entry_count(ttl_cache) == 1


def test_knn_filters_expiry_inside_the_scan(db_path: Path, clock: FakeClock) -> None:
    with make_cache(db_path, clock) as cache:
        cache.store("alpha beta gamma delta", None, "nearest, short-lived", ttl=10)
        cache.store("alpha beta gamma delta zeta eta", None, "further, long-lived", ttl=None)
        query = "alpha beta gamma delta epsilon"
        hit = cache.lookup(query, threshold=0.7)
        assert hit is not None and hit.response == "nearest, short-lived"
        clock.advance(10)
        # With k=1, a filter applied after the KNN would find the expired row and miss.
        hit = cache.lookup(query, threshold=0.7)
        assert hit is not None and hit.response == "further, long-lived"


def test_ttl_precedence_call_namespace_cache(ttl_cache: SemanticCache, clock: FakeClock) -> None:
    now = clock.now
    ttl_cache.configure_namespace("short", ttl=10)
    ttl_cache.configure_namespace("forever", ttl=None)
    cases = {
        ttl_cache.store("cache default", None, "r"): now + 60,
        ttl_cache.store("per call", None, "r", ttl=5): now + 5,
        ttl_cache.store("per call never", None, "r", ttl=None): None,
        ttl_cache.store("namespace", None, "r", namespace="short"): now + 10,
        ttl_cache.store("namespace never", None, "r", namespace="forever"): None,
        ttl_cache.store("call beats namespace", None, "r", namespace="short", ttl=99): now + 99,
    }
    for entry_id, expected in cases.items():
        expires = ttl_cache.get(entry_id).expires_at
        assert (None if expires is None else expires.timestamp()) == expected
    assert ttl_cache.namespace_policy("short").ttl == 10
    assert ttl_cache.namespace_policy().ttl == 60
    with pytest.raises(InvalidInputError):
        ttl_cache.store("bad", None, "r", ttl=0)
    with pytest.raises(InvalidInputError):
        SemanticCache(ttl_cache.path, embedder=FakeEmbedder(), ttl=-1)


def test_purge_and_lazy_purge_on_writes(ttl_cache: SemanticCache, clock: FakeClock) -> None:
    ttl_cache.store_many([f"expiring {i}" for i in range(10)], ["r"] * 10, ttl=5)
    ttl_cache.store_many([f"keeper {i}" for i in range(3)], ["r"] * 3, ttl=None)
    clock.advance(5)
    assert ttl_cache.purge(namespace="other") == 0
    assert ttl_cache.purge() == 10
    assert ttl_cache.purge() == 0
    assert entry_count(ttl_cache) == vector_count(ttl_cache) == 3

    ttl_cache.store_many([f"again {i}" for i in range(5)], ["r"] * 5, ttl=5)
    clock.advance(6)
    ttl_cache.store("a write", None, "r")  # deletes expired rows in passing
    assert entry_count(ttl_cache) == 4
    assert ttl_cache._store.orphan_counts() == (0, 0)


def test_no_sliding_ttl_by_default(ttl_cache: SemanticCache, clock: FakeClock) -> None:
    ttl_cache.store("alpha beta gamma", None, "r")
    clock.advance(50)
    assert ttl_cache.lookup("alpha beta gamma") is not None
    clock.advance(11)
    assert ttl_cache.lookup("alpha beta gamma") is None


def test_a_sliding_hit_counted_late_does_not_undo_a_later_one(
    db_path: Path, clock: FakeClock
) -> None:
    """A hit whose count waited for the write lock (lookup_counts.py) is written after a
    later hit of another connection: its sliding TTL must not move the expiry back."""
    with (
        make_cache(db_path, clock, ttl=60, sliding_ttl=True) as first,
        make_cache(db_path, clock, ttl=60, sliding_ttl=True) as second,
    ):
        entry_id = first.store("alpha beta gamma delta", None, "r")
        holder = Database(db_path)
        try:
            with holder.transaction():  # another connection holds the write lock
                clock.advance(10)
                assert first.lookup("alpha beta gamma delta") is not None  # its count waits
        finally:
            holder.close()
        clock.advance(30)
        assert second.lookup("alpha beta gamma delta") is not None  # expires at +100 now
        first.close()  # writes the hit of +10, which alone would mean +70
        clock.advance(55)  # +95
        assert second.lookup("alpha beta gamma delta") is not None
        assert second.get(entry_id).hit_count == 3


def test_a_late_sliding_hit_does_not_bring_an_expired_entry_back(
    db_path: Path, clock: FakeClock
) -> None:
    """A hit at +50 (ttl 60) whose count waited for the lock until +80: the entry
    expired at +60 and lookups missed it since; writing the hit must not revive it."""
    with make_cache(db_path, clock, ttl=60, sliding_ttl=True) as cache:
        cache.store("alpha beta gamma", None, "r")
        holder = Database(db_path)
        try:
            with holder.transaction():
                clock.advance(50)
                assert cache.lookup("alpha beta gamma") is not None  # its count waits
                clock.advance(20)
                assert cache.lookup("alpha beta gamma") is None  # expired at +60
        finally:
            holder.close()
        clock.advance(10)
        assert cache.lookup("unrelated words entirely") is None  # writes the waiting counts
        assert cache.stats()["hits"] == 1
        assert cache.lookup("alpha beta gamma") is None


def test_eviction_sees_the_hits_still_waiting_for_the_lock(db_path: Path, clock: FakeClock) -> None:
    """LRU eviction by this cache's own next store counts the hits it made while the
    lock was taken, written in the store's transaction before it evicts."""
    with make_cache(db_path, clock, max_entries=3, eviction="lru") as cache:
        hot = cache.store("alpha beta gamma", None, "hot")
        for words in ("delta epsilon zeta", "kappa lambda mu"):
            clock.advance(1)
            cache.store(words, None, "cold")
        clock.advance(1)
        holder = Database(db_path)
        try:
            with holder.transaction():
                assert cache.lookup("alpha beta gamma") is not None  # its count waits
        finally:
            holder.close()
        cache.store("eta theta iota", None, "new")  # 4 > 3: evicts down to 2 (95%)
        assert cache.get(hot).hit_count == 1  # the most recently used stayed
        assert entry_count(cache) == 2


def test_one_namespace_with_unusable_settings_does_not_lose_the_other_counts(
    db_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Counts that waited together are written together: a hit in a namespace whose
    settings in the file cannot be used (a newer version's) is counted without its
    sliding TTL, and neither breaks the lookup that writes them nor loses the others."""
    with make_cache(db_path, clock) as cache:
        cache.store("alpha beta gamma", None, "odd", namespace="odd")
        cache.store("delta epsilon zeta", None, "default")
        holder = Database(db_path)
        try:
            with holder.transaction() as conn:
                conn.execute(
                    "INSERT INTO namespace_config (namespace, settings, updated_at) "
                    "VALUES ('odd', '{\"newer\": 1}', 0)"
                )
                assert cache.lookup("delta epsilon zeta") is not None
                assert cache.lookup("alpha beta gamma", namespace="odd") is not None
        finally:
            holder.close()
        with caplog.at_level(logging.WARNING, logger="semcache_sqlite"):
            assert cache.lookup("delta epsilon zeta") is not None  # writes all three
        assert "sliding TTL not applied" in caplog.text
    with make_cache(db_path, clock, read_only=True) as reader:
        assert reader.stats(namespace="default")["hits"] == 2
        assert reader.stats(namespace="odd")["hits"] == 1


def test_sliding_ttl_extends_on_exact_and_semantic_hits(db_path: Path, clock: FakeClock) -> None:
    with make_cache(db_path, clock, ttl=60, sliding_ttl=True) as cache:
        cache.store("alpha beta gamma delta", None, "r")
        clock.advance(50)
        assert cache.lookup("alpha beta gamma delta") is not None  # exact hit: now + 60
        clock.advance(50)
        assert cache.lookup("alpha beta gamma delta epsilon") is not None  # via the KNN
        clock.advance(59)
        # the vec0 copy of expires_at moved too, or this semantic lookup would miss
        assert cache.lookup("alpha beta gamma delta zeta") is not None
        clock.advance(61)
        assert cache.lookup("alpha beta gamma delta") is None
        cache.configure_namespace("fixed", sliding_ttl=False)
        cache.store("other words here", None, "r", namespace="fixed")
        clock.advance(30)
        assert cache.lookup("other words here", namespace="fixed") is not None
        clock.advance(30)
        assert cache.lookup("other words here", namespace="fixed") is None


# -- duplicates ------------------------------------------------------------------------------


def test_on_duplicate_choices(db_path: Path, clock: FakeClock) -> None:
    embedder = FakeEmbedder()
    with SemanticCache(db_path, embedder=embedder, clock=clock, ttl=100) as cache:
        first = cache.store("what time is it", None, "v1")
        clock.advance(10)
        assert cache.store("What time is it", None, "v2") == first  # default: replace
        replaced = cache.get(first)
        assert (replaced.response, replaced.version) == ("v2", 2)
        assert (
            replaced.expires_at is not None and replaced.expires_at.timestamp() == clock.now + 100
        )

        calls = embedder.calls
        assert cache.store("what time is it", None, "v3", on_duplicate="keep") == first
        assert cache.get(first).response == "v2" and embedder.calls == calls

        both = cache.store("what time is it", None, "v4", on_duplicate="keep_both")
        assert both != first and entry_count(cache) == 2
        hit = cache.lookup("what time is it")
        assert hit is not None and hit.entry_id == both  # the newest wins on the exact path

        cache.configure_namespace("archive", on_duplicate="keep")
        kept = cache.store("same question", None, "original", namespace="archive")
        assert cache.store("same question", None, "ignored", namespace="archive") == kept
        assert cache.get(kept).response == "original"
        again = cache.store("same question", None, "forced", namespace="archive", ttl=5,
                            on_duplicate="replace")  # fmt: skip
        assert again == kept and cache.get(kept).response == "forced"

        clock.advance(5)  # an expired duplicate is never kept: a new entry replaces it
        fresh = cache.store("same question", None, "new life", namespace="archive")
        assert cache.get(fresh).version == 1 and cache.get(fresh).response == "new life"
        assert cache.stats("archive")["cached_entries"] == 1
        with pytest.raises(InvalidInputError):
            cache.store("x", None, "y", on_duplicate="merge")  # type: ignore[arg-type]
        assert cache._store.orphan_counts() == (0, 0)


# -- eviction --------------------------------------------------------------------------------


def fill(cache: SemanticCache, clock: FakeClock, n: int, prefix: str = "entry") -> list[int]:
    ids = []
    for i in range(n):
        ids.append(cache.store(f"{prefix} number {i}", None, f"r{i}"))
        clock.advance(1)
    return ids


def hit(cache: SemanticCache, entry_ids: list[int], times: int = 1) -> None:
    for entry_id in entry_ids:
        query = cache.get(entry_id).query
        for _ in range(times):
            assert cache.lookup(query) is not None


def test_lru_evicts_least_recently_hit_never_hit_by_age(db_path: Path, clock: FakeClock) -> None:
    with make_cache(db_path, clock, max_entries=20, eviction="lru") as cache:
        ids = fill(cache, clock, 20)
        hit(cache, ids[:2])  # the two oldest become the most recently used
        new = cache.store("one more entry", None, "r")
        assert entry_count(cache) == 19  # evicted down to 95% of the limit in one go
        assert surviving(cache, ids) == set(ids) - {ids[2], ids[3]}
        assert cache.get(new).response == "r"
        fill(cache, clock, 1, prefix="later")
        assert entry_count(cache) == 20  # no eviction until the limit is crossed again
        assert cache._store.orphan_counts() == (0, 0) and vector_count(cache) == 20


def test_lfu_evicts_fewest_hits_oldest_first_never_the_new_entry(
    db_path: Path, clock: FakeClock
) -> None:
    with make_cache(db_path, clock, max_entries=20, eviction="lfu") as cache:
        ids = fill(cache, clock, 20)
        hit(cache, ids[5:], times=1)
        hit(cache, ids[:5], times=2)
        new = cache.store("one more entry", None, "r")  # zero hits, but just written
        assert surviving(cache, ids) == set(ids) - {ids[5], ids[6]}
        assert cache.get(new).hit_count == 0
        assert cache._store.orphan_counts() == (0, 0)


def test_fifo_evicts_oldest_whatever_the_hits(db_path: Path, clock: FakeClock) -> None:
    with make_cache(db_path, clock, max_entries=20, eviction="fifo") as cache:
        ids = fill(cache, clock, 20)
        hit(cache, ids[:2], times=3)
        cache.store("one more entry", None, "r")
        assert surviving(cache, ids) == set(ids) - {ids[0], ids[1]}


def test_expired_entries_are_evicted_before_policy_victims(db_path: Path, clock: FakeClock) -> None:
    with make_cache(db_path, clock, max_entries=10, eviction="fifo") as cache:
        old = fill(cache, clock, 8)
        short = [cache.store(f"short lived {i}", None, "r", ttl=3) for i in range(2)]
        clock.advance(3)
        cache.store("the eleventh", None, "r")
        assert surviving(cache, old + short) == set(old)


def test_namespace_limit_with_its_own_policy(db_path: Path, clock: FakeClock) -> None:
    with make_cache(db_path, clock, max_entries=1000, namespace_max_entries=100) as cache:
        policy = cache.configure_namespace("small", max_entries=5, eviction="fifo")
        assert (policy.max_entries, policy.eviction) == (5, "fifo")
        assert cache.namespace_policy().max_entries == 100  # the cache-wide namespace default
        big = fill(cache, clock, 8, prefix="big")
        small = [cache.store(f"small {i}", None, "r", namespace="small") for i in range(6)]
        assert cache.stats("small")["cached_entries"] == 4  # 6 > 5: down to floor(4.75)
        assert surviving(cache, small) == set(small[2:])
        assert surviving(cache, big) == set(big)
        # lowering a limit applies at once
        cache.configure_namespace("default", max_entries=4)
        assert cache.stats("default")["cached_entries"] == 3
        assert cache.configure_namespace("default", reset=True).max_entries == 100
        assert cache._store.orphan_counts() == (0, 0)


def test_one_write_larger_than_the_limit(db_path: Path, clock: FakeClock) -> None:
    with make_cache(db_path, clock, max_entries=10, eviction="lru") as cache:
        ids = cache.store_many([f"bulk item {i}" for i in range(30)], ["r"] * 30)
        assert entry_count(cache) == vector_count(cache) == 9
        assert len(surviving(cache, ids)) == 9
        assert cache._store.orphan_counts() == (0, 0)


@pytest.mark.parametrize("option", ["max_entries", "namespace_max_entries"])
def test_a_limit_of_one_keeps_the_entry_just_written(
    db_path: Path, clock: FakeClock, option: str
) -> None:
    """95% of 1 rounds down to 0: the write evicted its own entry with the old one."""
    with make_cache(db_path, clock, **{option: 1}) as cache:
        for i in range(3):
            newest = cache.store(f"question number {i}", None, "r")
            assert entry_count(cache) == 1 and cache.get(newest).query == f"question number {i}"
            clock.advance(1)
    with make_cache(db_path, clock) as cache:
        cache.configure_namespace("small", max_entries=1)
        for i in range(3):
            newest = cache.store(f"small {i}", None, "r", namespace="small")
            assert cache.stats("small")["cached_entries"] == 1 and cache.get(newest)
        assert cache._store.orphan_counts() == (0, 0)


def test_max_bytes_evicts_oldest_first(db_path: Path, clock: FakeClock) -> None:
    with make_cache(db_path, clock, max_bytes=1, eviction="lfu") as cache:
        ids = fill(cache, clock, 6)
        # every write finds the file over the limit and evicts the oldest, never itself
        assert surviving(cache, ids) == {ids[-1]}
        assert cache._store.orphan_counts() == (0, 0)


class _StopsAfter(FakeEmbedder):
    """A re-embed's new model that fails after ``good_calls`` batches."""

    def __init__(self, good_calls: int) -> None:
        super().__init__(dim=384, model_id="new-384")
        self.good_calls = good_calls

    def embed(self, texts: Any) -> Any:
        if self.calls >= self.good_calls:
            raise RuntimeError("went away")
        return super().embed(texts)


def test_max_bytes_leaves_out_an_unfinished_reembeds_staged_vectors(
    db_path: Path, clock: FakeClock
) -> None:
    """They are not entries: counted, they made every later write evict 5% of the
    cache until they were made up for (half the cache in 20 writes)."""
    with SemanticCache(
        db_path, embedder=FakeEmbedder(dim=384), clock=clock, max_bytes=3_000_000
    ) as cache:
        for start in range(0, 3000, 50):
            queries = [f"entry {j} word{j % 97} other{j % 89}" for j in range(start, start + 50)]
            cache.store_many(queries, ["r"] * 50)
        steady = entry_count(cache)
        with pytest.raises(EmbedderError):
            cache.reembed(_StopsAfter(good_calls=4), batch_size=200)
        status = cache.reembed_status()
        assert status is not None and status.done == 800
        conn = cache._db.connection()
        traced: list[str] = []
        conn.set_trace_callback(traced.append)
        try:
            for k in range(20):
                cache.store(f"later question {k}", None, "r")
        finally:
            conn.set_trace_callback(None)
        assert entry_count(cache) >= steady * 0.9  # was 593 of 1,194
        # Over the limit each time, but the staging table's scan is reused for 5 s: once
        # here (20 writes take ~0.1 s; up to 3 leaves a slow machine 10 s), not 20 times.
        scans = sum("FROM reembed_vectors))" in statement for statement in traced)
        assert 1 <= scans <= 3
        for k in range(20, 400):  # the limit still holds: the file does not grow unbounded
            cache.store(f"later question {k}", None, "r")
        assert entry_count(cache) < steady + 100
        assert cache._store.orphan_counts() == (0, 0)


def test_eviction_keeps_entries_and_vectors_in_step(db_path: Path, clock: FakeClock) -> None:
    with make_cache(db_path, clock, max_entries=40, eviction="lru", ttl=30) as cache:
        for round_ in range(6):
            ids = cache.store_many([f"round {round_} item {i}" for i in range(25)], ["r"] * 25)
            hit(cache, ids[::5])
            clock.advance(10)
        assert entry_count(cache) <= 40
        assert entry_count(cache) == vector_count(cache)
        assert cache._store.orphan_counts() == (0, 0)
        with cache._store.db.reading() as conn:  # the trigger-kept counts match reality
            counted = conn.execute("SELECT sum(entries) FROM entry_counts").fetchone()[0]
        assert counted == entry_count(cache)


def vec_chunks(cache: SemanticCache) -> int:
    with cache._store.db.reading() as conn:
        return int(conn.execute("SELECT count(*) FROM entry_vectors_chunks").fetchone()[0])


@pytest.mark.parametrize("compact", [True, False])
def test_sparse_vector_chunks_are_freed_after_eviction(
    db_path: Path, clock: FakeClock, compact: bool
) -> None:
    with make_cache(db_path, clock, max_entries=1000, eviction="lfu") as cache:
        cache._store.compact_chunks = compact
        ids = cache.store_many([f"bulk item {i}" for i in range(1000)], ["r"] * 1000)
        hot = ids[::50]
        hit(cache, hot, times=2)  # LFU keeps these alive, scattered over the first chunk
        for round_ in range(3):
            clock.advance(1)
            cache.store_many([f"round {round_} item {i}" for i in range(700)], ["r"] * 700)
        assert surviving(cache, hot) == set(hot)
        live = entry_count(cache)
        assert live <= 1000
        # 20 survivors pin the chunks they sit in; moved out, those were freed: the
        # live rows then fill as few chunks as they can, but for the newest one.
        fewest = -(-live // vector_index_module.CHUNK_ROWS)
        assert (vec_chunks(cache) <= fewest + 1) if compact else (vec_chunks(cache) > fewest + 1)
        for entry_id in hot:  # the moved vectors are intact (search() always runs the KNN)
            found = cache.search(cache.get(entry_id).query, k=3)  # k=3: hashed words collide
            assert any(r.entry_id == entry_id and r.similarity > 0.9999 for r in found)
        assert cache._store.orphan_counts() == (0, 0) and vector_count(cache) == live


def test_invalid_lifecycle_settings(db_path: Path, clock: FakeClock) -> None:
    for bad in ({"max_entries": 0}, {"eviction": "random"}, {"on_duplicate": "x"},
                {"sliding_ttl": 1}, {"max_bytes": -5}):  # fmt: skip
        with pytest.raises(InvalidInputError):
            make_cache(db_path, clock, **bad)
    with make_cache(db_path, clock) as cache:
        with pytest.raises(InvalidInputError):
            cache.configure_namespace("ns", max_entries=-1)
        with pytest.raises(InvalidInputError):
            cache.configure_namespace("ns", eviction="mru")  # type: ignore[arg-type]
        assert cache.namespace_policy("ns").max_entries is None


@pytest.mark.parametrize("ttl", [0, -5.0, 10**400, float("inf"), float("nan"), "60", True])
def test_ttl_that_is_not_a_positive_finite_number_is_refused(
    db_path: Path, clock: FakeClock, ttl: Any
) -> None:
    with pytest.raises(InvalidInputError, match="ttl must be a"):
        make_cache(db_path, clock, ttl=ttl)
    with make_cache(db_path, clock) as cache:
        entry_id = cache.store("kept question", None, "kept")
        for write in (
            lambda: cache.store("new question", None, "r", ttl=ttl),
            lambda: cache.store_many(["a", "b"], ["1", "2"], ttl=ttl),
            lambda: cache.update(entry_id, response="changed", ttl=ttl),
            lambda: cache.configure_namespace("ns", ttl=ttl),
        ):
            with pytest.raises(InvalidInputError, match="ttl must be a"):
                write()
        assert cache.stats()["cached_entries"] == 1 and cache.get(entry_id).version == 1
        assert cache.namespace_policy("ns").ttl is None


@pytest.mark.parametrize("ttl", [np.float32(60), np.float16(60), np.int64(60), Fraction(60)])
def test_constructor_ttl_of_any_real_number_type(db_path: Path, clock: FakeClock, ttl: Any) -> None:
    """now + np.float32(ttl) is an np.float32: the expiry was stored as a BLOB (reading
    the entry back raised ValueError; np.float16 overflowed to inf)."""
    with make_cache(db_path, clock, ttl=ttl, sliding_ttl=True) as cache:
        entry_id = cache.store("alpha beta gamma delta", None, "answer")
        with cache._store.db.reading() as conn:
            row = conn.execute("SELECT ttl, expires_at FROM entries WHERE id = ?", (entry_id,))
            assert tuple(row.fetchone()) == (60.0, clock.now + 60)
        clock.advance(59)
        assert cache.lookup("alpha beta gamma delta") is not None
        clock.advance(60)
        assert cache.lookup("alpha beta gamma delta") is None


def test_a_ttl_beyond_the_year_9999_expires_then(db_path: Path, clock: FakeClock) -> None:
    """now + ttl is clamped to the last time datetime represents: the entry stays readable,
    servable, exportable, whether the ttl is the entry's, the namespace's or sliding."""
    with make_cache(db_path, clock, sliding_ttl=True) as cache:
        cache.configure_namespace("long", ttl=3e11)  # earlier versions took it, then broke
        ids = [
            cache.store("lives longest", None, "r", ttl=1e300),
            cache.store("namespace ttl", None, "n", namespace="long"),
        ]
        for entry_id in ids:
            expires = cache.get(entry_id).expires_at
            assert expires is not None and expires.year == 9999
        assert cache.get_or_compute("lives longest", lambda q: "x") == ("r", True)  # slides
        assert cache.lookup("namespace ttl", namespace="long") is not None
        assert cache.get(ids[0]).expires_at.year == 9999  # type: ignore[union-attr]


# -- updates ---------------------------------------------------------------------------------


def test_update_query_reembeds_atomically(ttl_cache: SemanticCache, clock: FakeClock) -> None:
    entry_id = ttl_cache.store("alpha beta gamma delta", None, "answer")
    with pytest.raises(VersionConflictError):
        ttl_cache.update(entry_id, query="zeta eta theta iota", expected_version=7)
    assert ttl_cache.lookup("alpha beta gamma delta epsilon") is not None  # nothing moved
    updated = ttl_cache.update(entry_id, query="zeta eta theta iota", expected_version=1)
    assert (updated.query, updated.version) == ("zeta eta theta iota", 2)
    assert ttl_cache.lookup("alpha beta gamma delta") is None
    assert ttl_cache.lookup("alpha beta gamma delta epsilon") is None
    exact = ttl_cache.lookup("ZETA eta theta iota")
    near = ttl_cache.lookup("zeta eta theta iota kappa")
    assert exact is not None and exact.exact and near is not None and near.entry_id == entry_id
    assert ttl_cache._store.orphan_counts() == (0, 0)


def test_update_ttl(ttl_cache: SemanticCache, clock: FakeClock) -> None:
    entry_id = ttl_cache.store("alpha beta gamma delta", None, "answer")
    clock.advance(50)
    assert ttl_cache.update(entry_id, ttl=100).expires_at is not None
    clock.advance(99)
    assert ttl_cache.lookup("alpha beta gamma delta epsilon") is not None
    assert ttl_cache.update(entry_id, ttl=None).expires_at is None
    clock.advance(10_000)
    assert ttl_cache.lookup("alpha beta gamma delta epsilon") is not None
    assert ttl_cache.update(entry_id, response="new").expires_at is None  # ttl left alone


@pytest.mark.parametrize("ttl", [np.int64(60), np.float32(60.0), Fraction(60)])
def test_update_ttl_of_any_real_number_type(db_path: Path, clock: FakeClock, ttl: Any) -> None:
    """A numpy ttl was stored as a BLOB (np.int64: every later sliding hit then failed;
    np.float32: the update failed) and a Fraction could not be bound at all."""
    with make_cache(db_path, clock, sliding_ttl=True) as cache:
        entry_id = cache.store("alpha beta gamma delta", None, "answer")
        assert cache.update(entry_id, ttl=ttl).expires_at is not None
        with cache._store.db.reading() as conn:
            row = conn.execute(
                "SELECT typeof(ttl), ttl, expires_at FROM entries WHERE id = ?", (entry_id,)
            ).fetchone()
        assert tuple(row) == ("real", 60.0, clock.now + 60)
        clock.advance(50)
        assert cache.lookup("alpha beta gamma delta") is not None  # slides to now + 60
        clock.advance(50)
        assert cache.lookup("alpha beta gamma delta epsilon") is not None


# -- invalidation ----------------------------------------------------------------------------


def test_delete_older_than(db_path: Path, clock: FakeClock) -> None:
    with make_cache(db_path, clock) as cache:
        old = fill(cache, clock, 5, prefix="old")
        other = cache.store("old other namespace", None, "r", namespace="other")
        clock.advance(100)
        refreshed = cache.update(old[0], response="rewritten recently").id
        new = fill(cache, clock, 3, prefix="new")
        assert cache.delete_older_than(50, namespace="default") == 4
        assert surviving(cache, [*old, *new, other]) == {refreshed, *new, other}
        assert cache.delete_older_than(50) == 1
        for bad in (-1, float("nan"), np.float64("nan"), True, "50"):
            with pytest.raises(InvalidInputError):
                cache.delete_older_than(bad)  # type: ignore[arg-type]
        assert cache.delete_older_than(np.int64(50)) == 0  # numpy numbers work
        assert cache.delete_older_than(float("inf")) == 0
        assert cache.delete_older_than(0) == 4  # all were written before now
        assert cache._store.orphan_counts() == (0, 0)


def test_forget_similar_removes_near_duplicates_in_scope(
    db_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with make_cache(db_path, clock) as cache:
        near = [
            cache.store("reset my password", None, "bad answer"),
            cache.store("reset my password please", None, "bad answer"),
            cache.store("reset my password now", None, "bad answer", user_id="alice"),
        ]
        far = cache.store("weather today in paris", None, "sunny")
        elsewhere = cache.store("reset my password", None, "ok", namespace="other")
        other_context = cache.store("reset my password", None, "ok", context={"model": "m2"})
        # tiny batches prove the exact scan goes through all of them
        monkeypatch.setattr(vector_index_module, "_BATCH", 2)
        deleted = cache.forget_similar(
            "reset my password", min_similarity=0.8, namespace="default", context=None
        )
        assert deleted == 3
        left = surviving(cache, [*near, far, elsewhere, other_context])
        assert left == {far, elsewhere, other_context}
        assert cache.lookup("reset my password") is None
        # without a context filter every context goes; a user filter narrows it
        assert cache.forget_similar("reset my password", min_similarity=0.99, user_id="bob") == 0
        assert cache.forget_similar("reset my password", min_similarity=0.99) == 2
        assert cache._store.orphan_counts() == (0, 0)
        with pytest.raises(InvalidInputError):
            cache.forget_similar("x", min_similarity=1.5)


# -- space -----------------------------------------------------------------------------------


def test_vacuum_shrinks_after_deletes_and_keeps_lookups(db_path: Path, clock: FakeClock) -> None:
    with SemanticCache(db_path, embedder=FakeEmbedder(dim=256), clock=clock, ttl=10) as cache:
        cache.store_many([f"bulk entry {i}" for i in range(2100)], ["r"] * 2100, ttl=5)
        keep = cache.store("keep me around", None, "kept", ttl=None)
        clock.advance(5)
        report = cache.vacuum()
        assert report["bytes_after"] < report["bytes_before"] / 2
        assert report["vectors_rebuilt"] == entry_count(cache) == 1
        hit_ = cache.lookup("keep me around please")
        assert hit_ is not None and hit_.entry_id == keep
        assert cache._store.orphan_counts() == (0, 0)


def test_vacuum_beside_a_reader_says_the_wal_still_holds_the_file(
    db_path: Path, clock: FakeClock
) -> None:
    """A connection in a read transaction pins the WAL: VACUUM compacts the file into it
    and the checkpoint can neither copy it back nor empty it. The report said the file
    had not shrunk (it can even grow), without saying why, after waiting the whole busy
    timeout for the reader. Now it says so (``wal_truncated``) after a short wait, and a
    vacuum after the reader is done gives the space back."""
    with SemanticCache(
        db_path, embedder=FakeEmbedder(dim=256), clock=clock, busy_timeout=60
    ) as cache:
        cache.store_many([f"bulk entry {i}" for i in range(2100)], ["r"] * 2100)
        assert cache.clear() == 2100
        keep = cache.store("keep me around", None, "kept")
        reader = Database(db_path)
        try:
            conn = reader.connection()
            conn.execute("BEGIN")
            assert conn.execute("SELECT count(*) FROM entries").fetchone()[0] == 1
            started = time.monotonic()
            pinned = cache.vacuum()
            waited = time.monotonic() - started
            hit_ = cache.lookup("keep me around please")  # the cache works meanwhile
            assert hit_ is not None and hit_.entry_id == keep
            conn.execute("ROLLBACK")
        finally:
            reader.close()
        assert pinned["wal_truncated"] is False
        assert waited < 30  # not the busy timeout (60 s): WAL_CHECKPOINT_WAIT
        assert pinned["vectors_rebuilt"] == 1
        freed = cache.vacuum()
        assert freed["wal_truncated"] is True
        assert freed["bytes_after"] < pinned["bytes_before"] / 2
        assert os.path.getsize(f"{db_path}-wal") == 0
        assert entry_count(cache) == 1 and cache._store.orphan_counts() == (0, 0)


def test_staged_bytes_of_long_queries_are_not_overestimated(
    db_path: Path, clock: FakeClock
) -> None:
    """A staged row holds its query: a prompt of a few thousand characters spills to an
    overflow page, its first ~1 KB staying on the leaf page with other rows. Counted as
    whole pages per row, 8,000-character prompts were estimated at 1.7 times their real
    size, and the cache grew past max_bytes by the difference."""
    with SemanticCache(
        db_path, embedder=FakeEmbedder(dim=384), clock=clock, max_bytes=3_000_000
    ) as cache:
        prompt = "please summarise this part of the report " * 190  # ~8,000 characters
        for start in range(0, 400, 20):
            cache.store_many([f"{j} {prompt}" for j in range(start, start + 20)], ["r"] * 20)
        with pytest.raises(EmbedderError):
            cache.reembed(_StopsAfter(good_calls=2), batch_size=100)
        with cache._store.db.reading() as conn:
            estimate = staged_bytes(conn)
            real = conn.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name = 'reembed_vectors'"
            ).fetchone()[0]
        assert abs(estimate - real) <= 0.1 * real, (estimate, real)
        for k in range(300):
            cache.store(f"later {k} {prompt}", None, "r")
        with cache._store.db.reading() as conn:
            in_use = cache._store._bytes_in_use(conn) - staged_bytes(conn)
        assert in_use <= 3_000_000 * 1.1
