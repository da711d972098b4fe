"""The file itself: migrations, refusals, persistence across processes, threads and fork."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeEmbedder

from semcache_sqlite import (
    EmbedderMismatchError,
    InvalidInputError,
    MigrationError,
    NotACacheFileError,
    SchemaTooNewError,
    SemanticCache,
    StorageError,
)
from semcache_sqlite import migrate as migrate_module
from semcache_sqlite.db import DEFAULT_MMAP_SIZE, Database
from semcache_sqlite.migrate import (
    APPLICATION_ID,
    Migration,
    check_openable,
    latest_version,
    migrate,
)
from semcache_sqlite.store import Store

TESTS_DIR = Path(__file__).parent


def _pragma(path: Path, name: str) -> int:
    db = Database(path)
    try:
        with db.reading() as conn:
            return int(conn.execute(f"PRAGMA {name}").fetchone()[0])
    finally:
        db.close()


def test_migration_from_empty_file(db_path: Path) -> None:
    db = Database(db_path)
    try:
        assert migrate(db) == latest_version() >= 1
        with db.reading() as conn:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            applied = conn.execute(
                "SELECT version FROM schema_migrations ORDER BY version"
            ).fetchall()
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert {"entries", "cache_info", "namespace_stats", "schema_migrations"} <= tables
        assert [r[0] for r in applied] == list(range(1, latest_version() + 1))
        assert migrate(db) == latest_version()  # applying again changes nothing
        with db.reading() as conn:
            assert (
                conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0]
                == latest_version()
            )
    finally:
        db.close()
    assert _pragma(db_path, "application_id") == APPLICATION_ID


def test_failed_migration_rolls_back(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = migrate_module.available_migrations()
    broken = Migration(
        len(real) + 1,
        "broken",
        "CREATE TABLE half_done (x INTEGER);\nSELECT * FROM no_such_table;\n",
    )
    monkeypatch.setattr(migrate_module, "available_migrations", lambda: [*real, broken])
    db = Database(db_path)
    try:
        with pytest.raises(MigrationError, match="rolled back"):
            migrate(db)
        with db.reading() as conn:
            assert int(conn.execute("PRAGMA user_version").fetchone()[0]) == len(real)
            assert (
                conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'half_done'").fetchone()
                is None
            )
    finally:
        db.close()


def test_newer_schema_refused_and_file_untouched(db_path: Path) -> None:
    with SemanticCache(db_path, embedder=FakeEmbedder()) as cache:
        cache.store("alpha", None, "a")
    db = Database(db_path)
    with db.transaction() as conn:
        conn.execute("PRAGMA user_version = 999")
    db.close()
    before = db_path.read_bytes()
    with pytest.raises(SchemaTooNewError, match="newer semcache-sqlite"):
        SemanticCache(db_path, embedder=FakeEmbedder())
    assert db_path.read_bytes() == before


def test_refused_files_in_rollback_journal_mode_stay_byte_identical(
    refused_files: dict[str, Path],
) -> None:
    """The refusal comes before anything (WAL mode, page size) touches the file."""
    errors = {"other": NotACacheFileError, "newer": SchemaTooNewError}
    before = {name: path.read_bytes() for name, path in refused_files.items()}
    for name, path in refused_files.items():
        for read_only in (False, True):
            with pytest.raises(errors[name]):
                SemanticCache(path, embedder=FakeEmbedder(), read_only=read_only)
        with pytest.raises(errors[name]):
            migrate(Database(path, check_file=check_openable))
        assert path.read_bytes() == before[name], name
    folder = next(iter(refused_files.values())).parent
    assert sorted(p.name for p in folder.iterdir()) == ["newer.db", "other.db"]  # no -wal/-shm


def test_not_sqlite_file_refused(db_path: Path) -> None:
    db_path.write_bytes(b"this is not a database file at all" * 100)
    before = db_path.read_bytes()
    with pytest.raises(NotACacheFileError):
        SemanticCache(db_path, embedder=FakeEmbedder())
    assert db_path.read_bytes() == before


def test_other_programs_sqlite_file_refused(db_path: Path) -> None:
    db = Database(db_path)
    with db.transaction() as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    db.close()
    with pytest.raises(NotACacheFileError, match="customers"):
        SemanticCache(db_path, embedder=FakeEmbedder())


def test_other_embedder_refused_with_way_out(db_path: Path) -> None:
    with SemanticCache(db_path, embedder=FakeEmbedder(dim=64)) as cache:
        cache.store("alpha", None, "a")
    with pytest.raises(EmbedderMismatchError, match="re-embed"):
        SemanticCache(db_path, embedder=FakeEmbedder(dim=32))
    with pytest.raises(EmbedderMismatchError):
        SemanticCache(db_path, embedder=FakeEmbedder(dim=64, model_id="another-model"))


def _run_child(code: str, db_path: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), *sys.path])}
    script = textwrap.dedent(code).replace("DB_PATH", repr(str(db_path)))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_persistence_across_processes(db_path: Path) -> None:
    _run_child(
        """
        from fakes import FakeEmbedder
        from semcache_sqlite import SemanticCache
        with SemanticCache(DB_PATH, embedder=FakeEmbedder()) as cache:
            cache.store("written by the child process", None, "child answer", namespace="x")
            cache.lookup("written by the child process", namespace="x")
        """,
        db_path,
    )
    with SemanticCache(db_path, embedder=FakeEmbedder()) as cache:
        hit = cache.lookup("written by the child process", namespace="x")
        assert hit is not None and hit.response == "child answer"
        assert cache.stats("x")["hits"] == 2
        cache.store("written by the parent", None, "parent answer")
    out = _run_child(
        """
        from fakes import FakeEmbedder
        from semcache_sqlite import SemanticCache
        with SemanticCache(DB_PATH, embedder=FakeEmbedder()) as cache:
            print(cache.lookup("written by the parent").response)
        """,
        db_path,
    )
    assert out.strip() == "parent answer"


def test_reads_are_memory_mapped_only_when_asked(db_path: Path) -> None:
    # mmap_size is per connection: every connection, writable or read-only, gets it.
    def mapped(cache: SemanticCache) -> int:
        with cache._db.reading() as conn:
            return int(conn.execute("PRAGMA mmap_size").fetchone()[0])

    with SemanticCache(db_path, embedder=FakeEmbedder()) as cache:
        cache.store("how do I reset my password", None, "Settings > Reset")
        assert mapped(cache) == DEFAULT_MMAP_SIZE == 0
    with SemanticCache(db_path, embedder=FakeEmbedder(), mmap_size=1 << 22) as cache:
        if mapped(cache) == 0:
            pytest.skip("this SQLite build has memory-mapped I/O compiled out")
        assert mapped(cache) == 1 << 22
        cache.store("how do I change my email", None, "Settings > Email")
    found = {}
    for size in (0, 1 << 22, 4096):
        with SemanticCache(db_path, embedder=FakeEmbedder(), read_only=True, mmap_size=size) as ro:
            assert mapped(ro) == size
            hit = ro.lookup("how can I reset my password")
            assert hit is not None
            found[size] = (hit.entry_id, hit.similarity)
    assert len(set(found.values())) == 1  # the same answer however the file is read
    for bad in (-1, 1.5, True, "256MB"):
        with pytest.raises(InvalidInputError, match="mmap_size"):
            SemanticCache(db_path, embedder=FakeEmbedder(), mmap_size=bad)  # type: ignore[arg-type]


def test_threads_share_one_cache(cache: SemanticCache) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                cache.store(f"thread {n} item {i}", None, f"{n}-{i}", user_id=f"user{n}")
                cache.lookup(f"thread {n} item {i}", user_id=f"user{n}")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert cache.stats()["cached_entries"] == 120
    assert cache.stats()["hits"] == 120
    assert cache._store.orphan_counts() == (0, 0)


def _in_forked_child(child: Callable[[], bool]) -> bool:
    """Run ``child`` in a forked child process; what it returned (False if it raised)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if child() else 2
        finally:
            os.write(write_end, bytes([code]))
            os._exit(code)
    os.close(write_end)
    status = os.read(read_end, 1)
    os.close(read_end)
    os.waitpid(pid, 0)
    return status == b"\x00"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_usable_after_fork(cache: SemanticCache) -> None:
    cache.store("before the fork", None, "parent")

    def child() -> bool:  # must open its own connection, never reuse the parent's
        hit = cache.lookup("before the fork")
        cache.store("from the child", None, "child")
        return hit is not None and hit.response == "parent"

    assert _in_forked_child(child)
    hit = cache.lookup("from the child")
    assert hit is not None and hit.response == "child"


