"""Shared fixtures: a fresh cache file, the fake and real embedders, a local OpenAI server."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/fakes.py, tests/openai_server.py

from fakes import FakeEmbedder
from openai_server import OpenAIServer

from semcache_sqlite import LocalEmbedder, SemanticCache
from semcache_sqlite.migrate import latest_version
from semcache_sqlite.store import Store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "cache.db"


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def cache(db_path: Path, fake_embedder: FakeEmbedder) -> Iterator[SemanticCache]:
    with SemanticCache(db_path, embedder=fake_embedder, threshold=0.8) as c:
        yield c


@pytest.fixture(scope="session")
def local_embedder() -> LocalEmbedder:
    """The real offline model, loaded once for the whole run."""
    return LocalEmbedder()


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


@pytest.fixture
def exact_scans(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Grows by one each time a lookup ranks by an exact scan (Store._exact_ranking)."""
    calls: list[int] = []
    real_exact_ranking = Store._exact_ranking

    def counted(*args: Any) -> list[int]:
        calls.append(1)
        return real_exact_ranking(*args)

    monkeypatch.setattr(Store, "_exact_ranking", staticmethod(counted))
    return calls


@pytest.fixture
def refused_files(tmp_path: Path) -> dict[str, Path]:
    """Files every opener must refuse and leave byte for byte as they were, both in
    rollback-journal mode (switching them to WAL would rewrite their header): another
    program's SQLite file, and a cache of a newer schema."""
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:  # sqlite3's own `with` does not close
        conn.execute("CREATE TABLE invoices (id INTEGER)")
        conn.execute("INSERT INTO invoices VALUES (1)")
        conn.commit()
    newer = tmp_path / "newer.db"
    with SemanticCache(newer, embedder=FakeEmbedder()) as cache:
        cache.store("alpha", None, "a")
    with closing(sqlite3.connect(newer)) as conn:
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute(f"PRAGMA user_version = {latest_version() + 1}")
        conn.commit()
    for path in (other, newer):
        with closing(sqlite3.connect(path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    return {"other": other, "newer": newer}
