"""Concurrency: locks, busy timeouts, readers beside writers, threads, processes.

Synchronisation is by threading.Event and pipes, never by sleeping. Where a test
must show that a call is *waiting* (not failed at once), it checks the waiting
thread is still alive after a short join(): the call cannot finish while the lock
is held, so a slow machine can only make that check pass for the wrong reason,
never fail it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeEmbedder

from semcache_sqlite import CacheResult, CacheTimeoutError, FallbackPolicy, SemanticCache
from semcache_sqlite import store as store_module
from semcache_sqlite.db import Database, select_driver

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import stress
from reliability import check_file

SHORT = 0.3  # seconds: the busy timeout of the caches that are meant to give up


@contextmanager
def write_lock_held(path: Path) -> Iterator[Callable[[], None]]:
    """Another connection (own thread) holds an open write transaction with an
    uncommitted change until the yielded ``commit()`` is called (or the block ends)."""
    locked, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        db = Database(path)
        try:
            with db.transaction() as conn:
                conn.execute("UPDATE entries SET response = 'uncommitted'")
                locked.set()
                release.wait(30)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
            locked.set()
        finally:
            db.close()

    thread = threading.Thread(target=writer)
    thread.start()
    assert locked.wait(30)
    assert not errors, errors

    def commit() -> None:
        release.set()
        thread.join(30)

    try:
        yield commit
    finally:
        commit()
    assert not errors, errors


def test_readers_never_block_on_an_open_write_transaction(
    cache: SemanticCache, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    entry_id = cache.store("alpha beta gamma", None, "committed answer")
    with write_lock_held(db_path) as commit:
        # plain reads in another connection see the last committed state, at once
        assert cache.get(entry_id).response == "committed answer"
        assert [r.response for r in cache.search("alpha beta gamma", k=3)] == ["committed answer"]
        assert cache.stats()["cached_entries"] == 1
        with SemanticCache(db_path, embedder=FakeEmbedder(), read_only=True) as reader:
            hit = reader.lookup("alpha beta gamma")
            assert hit is not None and hit.response == "committed answer"
        # opening the file again needs no write lock either
        with SemanticCache(db_path, embedder=FakeEmbedder(), busy_timeout=SHORT) as other:
            # a counting lookup cannot write its hit: it still answers, the count waits
            hit = other.lookup("alpha beta gamma")
            assert hit is not None and hit.response == "committed answer"
            assert other.stats()["hits"] == 1
            # a write gives up after the busy timeout with the library's own error
            started = time.monotonic()
            with pytest.raises(CacheTimeoutError, match="busy timeout"):
                other.store("another query", None, "x")
            assert time.monotonic() - started >= SHORT * 0.9  # it waited, then gave up
            # closed while the lock is still taken: the waiting count is dropped, loudly
            with caplog.at_level(logging.WARNING, logger="semcache_sqlite"):
                other.close()
            assert "1 lookup(s) not counted in namespace(s) 'default'" in caplog.text
        commit()
    assert cache.get(entry_id).response == "uncommitted"  # now committed
    assert cache.stats()["hits"] == 0  # the dropped count stayed dropped


def test_lookups_do_not_wait_for_another_connections_write_lock(
    cache: SemanticCache, db_path: Path
) -> None:
    """A lookup counts itself in the file, which is a small write, and another connection
    can hold the write lock for long (an import, a vacuum, a re-embed). Lookups used to
    wait for it, up to the busy timeout, then drop their count. Now they answer at once;
    their counts wait in memory (in this process's stats() meanwhile) and the next
    lookup that gets the lock writes them all."""
    entry_id = cache.store("alpha beta gamma", None, "committed answer")
    with SemanticCache(db_path, embedder=FakeEmbedder(), threshold=0.8, busy_timeout=120) as other:
        answers: list[Any] = []

        def lookups() -> None:
            try:
                answers.append(other.lookup("alpha beta gamma"))
                answers.append(other.get_or_compute("Alpha  beta gamma", lambda q: "paid"))
                answers.append(other.lookup("completely unrelated words"))
            except BaseException as exc:
                answers.append(exc)

        with write_lock_held(db_path) as commit:
            thread = threading.Thread(target=lookups)
            thread.start()
            thread.join(20)  # well inside the lock holder's own 30 s limit
            # Waiting for the lock, they would still be waiting: the busy timeout is 120 s.
            assert not thread.is_alive()
            assert answers[0].response == "committed answer", answers
            assert answers[1:] == [("committed answer", True), None]
            assert (other.stats()["hits"], other.stats()["misses"]) == (2, 1)
            assert cache.stats()["total_requests"] == 0  # not in the file yet
            assert cache.get(entry_id).hit_count == 0
            commit()
        assert other.lookup("alpha beta gamma") is not None  # the lock is free: all written
        assert other.stats()["hits"] == 3
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (3, 1)
    assert stats["mean_hit_latency"] is not None
    entry = cache.get(entry_id)
    assert entry.hit_count == 3 and entry.last_hit_at is not None


def test_close_writes_the_counts_still_waiting(cache: SemanticCache, db_path: Path) -> None:
    entry_id = cache.store("alpha beta gamma", None, "committed answer")
    other = SemanticCache(db_path, embedder=FakeEmbedder(), threshold=0.8)
    try:
        with write_lock_held(db_path):
            assert other.lookup("alpha beta gamma") is not None
            assert other.lookup("nothing like it at all") is None
        assert cache.stats()["total_requests"] == 0  # still waiting in `other`
    finally:
        other.close()  # the lock is free now: written
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (1, 1)
    assert cache.get(entry_id).hit_count == 1


def test_writer_waits_for_the_lock_and_then_succeeds(cache: SemanticCache, db_path: Path) -> None:
    cache.store("first entry", None, "1")
    outcome: list[Any] = []

    def store() -> None:
        try:
            outcome.append(cache.store("written while another held the lock", None, "2"))
        except BaseException as exc:
            outcome.append(exc)

    with write_lock_held(db_path) as commit:
        thread = threading.Thread(target=store)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive(), outcome  # waiting inside the busy timeout, not failed
        commit()
        thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], int), outcome
    assert cache.get(outcome[0]).response == "2"


def _child(code: str, db_path: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code).replace("DB_PATH", repr(str(db_path)))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_another_process_holding_the_write_lock(cache: SemanticCache, db_path: Path) -> None:
    entry_id = cache.store("alpha beta gamma", None, "committed answer")
    child = _child(
        """
        import sys
        from semcache_sqlite.db import Database
        db = Database(DB_PATH)
        with db.transaction() as conn:
            conn.execute("UPDATE entries SET response = 'from the child'")
            print("locked", flush=True)
            sys.stdin.readline()
        print("committed", flush=True)
        """,
        db_path,
    )
    assert child.stdout is not None and child.stdin is not None
    try:
        assert child.stdout.readline().strip() == "locked"
        # a new cache opens (no write lock needed) and reads, with a short busy timeout
        with SemanticCache(db_path, embedder=FakeEmbedder(), busy_timeout=SHORT) as other:
            assert other.get(entry_id).response == "committed answer"
            hit = other.lookup("alpha beta gamma")
            assert hit is not None and hit.response == "committed answer"
            with pytest.raises(CacheTimeoutError):
                other.delete(entry_id)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "committed"
    finally:
        child.stdin.close()
        child.wait(30)
        child.stdout.close()
    assert child.returncode == 0
    assert cache.get(entry_id).response == "from the child"
    assert cache.delete(entry_id)


def test_answer_survives_a_store_that_times_out(
    cache: SemanticCache, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The LLM answered but its store hit the lock timeout: the paid-for answer is
    returned uncached (sync, async, stream, astream; strict policy too), reported to
    on_event with the error, and counted once the lock is free (the count waits in
    memory: waiting for the lock again would delay the answer by another busy timeout)."""
    events: list[CacheResult] = []
    asked: list[str] = []

    def llm(prompt: str) -> str:
        asked.append(prompt)
        return f"paid for: {prompt}"

    async def async_paths(other: SemanticCache) -> list[tuple[str, bool | None]]:
        answer = await other.aget_or_compute("asked async", llm)
        async with other.astream("asked by astream", llm) as stream:
            streamed = "".join([piece async for piece in stream])
        return [answer, (streamed, stream.is_cached)]

    with (
        # left last: closing `other` after the lock is free writes the counts
        SemanticCache(
            db_path, embedder=FakeEmbedder(), busy_timeout=SHORT, on_event=events.append
        ) as other,
        write_lock_held(db_path),
        caplog.at_level(logging.WARNING, logger="semcache_sqlite"),
    ):
        answers: list[tuple[str, bool | None]] = [other.get_or_compute("asked in sync", llm)]
        with other.stream("asked by stream", llm) as stream:
            answers.append(("".join(stream), stream.is_cached))
        answers += asyncio.run(async_paths(other))
        other.policy = FallbackPolicy.strict()
        answers.append(other.get_or_compute("asked strictly", llm))
        assert cache.stats()["total_requests"] == 0  # the counts wait for the lock
    assert answers == [(f"paid for: {q}", False) for q in asked]
    assert len(asked) == 5 and len(events) == 5
    for event in events:
        assert (event.outcome, event.reason, event.stored) == ("uncached", "store_failed", False)
        assert isinstance(event.error, CacheTimeoutError)
    assert caplog.text.count("could not store the LLM's answer") == 5
    stats = cache.stats()
    assert stats["cached_entries"] == 0
    assert (stats["misses"], stats["llm_calls"]) == (5, 5)
    assert cache.get_or_compute("asked in sync", llm) == ("paid for: asked in sync", False)
    assert cache.stats()["cached_entries"] == 1  # the lock is free again: stored


def test_stats_include_counts_being_written(
    cache: SemanticCache, db_path: Path, monkeypatch: Any
) -> None:
    """While a lookup tries for the lock to write the counts waiting (up to 50 ms), they
    are neither waiting nor in the file: stats() must still count them."""
    cache.store("alpha beta gamma", None, "r")
    with write_lock_held(db_path):
        for _ in range(3):
            assert cache.lookup("alpha beta gamma") is not None
        inside, go = threading.Event(), threading.Event()
        real = cache._db.transaction

        def held_before_begin(wait: float | None = None) -> Any:
            inside.set()  # the counts are taken: this lookup is about to try for the lock
            assert go.wait(30)
            return real(wait=wait)

        monkeypatch.setattr(cache._db, "transaction", held_before_begin)
        thread = threading.Thread(target=lambda: cache.lookup("alpha beta gamma"))
        thread.start()
        assert inside.wait(30)
        seen = cache.stats()["hits"]
        go.set()
        thread.join(30)
        monkeypatch.undo()
        assert seen == 4  # three waiting, and this lookup's own
        assert cache.stats()["hits"] == 4
    cache.close()
    with SemanticCache(db_path, embedder=FakeEmbedder(), read_only=True) as reader:
        assert reader.stats()["hits"] == 4


def test_waiting_lookup_counts_are_bounded(
    cache: SemanticCache, db_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    """Past MAX_WAITING namespaces and entries waiting, a lookup waits for the lock like
    any write (the busy timeout), and drops the counts with a warning if it stays
    taken: memory does not grow while another connection keeps the lock."""
    monkeypatch.setattr(store_module, "MAX_WAITING", 2)
    for word in ("alpha", "beta", "gamma"):
        cache.store(f"{word} one two", None, word)
    with (
        SemanticCache(db_path, embedder=FakeEmbedder(), threshold=0.8, busy_timeout=SHORT) as other,
        write_lock_held(db_path),
    ):
        assert other.lookup("alpha one two") is not None  # 2 waiting: its namespace, its entry
        assert other.lookup("beta one two") is not None  # 3 waiting
        assert other.stats()["hits"] == 2
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="semcache_sqlite"):
            assert other.lookup("gamma one two") is not None  # past the bound: waits
        assert time.monotonic() - started >= SHORT * 0.9
        assert "3 lookup(s) not counted in namespace(s) 'default'" in caplog.text
        assert other.stats()["hits"] == 0
    assert cache.stats()["hits"] == 0


@pytest.fixture
def rollback_journal_file(db_path: Path) -> Path:
    """A cache file switched back to a rollback journal (as another tool might leave it)."""
    with SemanticCache(db_path, embedder=FakeEmbedder()) as cache:
        cache.store("alpha", None, "a")
    conn = select_driver().connect(str(db_path), isolation_level=None)
    assert conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    conn.close()
    return db_path


def test_wal_switch_at_open_is_retried_within_the_busy_timeout(
    rollback_journal_file: Path,
) -> None:
    """SQLite refuses journal_mode=WAL at once, without its busy handler, while another
    connection holds a RESERVED lock; opening used to fail immediately."""
    holder = select_driver().connect(str(rollback_journal_file), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(CacheTimeoutError):
            SemanticCache(rollback_journal_file, embedder=FakeEmbedder(), busy_timeout=SHORT)
        assert time.monotonic() - started >= SHORT * 0.9  # retried, not failed at once

        opened: list[Any] = []

        def open_cache() -> None:
            try:
                opened.append(SemanticCache(rollback_journal_file, embedder=FakeEmbedder()))
            except BaseException as exc:
                opened.append(exc)

        thread = threading.Thread(target=open_cache)
        thread.start()
        thread.join(0.3)
        assert thread.is_alive(), opened
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    thread.join(30)
    assert len(opened) == 1 and isinstance(opened[0], SemanticCache), opened
    with opened[0] as cache:
        assert cache.lookup("alpha") is not None
        with cache._db.reading() as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_connections_of_finished_threads_are_closed(cache: SemanticCache) -> None:
    """Every thread gets its own connection; it used to stay open after the thread ended
    (two file descriptors per thread: an app with a thread per request ran out)."""
    cache.store("alpha beta", None, "ab")
    has_proc = Path("/proc/self/fd").is_dir()
    before = _open_fds() if has_proc else 0
    for _ in range(40):
        thread = threading.Thread(target=cache.lookup, args=("alpha beta",))
        thread.start()
        thread.join()
    assert len(cache._db._all) <= 2  # this thread's, maybe one not yet collected
    if has_proc:
        assert _open_fds() - before <= 4
    assert cache.stats()["hits"] == 40


def test_entry_ids_are_never_reused(db_path: Path) -> None:
    """SQLite hands out max(id) + 1, so deleting the newest entry used to give its id to
    the next one: a caller still holding it would then delete someone else's entry."""
    with SemanticCache(db_path, embedder=FakeEmbedder()) as cache:
        first = cache.store("first query", None, "1")
        newest = cache.store("second query", None, "2")
        assert cache.delete(newest)
        third = cache.store("third query", None, "3")
        assert third > newest
        assert cache.delete(newest) is False  # the stale id touches nothing
        assert cache.get(third).response == "3"
        assert cache.clear() == 2
    with SemanticCache(db_path, embedder=FakeEmbedder()) as cache:  # remembered in the file
        assert cache.store("fourth query", None, "4") > third > first


def test_store_many_complete_when_entries_vanish_between_check_and_write(
    cache: SemanticCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the stress run: a clear() by someone else between the "already stored?"
    check and the write made store_many() return fewer ids than queries."""
    queries = ["red apple pie", "green pear tart", "blue plum jam"]
    ids = cache.store_many(queries, ["1", "2", "3"])
    real = cache._store.upsert_many
    calls = 0

    def racing(*args: Any, **kwargs: Any) -> tuple[list[int | None], list[int]]:
        nonlocal calls
        calls += 1
        if calls <= 2:  # "another process" deletes an entry just before each write
            cache._store.delete(ids[calls - 1])
        return real(*args, **kwargs)

    monkeypatch.setattr(cache._store, "upsert_many", racing)
    again = cache.store_many(queries, ["4", "5", "6"])
    assert len(again) == 3 and len(set(again)) == 3
    assert again[1:] == ids[1:] and again[0] not in ids
    assert cache.get(again[0]).response == "4" and cache.get(again[2]).response == "6"
    assert cache._store.orphan_counts() == (0, 0)


def test_short_stress_run_threads_and_processes(tmp_path: Path) -> None:
    """benchmarks/stress.py in miniature (the long run: see README, Reliability)."""
    report = stress.run(tmp_path / "stress.db", threads=3, processes=2, seconds=2.0, seed=7)
    assert report.ok, report.summary()
    assert report.errors == 0 and report.lost_writes == 0 and report.violations == 0
    assert report.total_ops > 200, report.summary()
    assert report.file.integrity == "ok" and report.file.entries > 0


def test_stress_verifier_catches_lost_and_resurrected_writes(tmp_path: Path) -> None:
    """The checker must be able to fail: feed it records that the file contradicts."""
    path = tmp_path / "verify.db"
    with SemanticCache(path, embedder=FakeEmbedder()) as cache:
        kept = cache.store("kept query", None, "kept")
        gone = cache.store("gone query", None, "gone")
        cache.lookup("kept query")
    record = stress.ThreadRecord(counted_lookups=1)
    record.live = {kept: ("kept query", "kept"), 999: ("never stored", "x")}
    record.deleted = [(gone, "gone query")]
    report = stress._verify(str(path), 1, 1, 0.0, 0.0, [record], [])
    assert (report.lost_writes, report.resurrected) == (1, 1)
    assert not report.ok and "lost writes" in report.summary()


@contextmanager
def _reader_holding_a_snapshot(db_path: Path) -> Iterator[Any]:
    """A plain connection in an open read transaction (its first SELECT takes the
    snapshot), as a long export holds one."""
    reader = select_driver().connect(str(db_path), isolation_level=None)
    try:
        reader.execute("BEGIN")
        yield reader
    finally:
        reader.execute("ROLLBACK")
        reader.close()


def test_an_oversized_wal_is_checkpointed_after_a_commit(
    cache: SemanticCache, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite's automatic checkpoints never wait for readers: under steady load the WAL
    grew without bound (237 MB in 30 s of stress.py). Past wal_limit_bytes the committing
    connection checkpoints and truncates it, waiting for readers only briefly."""
    monkeypatch.setattr("semcache_sqlite.db.WAL_CHECKPOINT_WAIT", 0.1)
    cache._db.wal_limit_bytes = 1
    wal = Path(f"{db_path}-wal")
    cache.store("first entry", None, "1")
    assert wal.stat().st_size == 0  # checkpointed and truncated
    with _reader_holding_a_snapshot(db_path) as reader:
        assert reader.execute("SELECT count(*) FROM entries").fetchone()[0] == 1
        entry_id = cache.store("second entry", None, "2")  # cannot truncate: not an error
        assert cache.get(entry_id).response == "2"
        assert wal.stat().st_size > 0
    cache.store("third entry", None, "3")
    assert wal.stat().st_size == 0
    assert check_file(db_path).ok


def test_a_long_reader_stalls_one_commit_per_backoff_not_every_commit(
    cache: SemanticCache, db_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A reader holding an old snapshot (an export) pins the WAL: the first commit past
    the limit waits for it, the next ones (within WAL_BACKOFF_MIN) do not; once the reader
    is gone, the next commit truncates the WAL."""
    monkeypatch.setattr("semcache_sqlite.db.WAL_CHECKPOINT_WAIT", 0.05)
    monkeypatch.setattr("semcache_sqlite.db.WAL_BACKOFF_MIN", 3600.0)  # no expiry in the test
    cache._db.wal_limit_bytes = 1
    wal = Path(f"{db_path}-wal")
    cache.store("before the reader", None, "0")
    with _reader_holding_a_snapshot(db_path) as reader:
        reader.execute("SELECT count(*) FROM entries").fetchone()
        with caplog.at_level(logging.INFO, logger="semcache_sqlite"):
            ids = [cache.store(f"while reading {i}", None, str(i)) for i in range(5)]
        deferred = [r for r in caplog.records if "checkpoint deferred" in r.getMessage()]
        assert len(deferred) == 1  # one wait, then the backoff
        assert [cache.get(i).response for i in ids] == [str(i) for i in range(5)]
        assert wal.stat().st_size > 0
    cache.store("after the reader", None, "6")
    assert wal.stat().st_size == 0
    assert check_file(db_path).ok
