"""Open the SQLite file with sqlite-vec loaded; per-thread connections; transactions.

Driver choice (why not just ``import sqlite3``): many Pythons (pyenv builds,
macOS system Python) compile the stdlib ``sqlite3`` without
``enable_load_extension``, so it cannot load sqlite-vec. We therefore prefer
``sqlean`` (PyPI ``sqlean.py``: a drop-in DB-API module that bundles a recent
SQLite with extension loading on, Linux and macOS wheels) and fall back to the
stdlib module when it can load extensions (Windows CPython >= 3.11, Debian,
Homebrew and uv Pythons). ``SEMCACHE_SQLITE_DRIVER=sqlite3|sqlean`` forces one.

Connections: one per thread (SQLite connections must not be shared between
threads mid-transaction), opened lazily, WAL mode so readers never block the
writer, ``synchronous=NORMAL`` (durable across application crashes; a power
loss may drop the last transactions but never corrupts), and a busy timeout.
After ``fork()`` a child never touches its parent's connections: they are set
aside unclosed (closing them in the child could release locks the parent
still relies on) and fresh ones are opened. A thread's connection is closed
when the thread ends, so apps that start a thread per request do not leak
file descriptors.

``read_only=True`` opens the file with SQLite's ``mode=ro`` and never sets up
WAL or writes anything; a write raises ReadOnlyError. When the directory cannot
hold the ``-shm`` file SQLite needs for a WAL-mode file, and no ``-wal`` file is
there (so the main file holds every committed transaction), the file is opened
``immutable=1`` instead: SQLite then assumes nobody changes it while it is open.

``check_file`` (the caller's test that the file is one it may use, e.g. not another
program's file nor one of a newer schema) runs on the first connection before
anything is set up: switching a file to WAL rewrites its header and leaves -wal/-shm
files, so a file refused afterwards would no longer be the file it was.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import sqlite_vec

from .errors import (
    CacheTimeoutError,
    DriverUnavailableError,
    InvalidInputError,
    NotACacheFileError,
    ReadOnlyError,
    StorageError,
    StorageFullError,
)
from .fork_gate import GATE
from .validation import as_seconds

DEFAULT_BUSY_TIMEOUT = 10.0  # seconds a writer waits for the lock before CacheTimeoutError

#: Bytes of the file SQLite reads through a memory map (``PRAGMA mmap_size``) rather
#: than read(); 0, SQLite's default, is off. Off by default: a read of a mapped page
#: that fails (a failing disk, a network filesystem, another program truncating the
#: file during a lookup) is a SIGBUS crash instead of a StorageError, the mapped pages
#: count in the process's RSS, and a page fault reads the device's whole read-ahead
#: window, which made the first lookup of a 1M file with a cold OS cache 2x slower here.
#: On: vec0's chunks (blobs over several overflow pages, which SQLite reads with one
#: read() each, bypassing its page cache: a larger cache_size did not help) come from
#: the map instead, ~10% off a warm lookup (README.md, "Memory-mapped reads").
DEFAULT_MMAP_SIZE = 0

#: A -wal file larger than this after a commit is checkpointed and truncated by the
#: committing connection. SQLite's automatic checkpoints never wait for readers, so
#: under a steady mix of readers and writers they never catch up and the WAL grew
#: without bound (237 MB in 30 s of benchmarks/stress.py on a 10 MB file).
WAL_LIMIT_BYTES = 32 * 1024 * 1024
#: Longest a committing connection waits for readers and writers to let it checkpoint.
WAL_CHECKPOINT_WAIT = 1.0
#: After a wait that a reader outlasted (an export holding its snapshot, say), the
#: next waits are this far apart, doubling up to WAL_BACKOFF_MAX: otherwise every
#: commit would stall WAL_CHECKPOINT_WAIT for as long as that reader stays.
WAL_BACKOFF_MIN = 1.0
WAL_BACKOFF_MAX = 30.0

logger = logging.getLogger("semcache_sqlite")

# Connections inherited over fork(): kept referenced forever so the garbage
# collector never closes them in the child (see module docstring).
_ABANDONED_AFTER_FORK: list[Any] = []


def _can_load_extensions(module: ModuleType) -> bool:
    # getattr: SEMCACHE_SQLITE_DRIVER may name any importable module (a typo, apsw, ...),
    # which must be refused as a DriverUnavailableError, not fail with AttributeError.
    connection = getattr(module, "Connection", None)
    return callable(getattr(module, "connect", None)) and hasattr(
        connection, "enable_load_extension"
    )


def check_mmap_size(value: object) -> int:
    """``mmap_size``: bytes, a whole number >= 0 (SQLite caps it at its compile-time limit)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(f"mmap_size must be an int >= 0 (bytes), got {value!r}")
    return value


