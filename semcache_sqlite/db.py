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
still relies on) and fresh ones are opened.
"""

from __future__ import annotations

import importlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import sqlite_vec

from .errors import (
    CacheTimeoutError,
    DriverUnavailableError,
    NotACacheFileError,
    ReadOnlyError,
    StorageError,
    StorageFullError,
)

DEFAULT_BUSY_TIMEOUT = 10.0  # seconds a writer waits for the lock before CacheTimeoutError

# Connections inherited over fork(): kept referenced forever so the garbage
# collector never closes them in the child (see module docstring).
_ABANDONED_AFTER_FORK: list[Any] = []


def _can_load_extensions(module: ModuleType) -> bool:
    return hasattr(module.Connection, "enable_load_extension")


def select_driver(preferred: str | None = None) -> ModuleType:
    """Return the DB-API module used to talk to SQLite (see module docstring)."""
    choice = preferred or os.environ.get("SEMCACHE_SQLITE_DRIVER") or None
    candidates = [choice] if choice else ["sqlean", "sqlite3"]
    for name in candidates:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if _can_load_extensions(module):
            return module
    raise DriverUnavailableError(
        f"no SQLite driver that can load extensions among {candidates}: this Python's "
        "stdlib sqlite3 was built without enable_load_extension. Install the bundled "
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
    if "full" in lowered:
        return StorageFullError(f"{path}: disk full, the write was rolled back ({message})")
    if "unable to open" in lowered:
        return StorageError(f"{path}: cannot open the file ({message}); does the directory exist?")
    return StorageError(f"{path}: {message}")


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
    ) -> None:
        self.path = str(Path(path))
        self.busy_timeout = float(busy_timeout)
        self.driver = select_driver(driver)
        self._local = threading.local()
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._all: list[Any] = []  # every connection this process opened, for close()
        self._closed = False

    # -- connections -------------------------------------------------------------

    def _open(self) -> Any:
        try:
            conn = self.driver.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # guarded by thread-local use; close() runs elsewhere
            )
        except self.driver.Error as exc:
            raise translate_error(exc, self.path) from exc
        try:
            conn.enable_load_extension(True)
            sqlite_vec.load(conn)
            conn.enable_load_extension(False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                # e.g. a read-only file that is not yet in WAL mode: reads still work.
                pass
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except self.driver.Error as exc:
            conn.close()
            raise translate_error(exc, self.path) from exc
        return conn

    def connection(self) -> Any:
        """This thread's connection, opened on first use (and again after fork)."""
        if self._closed:
            raise StorageError(f"{self.path}: the cache was closed")
        if os.getpid() != self._pid:
            self._after_fork()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._open()
            self._local.conn = conn
            self._local.depth = 0
            with self._lock:
                self._all.append(conn)
        return conn

    def _after_fork(self) -> None:
        with self._lock:
            if os.getpid() == self._pid:
                return
            _ABANDONED_AFTER_FORK.extend(self._all)
            self._all = []
            self._local = threading.local()
            self._pid = os.getpid()

    def close(self) -> None:
        """Close every connection this process opened. Idempotent."""
        with self._lock:
            conns, self._all = self._all, []
            self._closed = True
        if os.getpid() != self._pid:
            _ABANDONED_AFTER_FORK.extend(conns)
            return
        for conn in conns:
            with suppress(self.driver.Error):
                conn.close()
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
    def transaction(self) -> Iterator[Any]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT), re-entrant per thread."""
        conn = self.connection()
        depth = self._local.depth
        if depth == 0:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except self.driver.Error as exc:
                raise translate_error(exc, self.path) from exc
        self._local.depth = depth + 1
        try:
            yield conn
        except BaseException as exc:
            self._local.depth = depth
            if depth == 0:
                self._rollback(conn)
            if isinstance(exc, self.driver.Error):
                raise translate_error(exc, self.path) from exc
            raise
        self._local.depth = depth
        if depth == 0:
            try:
                conn.execute("COMMIT")
            except self.driver.Error as exc:
                self._rollback(conn)
                raise translate_error(exc, self.path) from exc

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