def _counters_in_file(path: str) -> tuple[int, int, int]:
    db = Database(path)
    try:
        return Store(db).namespace_counters()["default"]
    finally:
        db.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_lookup_counts_waiting_at_a_fork_stay_the_parents(cache: SemanticCache) -> None:
    """Lookup counts that wait for the write lock (lookup_counts.py) are written by the
    process that counted them: a child that wrote its inherited copy too would count
    those lookups twice."""
    entry_id = cache.store("before the fork", None, "parent")
    other = Database(cache.path)
    try:
        with other.transaction():  # the write lock, taken by another connection
            assert cache.lookup("before the fork") is not None  # its count waits
    finally:
        other.close()

    def child() -> bool:
        cache.close()  # writes what this process counted: nothing
        return True

    assert _in_forked_child(child)
    assert _counters_in_file(cache.path) == (1, 0, 0)  # (entries, hits, misses)
    cache.close()
    assert _counters_in_file(cache.path) == (1, 1, 0)
    with SemanticCache(cache.path, embedder=FakeEmbedder(), read_only=True) as reader:
        assert reader.get(entry_id).hit_count == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_fork_waits_for_another_threads_write_transaction(db_path: Path) -> None:
    """SQLite keeps locks in process memory: a child forked while another thread of the
    parent is inside a write transaction would inherit its lock and never write (every
    write timed out). fork() waits for that transaction instead (fork_gate.py)."""
    cache = SemanticCache(db_path, embedder=FakeEmbedder(), busy_timeout=1.0)
    cache.store("before the fork", None, "parent")
    inside, finish = threading.Event(), threading.Event()

    def writer() -> None:
        with cache._db.transaction() as conn:
            conn.execute("UPDATE entries SET hit_count = hit_count + 1")
            inside.set()
            finish.wait(10)

    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(10)
    # The writer may finish only once the fork has begun: this hook runs before the gate's
    # (hooks run in reverse order of registration). Without the gate the fork would go on
    # at once, holding the GIL, so the writer could not have left its transaction.
    os.register_at_fork(before=finish.set)
    # In the child, a lock inherited mid-transaction makes this a CacheTimeoutError (1 s).
    assert _in_forked_child(lambda: cache.store("from the child", None, "child") > 0)
    thread.join()
    hit = cache.lookup("from the child")
    assert hit is not None and hit.response == "child"
    cache.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")