#: The longest busy timeout: SQLite takes it as a C int of milliseconds (~24.8 days).
MAX_BUSY_TIMEOUT = (2**31 - 1) / 1000


def check_busy_timeout(value: object) -> float:
    """``busy_timeout``: seconds to wait for another connection's lock, 0 to MAX_BUSY_TIMEOUT."""
    seconds = as_seconds(value)
    if seconds is None or not 0 <= seconds <= MAX_BUSY_TIMEOUT:  # also refuses NaN and inf
        raise InvalidInputError(
            f"busy_timeout must be a number of seconds from 0 to {MAX_BUSY_TIMEOUT:g}, "
            f"got {value!r}"
        )
    return seconds


def select_driver(preferred: str | None = None) -> ModuleType:
    """Return the DB-API module used to talk to SQLite (see module docstring)."""
    choice = preferred or os.environ.get("SEMCACHE_SQLITE_DRIVER") or None
    candidates = [choice] if choice else ["sqlean", "sqlite3"]
    problems: list[str] = []  # why each candidate was passed over, for the message
    for name in candidates:
        try:
            module = importlib.import_module(name)
        except ImportError:
            problems.append(f"{name}: not installed")
            continue
        if _can_load_extensions(module):
            return module
        problems.append(f"{name}: not a DB-API module that can load extensions")
    raise DriverUnavailableError(
        f"no SQLite driver that can load extensions ({'; '.join(problems)}). Many Pythons' "
        "stdlib sqlite3 is built without enable_load_extension. Install the bundled "
        "driver with `pip install sqlean.py` (Linux/macOS) or use a Python whose sqlite3 "
        "can load extensions (Windows CPython >= 3.11, Homebrew, uv, Debian)."
    )


@dataclass(frozen=True)
class DriverInfo:
    """What `semcache doctor` and the tests report about the SQLite stack."""

    driver: str
    sqlite_version: str
    sqlite_vec_version: str


def translate_error(exc: BaseException, path: str) -> StorageError:
    """Map a driver exception to this library's StorageError tree."""
    message = str(exc)
    lowered = message.lower()
    if "locked" in lowered or "busy" in lowered:
        return CacheTimeoutError(
            f"{path}: the database stayed locked longer than the busy timeout ({message})"
        )
    if "readonly" in lowered or "read-only" in lowered or "read only" in lowered:
        return ReadOnlyError(
            f"{path}: cannot write ({message}); the file and its directory must be writable "
            "because SQLite's WAL mode creates -wal and -shm files beside it"
        )
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return NotACacheFileError(f"{path}: not a usable SQLite file ({message})")
    if "could not decode" in lowered:  # text that is not UTF-8: only a damaged page does that
        return NotACacheFileError(f"{path}: the file is damaged ({message[:200]})")
    if "full" in lowered:
        return StorageFullError(f"{path}: disk full, the write was rolled back ({message})")
    if "could not insert a new vector chunk" in lowered:
        # sqlite-vec reports a failed chunk allocation (chunk_size x dim x 4 bytes, written
        # up front) as a plain SQLITE_ERROR and drops SQLITE_FULL; the only realistic cause
        # once the entry row of the same transaction was written is a full disk or a
        # max_page_count cap (see tests/test_reliability_input.py).
        return StorageFullError(
            f"{path}: no room for a new block of vectors, the write was rolled back ({message}); "
            "the disk (or max_page_count) is probably full"
        )
    if "unable to open" in lowered:
        if Path(path).is_dir():
            return NotACacheFileError(f"{path} is a directory, not a cache file")
        problem = writability_problem(path)
        if problem is not None:
            return ReadOnlyError(f"{path}: {problem} ({message}){_READ_ONLY_HINT}")
        return StorageError(f"{path}: cannot open the file ({message}); does the directory exist?")
    return StorageError(f"{path}: {message}")


