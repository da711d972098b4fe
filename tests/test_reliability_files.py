"""Cache files reached or left in unusual ways: through a symlink, after a crash."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeEmbedder
from test_reliability_input import mounted, needs_mount

from semcache_sqlite import NotACacheFileError, ReadOnlyError, SemanticCache
from semcache_sqlite.db import writability_problem


def test_a_file_opened_through_a_symlink_has_its_wal_found_beside_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite resolves a symlinked path and keeps -wal and -shm beside the real file.
    Looked for beside the link, the WAL was never found: never checkpointed past
    wal_limit_bytes (it grew without bound), left out of the file's size, and a link in
    a read-only directory to a file in a writable one was refused as read-only."""
    real_dir, link_dir = tmp_path / "real", tmp_path / "links"
    real_dir.mkdir()
    link_dir.mkdir()
    target, link = real_dir / "cache.db", link_dir / "cache.db"
    link.symlink_to(target)
    with SemanticCache(link, embedder=FakeEmbedder()) as cache:
        cache._db.wal_limit_bytes = 1
        cache.store("first entry", None, "1")
        cache.store("second entry", None, "2")
        wal = Path(f"{target}-wal")
        assert not Path(f"{link}-wal").exists()
        assert wal.exists() and wal.stat().st_size == 0  # checkpointed and truncated
        cache._db.wal_limit_bytes = 1 << 30
        cache.store("third entry", None, "3")
        assert cache._store.file_bytes() == target.stat().st_size + wal.stat().st_size

    real_access = os.access

    def link_dir_read_only(p: Any, mode: int, **kwargs: Any) -> bool:
        if mode & os.W_OK and Path(p) == link_dir:
            return False
        return real_access(p, mode, **kwargs)

    monkeypatch.setattr(os, "access", link_dir_read_only)
    assert writability_problem(str(link)) is None  # SQLite writes beside the target


@needs_mount
def test_a_symlink_to_a_read_only_file_with_a_wal_is_not_read_stale(tmp_path: Path) -> None:
    """A file copied with the -wal of its last transactions (no -shm) onto read-only
    media cannot be read there (SQLite must create the -shm); through a symlink the -wal
    was looked for beside the link, not found, and the file opened as immutable: lookups
    served the entries the -wal had deleted."""
    source, copy = tmp_path / "source", tmp_path / "copy"
    source.mkdir()
    copy.mkdir()
    with SemanticCache(source / "cache.db", embedder=FakeEmbedder()) as cache:
        cache.store("an answer deleted later", None, "stale")
        with cache._db.reading() as conn:  # the entry into the file itself
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cache.clear()  # committed to the -wal only
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{source}/cache.db{suffix}", f"{copy}/cache.db{suffix}")
    link = tmp_path / "link.db"
    with mounted(["--bind", "-o", "ro", str(copy)], tmp_path / "ro") as ro:
        link.symlink_to(ro / "cache.db")
        for path in (ro / "cache.db", link):
            with pytest.raises(ReadOnlyError, match="-wal file"):
                SemanticCache(path, embedder=FakeEmbedder(), read_only=True)


def test_a_read_only_open_beside_a_hot_rollback_journal_names_the_journal(
    tmp_path: Path,
) -> None:
    """A file another tool wrote in rollback-journal mode, killed mid-transaction: SQLite
    must roll its -journal back before reading, which a read-only open cannot do. The
    error blamed WAL mode's -wal and -shm files; it now names the journal, and a writable
    open restores the file as it was."""
    db = tmp_path / "c.db"
    with SemanticCache(db, embedder=FakeEmbedder()) as cache:
        cache.store_many([f"question {i}" for i in range(300)], ["kept answer " * 40] * 300)
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    writer = (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "conn.execute('PRAGMA cache_size = 10')\n"  # spills: the file itself is written too
        "conn.execute('BEGIN IMMEDIATE')\n"
        "conn.execute(\"UPDATE entries SET response = 'half-written'\")\n"
        "os.kill(os.getpid(), 9)\n"
    )
    assert subprocess.run([sys.executable, "-c", writer, str(db)], check=False).returncode == -9
    assert (tmp_path / "c.db-journal").stat().st_size > 0
    with pytest.raises(ReadOnlyError, match="the -journal file beside it") as refused:
        SemanticCache(db, embedder=FakeEmbedder(), read_only=True)
    assert "-shm" not in str(refused.value)
    with SemanticCache(db, embedder=FakeEmbedder()) as cache:  # rolls the journal back
        assert cache.stats()["cached_entries"] == 300
    with SemanticCache(db, embedder=FakeEmbedder(), read_only=True) as cache:
        hit = cache.lookup("question 7")
        assert hit is not None and hit.response == "kept answer " * 40


def test_a_read_only_open_of_a_directory_says_it_is_one(tmp_path: Path) -> None:
    with pytest.raises(NotACacheFileError, match="is a directory"):
        SemanticCache(tmp_path, embedder=FakeEmbedder())
    with pytest.raises(NotACacheFileError, match="is a directory"):
        SemanticCache(tmp_path, embedder=FakeEmbedder(), read_only=True)
