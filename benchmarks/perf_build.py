"""Build (or reuse) the files the performance suite measures.

- The library's file: ``SemanticCache(path, embedder=LocalEmbedder())`` filled with
  ``store_many(queries, responses, embeddings=..., namespace=...)``, timed: that is
  the "bulk insert (store_many, build)" throughput. Whatever the library does on
  disk (today a float32 vec0 table; later perhaps more) is what gets built.
- The sqlite-vec float32 baseline: a raw ``vec0`` table of its own, in a separate
  file opened through ``semcache_sqlite.db.Database`` (which loads sqlite-vec with
  the right driver), with a ``namespace`` metadata column for the multi-namespace
  layout, queried with ``WHERE embedding MATCH ? AND k = 1 [AND namespace = ?]``.

``--reuse``: a file is reused when ``manifest.json`` in the work dir records the
same fingerprint: the entries (texts, vectors, namespaces) and, for the library's
file, a hash of the installed library's code and migrations, so a file built by an
older library is rebuilt automatically after the library changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sqlite_vec
from perf_data import Layout, Rows

import semcache_sqlite
from semcache_sqlite import LocalEmbedder, SemanticCache
from semcache_sqlite.db import Database
from semcache_sqlite.migrate import _migration_files

RAW_TABLE = "raw_vectors"
BUILD_CHUNK = 20_000  # entries per store_many call (it batches 256 per transaction itself)
RAW_CHUNK = 10_000  # rows per transaction into the raw vec0 table
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Built:
    path: str
    fingerprint: str
    entries: int
    seconds: float  # time to fill the file (0 when unknown)
    entries_per_s: float
    reused: bool
    built_at: str


def file_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of a SQLite file plus its -wal and -shm companions (0 if absent)."""
    return sum(
        Path(f"{path}{suffix}").stat().st_size
        for suffix in ("", "-wal", "-shm")
        if Path(f"{path}{suffix}").is_file()
    )


def remove_db(path: str | os.PathLike[str]) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def library_code_hash() -> str:
    """sha256 over the installed library's modules and migrations."""
    digest = hashlib.sha256()
    package = Path(semcache_sqlite.__file__).parent
    files = sorted(package.glob("*.py"))
    # The library's own lookup (installed package, else the source checkout's migrations/).
    sql = sorted((name, text.encode("utf-8")) for name, text in _migration_files())
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    for name, data in sql:
        digest.update(name.encode())
        digest.update(data)
    return digest.hexdigest()


def rows_fingerprint(rows: Rows) -> str:
    digest = hashlib.sha256()
    for text in rows.texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    digest.update(rows.vectors.tobytes())
    return digest.hexdigest()


def layout_fingerprint(rows_fp: str, layout: Layout) -> str:
    digest = hashlib.sha256(rows_fp.encode())
    digest.update(json.dumps(layout.names).encode())
    digest.update(layout.offsets.tobytes())
    return digest.hexdigest()


class Workdir:
    """The folder holding built files and the manifest of what they contain."""

    def __init__(self, path: str | os.PathLike[str], reuse: bool) -> None:
        self.path = Path(path).expanduser()
        self.path.mkdir(parents=True, exist_ok=True)
        self.reuse = reuse
        self._manifest_file = self.path / MANIFEST
        self.manifest: dict[str, Any] = {}
        if self._manifest_file.is_file():
            try:
                self.manifest = json.loads(self._manifest_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.manifest = {}

    def file(self, name: str) -> Path:
        return self.path / name

    def reusable(self, name: str, fingerprint: str) -> Built | None:
        record = self.manifest.get(name)
        if not self.reuse or not record or record.get("fingerprint") != fingerprint:
            return None
        if not self.file(name).is_file():
            return None
        return Built(**{**record, "reused": True})

    def record(self, name: str, built: Built) -> None:
        self.manifest[name] = {k: v for k, v in asdict(built).items() if k != "reused"}
        tmp = self._manifest_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self._manifest_file)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


_last_progress = [0.0]


def _progress(label: str, done: int, total: int, start: float) -> None:
    """A progress line on stderr, at most twice a second (and at the end)."""
    now = time.perf_counter()
    if done < total and now - _last_progress[0] < 0.5:
        return
    _last_progress[0] = now
    rate = done / max(now - start, 1e-9)
    print(f"\r  {label}: {done:,}/{total:,} ({rate:,.0f}/s) ", end="", file=sys.stderr, flush=True)