_READ_ONLY_HINT = "; to look entries up without writing, open it with read_only=True"


def sidecar(path: str, suffix: str) -> str:
    """Where SQLite keeps ``path``'s ``-wal`` / ``-shm`` file: beside the file a symlinked
    path resolves to, not beside the link (looked for beside the link, the WAL of a cache
    opened through a symlink was never found: never checkpointed, left out of sizes)."""
    return os.path.realpath(path) + suffix


def writability_problem(path: str) -> str | None:
    """Why SQLite could not write ``path`` in WAL mode here, or None if it should be able to.

    Uses ``os.access``, which reports a read-only mount (EROFS) even to root, and
    file permissions to other users. A WAL-mode file needs its directory writable
    unless its ``-wal`` and ``-shm`` files already exist and are writable.
    """
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    file = Path(os.path.realpath(path))  # SQLite writes beside a symlink's target
    if file.is_dir() or not file.parent.is_dir():
        return None  # not a read-only problem; SQLite's own error says it
    if file.exists() and not os.access(file, os.W_OK):
        return "the file is read-only"
    sidecars = [Path(f"{file}-wal"), Path(f"{file}-shm")]
    if all(p.exists() and os.access(p, os.W_OK) for p in sidecars):
        return None
    if not os.access(file.parent, os.W_OK):
        return (
            "its directory is read-only, and SQLite's WAL mode must create the -wal and -shm "
            "files beside the file"
        )
    return None


