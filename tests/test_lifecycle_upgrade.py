"""A file of the first schema (tests/fixtures/schema_v1.db) upgrades to exactly what a
fresh file is: same tables, indexes, triggers and vec0 layout, same lookups."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from fakes import FakeEmbedder

from semcache_sqlite import SemanticCache
from semcache_sqlite.db import Database
from semcache_sqlite.migrate import latest_version, migrate

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))

from make_schema_v1 import FIXTURE_DIM, FIXTURE_ENTRIES  # noqa: E402

LOOKUPS = [
    ("how do i reset my password", {}),
    ("how can i reset my password quickly", {}),
    ("my account balance", {"user_id": "alice"}),
    ("my account balance", {"user_id": "bob"}),
    ("translate hello", {"context": "fr"}),
    ("refund policy for orders please", {"namespace": "shop"}),
    ("opening hours", {}),
]


def schema(path: Path) -> tuple[int, list[tuple[str, str, str]]]:
    """user_version and every schema object's SQL, whitespace-normalised, in a stable order."""
    db = Database(path)
    try:
        with db.reading() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            rows = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    finally:
        db.close()
    objects = sorted(
        (str(kind), str(name), re.sub(r"\s+", " ", sql or "").strip()) for kind, name, sql in rows
    )
    return version, objects


@pytest.fixture
def upgraded(tmp_path: Path) -> Path:
    path = tmp_path / "old.db"
    shutil.copyfile(FIXTURES / "schema_v1.db", path)  # never touch the committed file
    return path


def test_fixture_is_first_schema(upgraded: Path) -> None:
    version, objects = schema(upgraded)
    assert version == 1
    vec0 = next(sql for kind, name, sql in objects if name == "entry_vectors")
    assert "expires_at" not in vec0


def test_upgraded_file_equals_fresh_file(upgraded: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    with SemanticCache(fresh, embedder=FakeEmbedder(dim=FIXTURE_DIM), threshold=0.8) as cache:
        for e in FIXTURE_ENTRIES:
            cache.store(
                e["query"],
                None,
                e["response"],
                namespace=e["namespace"],
                user_id=e.get("user_id", ""),
                context=e.get("context"),
                metadata={"source": "fixture"},
            )
        fresh_answers = [cache.lookup(q, **kw) for q, kw in LOOKUPS]  # type: ignore[arg-type]
    with SemanticCache(upgraded, embedder=FakeEmbedder(dim=FIXTURE_DIM), threshold=0.8) as cache:
        old_answers = [cache.lookup(q, **kw) for q, kw in LOOKUPS]  # type: ignore[arg-type]
        assert cache.stats("default")["hits"] == 1 + sum(a is not None for a in old_answers[:5])
        assert cache._store.orphan_counts() == (0, 0)
        with cache._store.db.reading() as conn:
            counts = dict(conn.execute("SELECT namespace, entries FROM entry_counts").fetchall())
        assert counts == {"default": 4, "shop": 2}
        # the upgraded file takes lifecycle features at once
        cache.configure_namespace("shop", max_entries=2, eviction="fifo")
        cache.store("a third shop question", None, "r", namespace="shop", ttl=60)
        assert cache.stats("shop")["cached_entries"] == 1
    assert schema(upgraded) == schema(fresh)
    assert schema(upgraded)[0] == latest_version()
    for old, new in zip(old_answers, fresh_answers, strict=True):
        assert (old is None) == (new is None)
        if old is not None and new is not None:
            assert (old.entry_id, old.response, old.exact) == (
                new.entry_id,
                new.response,
                new.exact,
            )
            assert old.similarity == pytest.approx(new.similarity, abs=1e-6)


def test_migration_applies_once_and_keeps_data(upgraded: Path) -> None:
    db = Database(upgraded)
    try:
        assert migrate(db) == latest_version() == migrate(db)
        with db.reading() as conn:
            applied = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
            rows = conn.execute("SELECT count(*), sum(hit_count) FROM entries").fetchone()
            ttl_column = conn.execute(
                "SELECT count(*) FROM pragma_table_info('entries') WHERE name = 'ttl'"
            ).fetchone()[0]
        assert applied == list(range(1, latest_version() + 1))
        assert tuple(rows) == (6, 1) and ttl_column == 1
    finally:
        db.close()
