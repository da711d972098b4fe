"""Regression tests for the sqlite-vec pitfalls of DESIGN.md section 5.

Each shows, on a raw vec0 table, what sqlite-vec itself does (so the test documents
why the library does what it does), then that the cache is not caught by it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import sqlite_vec
from fakes import FakeEmbedder

from semcache_sqlite import InvalidInputError, InvalidVectorError, SemanticCache
from semcache_sqlite.db import select_driver
from semcache_sqlite.vector_index import index_table, quantize


def blob(values: Any) -> bytes:
    return np.asarray(values, dtype=np.float32).tobytes()


@pytest.fixture
def raw() -> Iterator[Any]:
    """An in-memory connection with sqlite-vec and a small cosine vec0 table."""
    conn = select_driver().connect(":memory:", isolation_level=None)
    conn.enable_load_extension(True)
    sqlite_vec.load(conn)
    conn.execute(
        "CREATE VIRTUAL TABLE v USING vec0(embedding float[4] distance_metric=cosine, ns text)"
    )
    yield conn
    conn.close()


def test_nan_and_zero_vectors_rank_first_in_raw_sqlite_vec(raw: Any) -> None:
    raw.execute("INSERT INTO v (rowid, embedding, ns) VALUES (1, ?, 'a')", (blob([1, 0, 0, 0]),))
    raw.execute("INSERT INTO v (rowid, embedding, ns) VALUES (2, ?, 'a')", (blob([0, 1, 0, 0]),))
    raw.execute("INSERT INTO v (rowid, embedding, ns) VALUES (3, ?, 'a')", (blob([np.nan] * 4),))
    raw.execute("INSERT INTO v (rowid, embedding, ns) VALUES (4, ?, 'a')", (blob([0] * 4),))
    rows = raw.execute(
        "SELECT rowid, distance FROM v WHERE embedding MATCH ? AND k = 4 ORDER BY distance",
        (blob([1, 0, 0, 0]),),
    ).fetchall()
    # sqlite-vec accepted both and ranks them above the identical vector, distance NULL
    assert rows[:2] == [(3, None), (4, None)]
    assert rows[2] == (1, 0.0)


def test_the_cache_refuses_nan_and_zero_vectors_and_skips_smuggled_ones(
    cache: SemanticCache, fake_embedder: FakeEmbedder
) -> None:
    for bad in (np.full(64, np.nan), np.zeros(64)):
        with pytest.raises(InvalidVectorError):
            cache.store("bad vector", bad, "never stored")
    good = cache.store("alpha beta gamma", None, "good")
    smuggled = cache.store("delta epsilon", None, "smuggled")
    with cache._db.transaction() as conn:  # what a damaged file or a foreign writer could do
        conn.execute(
            "UPDATE entry_embeddings SET embedding = ? WHERE id = ?",
            (np.full(64, np.nan, dtype=np.float32).tobytes(), smuggled),
        )
    results = cache.search("alpha beta gamma", k=5)  # used to raise TypeError (NULL distance)
    assert [r.entry_id for r in results] == [good]
    hit = cache.lookup("alpha beta gamma delta", threshold=0.5)
    assert hit is None or hit.entry_id == good


def test_insert_or_replace_fails_on_raw_vec0(raw: Any) -> None:
    raw.execute("INSERT INTO v (rowid, embedding, ns) VALUES (1, ?, 'a')", (blob([1, 0, 0, 0]),))
    for verb in ("INSERT OR REPLACE", "INSERT OR IGNORE"):
        with pytest.raises(select_driver().Error, match="UNIQUE"):
            raw.execute(
                f"{verb} INTO v (rowid, embedding, ns) VALUES (1, ?, 'a')", (blob([0, 1, 0, 0]),)
            )


def test_the_cache_replaces_a_vector_by_delete_and_insert(
    cache: SemanticCache, fake_embedder: FakeEmbedder
) -> None:
    old, new = fake_embedder.vector("old words only"), fake_embedder.vector("brand new words")
    entry_id = cache.store("the query", old, "first")
    assert cache.store("the query", new, "second") == entry_id
    found = cache.find_similar(new, threshold=1.0)
    assert found is not None and found[0] == "second" and found[1] == pytest.approx(1.0, abs=1e-6)
    assert cache.find_similar(old, threshold=0.99) is None
    with cache._db.reading() as conn:
        count = conn.execute(
            "SELECT count(*) FROM entry_vectors_small WHERE rowid = ?", (entry_id,)
        ).fetchone()
    assert count[0] == 1
    assert cache._store.orphan_counts() == (0, 0)


def test_null_metadata_is_rejected_so_the_cache_stores_empty_strings(
    raw: Any, cache: SemanticCache
) -> None:
    with pytest.raises(select_driver().Error, match="NULL"):
        raw.execute(
            "INSERT INTO v (rowid, embedding, ns) VALUES (1, ?, NULL)", (blob([1, 0, 0, 0]),)
        )
    entry_id = cache.store("shared entry without user or context", None, "r")
    with cache._db.reading() as conn:  # no user, no context: hash 0 in the index
        row = conn.execute(
            "SELECT namespace, owner, context FROM entry_vectors_small WHERE rowid = ?",
            (entry_id,),
        ).fetchone()
    assert tuple(row) == ("default", 0, 0)


def test_text_metadata_is_compared_up_to_the_first_nul_in_raw_sqlite_vec(raw: Any) -> None:
    raw.execute(
        "INSERT INTO v (rowid, embedding, ns) VALUES (1, ?, ?)", (blob([1, 0, 0, 0]), "a\0b")
    )
    rows = raw.execute(
        "SELECT rowid FROM v WHERE embedding MATCH ? AND k = 1 AND ns = ?",
        (blob([1, 0, 0, 0]), "a\0c"),
    ).fetchall()
    assert rows == [(1,)]  # 'a\0b' matched 'a\0c': why the cache refuses NUL in scope names


def test_the_cache_refuses_nul_in_scope_names(cache: SemanticCache) -> None:
    with pytest.raises(InvalidInputError, match="NUL"):
        cache.store("question", None, "answer", namespace="tenant\0a")
    with pytest.raises(InvalidInputError, match="NUL"):
        cache.lookup("question", user_id="user\0b")


@pytest.mark.parametrize("dimension", ["namespace", "user_id", "context"])
def test_scope_filter_runs_inside_the_knn_not_after_top_k(
    cache: SemanticCache, fake_embedder: FakeEmbedder, dimension: str
) -> None:
    """200 out-of-scope vectors identical to the query are nearer than the one in scope;
    a filter applied after a top-k would find nothing in scope."""
    query = "reset my password now"
    mine: dict[str, Any] = {"namespace": "mine", "user_id": "alice", "context": {"m": 1}}
    other = dict(mine)
    other[dimension] = {"namespace": "theirs", "user_id": "bob", "context": {"m": 2}}[dimension]
    vector = fake_embedder.vector(query)
    cache.store_many(
        [f"{query} {i}" for i in range(200)],
        ["out of scope"] * 200,
        embeddings=[vector] * 200,
        **other,
    )
    target = cache.store("reset my password now please kindly", None, "in scope", **mine)
    hit = cache.lookup(query, threshold=0.5, **mine)
    assert hit is not None and hit.entry_id == target and hit.response == "in scope"
    assert [r.entry_id for r in cache.search(query, k=10, **mine)] == [target]
    with cache._db.reading() as conn:  # the same KNN without the filter: top 10 all theirs
        table = index_table(conn, other["namespace"])
        top = conn.execute(
            f"SELECT rowid FROM {table} WHERE embedding MATCH vec_bit(?) AND k = 10 "
            "AND namespace = ?",
            (quantize(vector)[0], other["namespace"]),
        ).fetchall()
    assert len(top) == 10 and target not in [r[0] for r in top]