class _ThreadConnection:
    """One thread's connection and its transaction depth.

    It lives in the Database's ``threading.local``, so when the thread ends this
    object is dropped and ``__del__`` closes the connection: without that, every
    finished thread left two open file descriptors behind (found by
    tests/test_reliability_concurrency.py). The Database keeps only weak
    references to these, for ``close()`` and ``fork()``.
    """

    __slots__ = ("__weakref__", "conn", "depth", "pid", "when_done")

    def __init__(self, conn: Any) -> None:
        self.conn: Any = conn
        self.depth = 0
        self.pid = os.getpid()
        #: Called with True after the outermost transaction's COMMIT, False after its rollback.
        self.when_done: list[Callable[[bool], None]] = []

    def done(self, committed: bool) -> None:
        callbacks, self.when_done = self.when_done, []
        for callback in callbacks:
            callback(committed)

    def release(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if os.getpid() != self.pid:
            _ABANDONED_AFTER_FORK.append(conn)  # inherited over fork: never close it here
            return
        with suppress(Exception):
            conn.close()

    def __del__(self) -> None:
        self.release()


#: Page size of new files (see ``Database._open``).
PAGE_SIZE = 8192

#: ``check_file(conn, path)``: raises to refuse the file (see the module docstring).
FileCheck = Callable[[Any, str], object]


class Database:
    """One SQLite file, one connection per thread, explicit write transactions.

    ``transaction()`` is re-entrant within a thread: only the outermost block
    issues ``BEGIN IMMEDIATE`` (taking the write lock up front so a
    read-then-write never fails half-way with SQLITE_BUSY) and ``COMMIT``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        driver: str | None = None,
        read_only: bool = False,
        mmap_size: int = DEFAULT_MMAP_SIZE,
        check_file: FileCheck | None = None,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidInputError(f"path must be a str or os.PathLike, got {path!r}")
        self.path = str(Path(path))
        self.busy_timeout = check_busy_timeout(busy_timeout)
        self.mmap_size = check_mmap_size(mmap_size)
        self.driver = select_driver(driver)
        self.read_only = bool(read_only)
        self.wal_limit_bytes = WAL_LIMIT_BYTES
        self._wal_backoff = 0.0  # seconds between checkpoint waits; 0 = wait at once
        self._wal_wait_after = 0.0  # time.monotonic() before which no commit waits
        self._check_file = check_file  # None once it passed: the first connection runs it
        self._local = threading.local()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        # every live thread connection this process opened, for close() and fork()
        self._all: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._closed = False
        self._memory_owner: int | None = None  # the one thread a ":memory:" file may use

    # -- connections -------------------------------------------------------------

    def _connect(self, target: str, uri: bool) -> Any:
        try:
            return self.driver.connect(
                target,
                timeout=self.busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # guarded by thread-local use; close() runs elsewhere
                uri=uri,
            )
        except self.driver.Error as exc:
            raise translate_error(exc, self.path) from exc

    def _open(self) -> Any:
        if self.read_only:
            return self._open_read_only()
        problem = writability_problem(self.path)
        if problem is not None:  # say so up front, not at the first write
            raise ReadOnlyError(f"{self.path}: cannot write here: {problem}{_READ_ONLY_HINT}")
        conn = self._connect(self.path, uri=False)
        try:
            self._setup(conn)
            self._run_check_file(conn)  # before the PRAGMAs below can change the file
            # Takes effect only while the file is still empty (ignored afterwards): an
            # exact 384-d vector is a 1.5 KB row, two per 4 KiB page (~2 KB each) but
            # five per 8 KiB page (~1.6 KB each).
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            self._set_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
        except self.driver.Error as exc:
            conn.close()
            raise translate_error(exc, self.path) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _run_check_file(self, conn: Any) -> None:
        """The caller's ``check_file``, once per Database (a refusal raises, and the next
        open runs it again)."""
        check = self._check_file
        if check is not None:
            check(conn, self.path)
            self._check_file = None

    def _set_wal(self, conn: Any) -> None:
        """``PRAGMA journal_mode = WAL``, retried until the busy timeout.

        Switching a rollback-journal file to WAL needs an exclusive lock. While another
        connection holds a RESERVED lock, SQLite returns SQLITE_BUSY at once without
        calling the busy handler (waiting could deadlock), so we retry here instead of
        failing immediately (tests/test_reliability_concurrency.py). A file already in
        WAL mode never gets here twice.
        """
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except self.driver.OperationalError as exc:
                lowered = str(exc).lower()
                busy = "locked" in lowered or "busy" in lowered
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))  # back off
            delay = min(delay * 2, 0.05)

    def _setup(self, conn: Any) -> None:
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA mmap_size = {self.mmap_size}").fetchall()

    def _open_read_only(self) -> Any:
        conn = self._connect_read_only()
        try:
            self._run_check_file(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, self.driver.Error):
                raise translate_error(exc, self.path) from exc
            raise
        return conn

    def _connect_read_only(self) -> Any:
        """``mode=ro`` (no WAL setup, no writes); ``immutable=1`` where -shm cannot exist."""
        file = Path(self.path)
        if file.is_dir():  # as the writable open says (translate_error)
            raise NotACacheFileError(f"{self.path} is a directory, not a cache file")
        if not file.is_file():
            raise StorageError(f"{self.path}: no such cache file to open read-only")
        base = file.resolve().as_uri()
        conn = self._connect(f"{base}?mode=ro", uri=True)
        try:
            self._setup(conn)
            conn.execute("PRAGMA query_only = ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens -shm if WAL
            return conn
        except self.driver.Error as exc:
            conn.close()
            journal = Path(sidecar(self.path, "-journal"))
            if "readonly" in str(exc).lower() and journal.is_file() and journal.stat().st_size:
                # SQLITE_READONLY_ROLLBACK: translate_error would blame WAL mode.
                raise ReadOnlyError(
                    f"{self.path}: cannot be read here: the -journal file beside it holds a "
                    "transaction that a writer in rollback-journal mode (another tool; this "
                    "library keeps its files in WAL mode) left unfinished, and only a writable "
                    "open can roll it back. Open it once without read_only=True where it is "
                    "writable (or copy it together with its -journal file somewhere that is): "
                    "the file is then as it was before that transaction."
                ) from exc
            if "unable to open" not in str(exc).lower():
                raise translate_error(exc, self.path) from exc
            wal = Path(sidecar(self.path, "-wal"))
            if wal.exists() and wal.stat().st_size > 0:
                raise ReadOnlyError(
                    f"{self.path}: cannot be read here: SQLite must create a -shm file beside "
                    "this WAL-mode file but the directory is read-only, and the -wal file beside "
                    "it may hold transactions not yet merged into the file. Open it once where "
                    "it is writable (or copy it together with its -wal file) to merge them."
                ) from exc
        # A WAL-mode file in a directory where SQLite cannot create -shm: with no -wal
        # beside it, the main file is complete and can be read as immutable. SQLite then
        # never sees a writer working through another path (README, "Read-only files").
        logger.info("%s: directory not writable, reading the file as immutable", self.path)
        conn = self._connect(f"{base}?immutable=1", uri=True)
        try:
            self._setup(conn)
            conn.execute("PRAGMA query_only = ON")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except self.driver.Error as exc:
            conn.close()
            raise translate_error(exc, self.path) from exc
        return conn

    def connection(self) -> Any:
        """This thread's connection, opened on first use (and again after fork)."""
        return self._live(self._state())

    def _live(self, state: _ThreadConnection) -> Any:
        """``state``'s connection; a close() from another thread may have just taken it."""
        conn = state.conn
        if conn is None:
            raise StorageError(f"{self.path}: the cache was closed")
        return conn

    def _state(self) -> _ThreadConnection:
        if self._closed:
            raise StorageError(f"{self.path}: the cache was closed")
        if os.getpid() != self._pid:
            self._after_fork()
        state: _ThreadConnection | None = getattr(self._local, "state", None)
        if state is None or state.conn is None:
            self._check_memory_thread()
            state = _ThreadConnection(self._open())
            self._local.state = state
            with self._lock:
                self._all.add(state)
        return state

    def _check_memory_thread(self) -> None:
        """Refuse a second thread's connection to ``:memory:``: SQLite would give it a
        new, empty database (the async API's worker threads failed with "no such
        table", a threaded server's threads each had a cache of their own, lost when
        the thread ended)."""
        if self.path != ":memory:":
            return
        owner = threading.get_ident()
        with self._lock:
            if self._memory_owner is None:
                self._memory_owner = owner
                return
        if owner != self._memory_owner:
            raise StorageError(
                ":memory: is one database per connection, so a cache in memory can only be "
                "used from the thread that opened it; from other threads (or the async "
                "API, which runs in worker threads) use a file, e.g. in tempfile.mkdtemp()"
            )

    def _after_fork(self) -> None:
        with self._lock:
            if os.getpid() == self._pid:
                return
            for state in list(self._all):
                state.release()  # pid differs: kept referenced, never closed
            self._all = weakref.WeakSet()
            self._local = threading.local()
            self._pid = os.getpid()

    def close(self) -> None:
        """Close every connection this process opened. Idempotent."""
        with self._lock:
            states = list(self._all)
            self._all = weakref.WeakSet()
            self._closed = True
        for state in states:
            state.release()  # after fork (pid differs) this keeps the inherited ones unclosed
        self._local = threading.local()

    # -- statements --------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[Any]:
        """A connection for reads; driver errors become StorageError subclasses."""
        conn = self.connection()
        try:
            yield conn
        except self.driver.Error as exc:
            raise translate_error(exc, self.path) from exc

    @contextmanager
    def snapshot(self) -> Iterator[Any]:
        """``reading()`` in a read transaction: every statement inside reads the file as
        it was at the first one, so a write committed meanwhile by another connection
        (a namespace's rows moved to another vec0 table or into cells, an index rebuilt)
        cannot make a lookup's later statements disagree with its earlier ones. Inside
        a transaction this thread already holds, it is that transaction. A fork() waits
        for it (fork_gate.py): a child would keep its read lock with no one to release
        it, and could never checkpoint its WAL past that snapshot."""
        with self.reading() as conn:
            if conn.in_transaction:
                yield conn
                return
            GATE.enter()
            try:
                conn.execute("BEGIN")
                try:
                    yield conn
                except BaseException:
                    with suppress(Exception):  # the error that ended it is the one to see
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")  # nothing was written: this ends the snapshot
            finally:
                GATE.leave()

    @contextmanager
    def transaction(self, wait: float | None = None) -> Iterator[Any]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT), re-entrant per thread.

        ``wait``: wait at most this long (not the busy timeout) for another
        connection's write lock, then raise CacheTimeoutError; inside a transaction
        this thread already holds, it has the lock and the argument does nothing."""
        if self.read_only:
            raise ReadOnlyError(f"{self.path}: opened with read_only=True, writes are refused")
        state = self._state()
        conn = self._live(state)
        depth = state.depth
        if depth == 0:
            GATE.enter()  # a fork() waits for this transaction (fork_gate.py)
            try:
                with self._busy_wait(conn, self.busy_timeout if wait is None else wait):
                    conn.execute("BEGIN IMMEDIATE")
            except BaseException as exc:  # a KeyboardInterrupt while waiting too
                GATE.leave()
                if isinstance(exc, self.driver.Error):
                    raise translate_error(exc, self.path) from exc
                raise
        state.depth = depth + 1
        try:
            yield conn
        except BaseException as exc:
            state.depth = depth
            if depth == 0:
                self._rollback(conn)
                GATE.leave()
                state.done(committed=False)
            if isinstance(exc, self.driver.Error):
                raise translate_error(exc, self.path) from exc
            raise
        state.depth = depth
        if depth == 0:
            try:
                conn.execute("COMMIT")
            except self.driver.Error as exc:
                self._rollback(conn)
                state.done(committed=False)
                raise translate_error(exc, self.path) from exc
            finally:
                GATE.leave()
            state.done(committed=True)
            self._bound_wal(conn)

    def when_done(self, callback: Callable[[bool], None]) -> None:
        """Inside a write transaction: call ``callback(committed)`` when the outermost
        one ends, after its COMMIT (True) or its rollback (False). It must not raise."""
        state = self._state()
        if state.depth == 0:
            raise RuntimeError("when_done() outside a write transaction")
        state.when_done.append(callback)

    def _bound_wal(self, conn: Any) -> None:
        """Checkpoint and truncate an oversized WAL (see WAL_LIMIT_BYTES); never fails
        the write that was just committed.

        The truncation waits at most WAL_CHECKPOINT_WAIT for readers to let go of the
        WAL (short lookups do, within milliseconds; if they keep it busy, the next
        commit tries again). A reader that still holds an older snapshot after the wait
        (a long export: frames are left uncopied) would make every commit wait again,
        so the commits of the next WAL_BACKOFF_MIN seconds (doubling, up to
        WAL_BACKOFF_MAX) do not: they only run a passive checkpoint (it never waits),
        which tells when that reader is gone, and then the truncation goes ahead.
        """
        try:
            if os.stat(sidecar(self.path, "-wal")).st_size <= self.wal_limit_bytes:
                return
        except OSError:
            return
        try:
            if time.monotonic() < self._wal_wait_after:
                _, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if copied < frames:
                    return  # still pinned: no wait
                self._wal_wait_after = 0.0
            busy, frames, copied = self.truncate_wal(conn)
            if busy and copied < frames:  # an older snapshot pins the WAL
                self._wal_backoff = min(
                    WAL_BACKOFF_MAX, max(WAL_BACKOFF_MIN, 2 * self._wal_backoff)
                )
                self._wal_wait_after = time.monotonic() + self._wal_backoff
                logger.info(
                    "WAL checkpoint deferred %.0f s: a reader holds an older snapshot",
                    self._wal_backoff,
                )
            elif not busy:
                self._wal_backoff = 0.0
            else:
                logger.info("WAL checkpoint deferred: readers or writers still busy")
        except self.driver.Error as exc:
            logger.warning("WAL checkpoint failed (the write was committed): %s", exc)

    def truncate_wal(self, conn: Any) -> tuple[int, int, int]:
        """``PRAGMA wal_checkpoint(TRUNCATE)``: copy the WAL into the file and empty it,
        waiting at most WAL_CHECKPOINT_WAIT (not the busy timeout) for other connections
        to finish their transactions. Returns SQLite's (busy, WAL frames, frames copied):
        busy 0 when the WAL was emptied; frames copied < WAL frames when a reader's older
        snapshot kept the newer frames out of the file."""
        with self._busy_wait(conn, WAL_CHECKPOINT_WAIT):
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return int(busy), int(frames), int(copied)

    @contextmanager
    def _busy_wait(self, conn: Any, seconds: float) -> Iterator[None]:
        """The statements inside wait at most ``seconds`` (never more than the busy
        timeout) for other connections' locks; the busy timeout is restored after."""
        if seconds >= self.busy_timeout:
            yield
            return
        conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
        try:
            yield
        finally:
            with suppress(self.driver.Error):
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")

    @contextmanager
    def side_connection(self) -> Iterator[Any]:
        """A second, private connection to the file, closed on exit.

        For scanning a vec0 table while this thread's connection writes in the same
        transaction: interleaving the two on one connection makes sqlite-vec's scan
        ~8x slower (measured: 160 vs 19 us per 384-d row). In WAL mode the side
        connection sees the last committed state, which is what the writer started
        from as long as it has not yet changed the table being read.
        """
        conn = self._open()
        try:
            yield conn
        except self.driver.Error as exc:
            raise translate_error(exc, self.path) from exc
        finally:
            with suppress(self.driver.Error):
                conn.close()

    def _rollback(self, conn: Any) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except self.driver.Error:
            pass  # SQLite may already have rolled back (e.g. SQLITE_FULL); nothing to keep

    def driver_info(self) -> DriverInfo:
        with self.reading() as conn:
            sqlite_version = conn.execute("SELECT sqlite_version()").fetchone()[0]
            vec_version = conn.execute("SELECT vec_version()").fetchone()[0]
        return DriverInfo(self.driver.__name__, str(sqlite_version), str(vec_version))