def test_fork_waits_for_another_threads_lookup_snapshot(db_path: Path) -> None:
    """A lookup reads in a read transaction (Database.snapshot): a child forked while
    another thread of the parent was inside one inherited its read lock, held by no one,
    so the child could never checkpoint its WAL past that snapshot (it grew without
    bound in the child). fork() waits for the snapshot as for a write transaction."""
    cache = SemanticCache(db_path, embedder=FakeEmbedder(), busy_timeout=1.0)
    cache.store("before the fork", None, "parent")
    inside, finish = threading.Event(), threading.Event()

    def reader() -> None:
        with cache._db.snapshot() as conn:  # what Store.nearest runs in
            conn.execute("SELECT count(*) FROM entries").fetchone()
            inside.set()
            finish.wait(10)

    thread = threading.Thread(target=reader)
    thread.start()
    assert inside.wait(10)
    os.register_at_fork(before=finish.set)  # as in the test above

    def child() -> bool:
        cache._db.wal_limit_bytes = 0  # every commit checkpoints and truncates the WAL
        cache.store("from the child", None, "child")
        return os.path.getsize(f"{db_path}-wal") == 0

    assert _in_forked_child(child)
    thread.join()
    cache.close()


def test_stock_sqlite3_shell_reads_entries_without_extension(cache: SemanticCache) -> None:
    shell = shutil.which("sqlite3")
    if shell is None:
        pytest.skip("the sqlite3 shell is not installed (.ci/run installs it)")
    cache.store("shell visible query", None, "shell visible answer", user_id="u1")
    done = subprocess.run(
        [
            shell,
            str(cache.path),
            "select query, response, timestamp, user_id, embedding_dim from entries",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    query, response, timestamp, user_id, dim = done.stdout.strip().split("|")
    assert (query, response, user_id, dim) == (
        "shell visible query",
        "shell visible answer",
        "u1",
        "64",
    )
    assert timestamp.endswith("Z") and timestamp[:2] == "20"
    # README's sample of namespace_stats: its SQL runs, and prints as many columns as shown.
    readme = (TESTS_DIR.parent / "README.md").read_text(encoding="utf-8")
    sample = re.search(r'\$ sqlite3 \S+ "(select [^"]* from namespace_stats)"\n(.*)\n', readme)
    assert sample is not None, "README's namespace_stats sample is gone"
    assert cache.lookup("shell visible query", user_id="u1") is not None  # a hit
    assert cache.lookup("nothing like it at all") is None  # a miss
    done = subprocess.run(
        [shell, str(cache.path), sample.group(1)], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip().count("|") == sample.group(2).count("|"), done.stdout


def test_stdlib_driver_used_when_it_can_load_extensions(db_path: Path) -> None:
    import sqlite3

    from semcache_sqlite import DriverUnavailableError
    from semcache_sqlite.db import select_driver

    if hasattr(sqlite3.Connection, "enable_load_extension"):
        db = Database(db_path, driver="sqlite3")
        try:
            assert migrate(db) == latest_version()
            info = db.driver_info()
            assert info.driver == "sqlite3" and info.sqlite_vec_version.startswith("v0.1")
        finally:
            db.close()
    else:  # e.g. pyenv or macOS system Python: a clear error naming the way out
        with pytest.raises(DriverUnavailableError, match="sqlean"):
            select_driver("sqlite3")
    assert select_driver().__name__ in {"sqlean", "sqlite3"}


def test_an_in_memory_cache_serves_its_own_thread_and_refuses_others() -> None:
    """ ":memory:" is one database per connection: another thread (or the async API's
    workers) would get a new, empty one; it gets a StorageError that says so instead."""
    with SemanticCache(":memory:", embedder=FakeEmbedder(), guards=False) as cache:
        cache.store("how do i reset my password", None, "Settings")
        failures: list[BaseException] = []

        def other_thread() -> None:
            try:
                cache.lookup("how do i reset my password")
            except BaseException as exc:  # handed to the test thread
                failures.append(exc)

        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert len(failures) == 1 and isinstance(failures[0], StorageError)
        assert ":memory:" in str(failures[0]) and "thread" in str(failures[0])
        with pytest.raises(StorageError, match="memory"):
            asyncio.run(cache.alookup("how do i reset my password"))
        found = cache.lookup("how do i reset my password")  # its own thread: as before
        assert found is not None and found.response == "Settings"


@pytest.mark.parametrize("name", ["json", "no_such_driver_module"])
def test_forced_driver_that_cannot_serve_is_a_typed_error(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SEMCACHE_SQLITE_DRIVER naming a module that is no DB-API driver raised AttributeError
    (module has no attribute 'Connection'), from SemanticCache() and every CLI command."""
    from semcache_sqlite import DriverUnavailableError
    from semcache_sqlite.db import select_driver

    monkeypatch.setenv("SEMCACHE_SQLITE_DRIVER", name)
    with pytest.raises(DriverUnavailableError, match=name):
        select_driver()


def test_a_close_racing_a_call_is_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() from another thread between a call finding its connection and using it
    (a window of a few bytecodes, forced here) gave AttributeError on None."""
    db = Database(tmp_path / "race.db")
    opened = Database._state

    def state_then_closed(self: Database) -> Any:
        state = opened(self)
        state.release()  # what close() in another thread does at this moment
        return state

    monkeypatch.setattr(Database, "_state", state_then_closed)
    for use in (db.connection, db.transaction().__enter__):
        with pytest.raises(StorageError, match="closed"):
            use()
    db.close()