def library_file_name(size: int, namespaces: int) -> str:
    """The library's file of ``size`` entries in ``namespaces`` namespaces, in the work dir."""
    return f"lib-{size}-{namespaces}ns.db"


def build_library(workdir: Workdir, name: str, rows: Rows, layout: Layout, fp: str) -> Built:
    """The library's own file, filled through the public bulk path (store_many)."""
    fingerprint = hashlib.sha256(f"lib|{fp}|{library_code_hash()}".encode()).hexdigest()
    reused = workdir.reusable(name, fingerprint)
    if reused is not None:
        return reused
    path = workdir.file(name)
    remove_db(path)
    start = time.perf_counter()
    with SemanticCache(path, embedder=LocalEmbedder()) as cache:
        for ns, namespace in enumerate(layout.names):
            lo, hi = layout.bounds(ns)
            for s in range(lo, hi, BUILD_CHUNK):
                e = min(hi, s + BUILD_CHUNK)
                cache.store_many(
                    rows.texts[s:e],
                    rows.responses(s, e),
                    embeddings=rows.vectors[s:e],
                    namespace=namespace,
                )
                _progress(f"store_many -> {name}", e, rows.size, start)
    seconds = time.perf_counter() - start
    print(file=sys.stderr)
    built = Built(str(path), fingerprint, rows.size, seconds, rows.size / seconds, False, _now())
    workdir.record(name, built)
    return built


def raw_filter(layout: Layout) -> bool:
    """The raw baseline table has a namespace column only when there is more than one."""
    return layout.count > 1


def build_raw_vec(workdir: Workdir, name: str, rows: Rows, layout: Layout, fp: str) -> Built:
    """A bare vec0 table (float32, cosine), rowid = row + 1, for the sqlite-vec baseline."""
    with_ns = raw_filter(layout)
    version = getattr(sqlite_vec, "__version__", "?")
    fingerprint = hashlib.sha256(f"raw|{fp}|{with_ns}|{version}".encode()).hexdigest()
    reused = workdir.reusable(name, fingerprint)
    if reused is not None:
        return reused
    path = workdir.file(name)
    remove_db(path)
    db = Database(path)
    dim = rows.vectors.shape[1]
    column = ", namespace text" if with_ns else ""
    start = time.perf_counter()
    try:
        with db.transaction() as conn:
            conn.execute(
                f"CREATE VIRTUAL TABLE {RAW_TABLE} USING vec0("
                f"embedding float[{dim}] distance_metric=cosine{column})"
            )
        sql = (
            f"INSERT INTO {RAW_TABLE} (rowid, embedding, namespace) VALUES (?, ?, ?)"
            if with_ns
            else f"INSERT INTO {RAW_TABLE} (rowid, embedding) VALUES (?, ?)"
        )
        for s in range(0, rows.size, RAW_CHUNK):
            e = min(rows.size, s + RAW_CHUNK)
            params: list[tuple[Any, ...]]
            if with_ns:
                params = [
                    (i + 1, rows.vectors[i].tobytes(), layout.names[layout.namespace_of_row(i)])
                    for i in range(s, e)
                ]
            else:
                params = [(i + 1, rows.vectors[i].tobytes()) for i in range(s, e)]
            with db.transaction() as conn:
                conn.executemany(sql, params)
            _progress(f"raw vec0 -> {name}", e, rows.size, start)
    finally:
        db.close()
    seconds = time.perf_counter() - start
    print(file=sys.stderr)
    built = Built(str(path), fingerprint, rows.size, seconds, rows.size / seconds, False, _now())
    workdir.record(name, built)
    return built


def raw_knn_sql(layout: Layout) -> str:
    where = " AND namespace = ?" if raw_filter(layout) else ""
    return f"SELECT rowid, distance FROM {RAW_TABLE} WHERE embedding MATCH ? AND k = 1{where}"


def drop_os_cache(path: str | os.PathLike[str]) -> bool:
    """Ask the kernel to forget the file's cached pages (POSIX_FADV_DONTNEED; no root).

    Only clean pages are dropped, so the file is fsync'ed first. Returns False where
    posix_fadvise does not exist (then a "cold" open still has the OS cache warm).
    """
    advise = getattr(os, "posix_fadvise", None)
    dontneed = getattr(os, "POSIX_FADV_DONTNEED", None)
    if advise is None or dontneed is None:
        return False
    for suffix in ("", "-wal"):
        file = Path(f"{path}{suffix}")
        if not file.is_file():
            continue
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            advise(fd, 0, 0, dontneed)
        finally:
            os.close(fd)
    return True