T = TypeVar("T")

#: Values bound per ``IN (...)`` list: SQLite before 3.32 allows 999 parameters.
IN_LIST_BATCH = 500


def table_exists(conn: Any, name: str) -> bool:
    """The file has a table ``name`` (files of earlier schemas lack some)."""
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def in_batches(values: Sequence[T]) -> Iterator[tuple[Sequence[T], str]]:
    """``values`` in slices small enough to bind, each with its ``?,?,...`` marks."""
    for start in range(0, len(values), IN_LIST_BATCH):
        part = values[start : start + IN_LIST_BATCH]
        yield part, ",".join("?" * len(part))


def split_sql_script(script: str, complete_statement: Any) -> list[str]:
    """Split a SQL script into statements with SQLite's own completeness test.

    Needed because ``executescript()`` commits any open transaction, which would
    break "apply a migration and record it in one transaction".
    """
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if complete_statement(buffer):
            statement = buffer.strip()
            if statement and not _is_only_comments(statement):
                statements.append(statement)
            buffer = ""
    if buffer.strip() and not _is_only_comments(buffer.strip()):
        raise ValueError(f"incomplete SQL statement at end of script: {buffer.strip()[:80]!r}")
    return statements


def _is_only_comments(statement: str) -> bool:
    code = [line for line in statement.splitlines() if not line.strip().startswith("--")]
    return "".join(code).strip(" \t;") == ""
