"""Cells: large namespaces partitioned by nearest centroid (vector_cells.py, vector_index.py).

The thresholds are lowered (a namespace gets 8 cells at 300 entries) so that a fast
test crosses them; the vectors are unit directions around 8 well-separated topics,
in 64 dimensions, stored with ``store_many(embeddings=...)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clock import FakeClock
from fakes import FakeEmbedder

from semcache_sqlite import (
    InvalidInputError,
    ReadOnlyError,
    SemanticCache,
    vector_cells,
    vector_index,
)
from semcache_sqlite.admin import Admin
from semcache_sqlite.vector_cells import NO_CELL, cells_to_probe, train_centroids

DIM = 64
TOPICS = 8
CLUSTER_AT = 300


def topic_vectors(count: int, seed: int, noise: float = 0.35) -> np.ndarray[Any, Any]:
    """``count`` unit vectors, each near one of TOPICS fixed directions (in turn)."""
    topics = np.random.default_rng(99).standard_normal((TOPICS, DIM))
    rng = np.random.default_rng(seed)
    vectors = topics[np.arange(count) % TOPICS] + noise * rng.standard_normal((count, DIM))
    unit: np.ndarray[Any, Any] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit.astype(np.float32)


def unit(vector: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    scaled: np.ndarray[Any, Any] = vector / np.linalg.norm(vector)
    return scaled.astype(np.float32)


@pytest.fixture
def small_cells(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_cells, "CLUSTER_AT", CLUSTER_AT)
    monkeypatch.setattr(vector_cells, "CELLS", TOPICS)
    monkeypatch.setattr(vector_cells, "TRAINING_SAMPLE", 200)  # a sample, not all


def open_cache(path: Path, **options: Any) -> SemanticCache:
    return SemanticCache(path, embedder=FakeEmbedder(dim=DIM), **{"guards": False, **options})


def store(cache: SemanticCache, vectors: np.ndarray[Any, Any], tag: str, **scope: Any) -> list[int]:
    texts = [f"{tag} {i}" for i in range(len(vectors))]
    return cache.store_many(texts, [f"answer {t}" for t in texts], embeddings=vectors, **scope)


def index_cells(cache: SemanticCache, namespace: str) -> dict[int, int]:
    with cache._db.reading() as conn:
        return {
            int(r[0]): int(r[1])
            for r in conn.execute(
                "SELECT rowid, cell FROM entry_vectors WHERE namespace = ? UNION ALL "
                "SELECT rowid, cell FROM entry_vectors_small WHERE namespace = ?",
                (namespace, namespace),
            )
        }


def centroids(cache: SemanticCache, namespace: str) -> np.ndarray[Any, Any] | None:
    with cache._db.reading() as conn:
        return vector_index.namespace_centroids(conn, namespace)


# -- training ------------------------------------------------------------------


def test_training_finds_the_topics_and_is_deterministic() -> None:
    vectors = topic_vectors(400, seed=1)
    trained = train_centroids(vectors, TOPICS, seed=5)
    assert trained.shape == (TOPICS, DIM)
    assert np.linalg.norm(trained, axis=1) == pytest.approx(np.ones(TOPICS), abs=1e-5)
    cells = vector_cells.nearest_cells(trained, vectors)
    for topic in range(TOPICS):  # every topic lands in exactly one cell, its own
        assert len({cells[i] for i in range(topic, 400, TOPICS)}) == 1
    assert len(set(cells)) == TOPICS
    assert np.array_equal(trained, train_centroids(vectors, TOPICS, seed=5))


def test_training_with_fewer_distinct_vectors_than_cells() -> None:
    vectors = np.repeat(topic_vectors(3, seed=2), 50, axis=0)
    trained = train_centroids(vectors, TOPICS, seed=0)
    assert len(trained) == 3  # no empty or duplicate cells
    assert len(set(vector_cells.nearest_cells(trained, vectors))) == 3


def test_cells_to_probe_are_the_most_similar_centroids() -> None:
    trained = train_centroids(topic_vectors(400, seed=1), TOPICS, seed=5)
    query = topic_vectors(1, seed=9)[0]
    order = list(np.argsort(-(trained @ query)))
    assert sorted(cells_to_probe(trained, query, 3)) == sorted(order[:3])
    assert cells_to_probe(trained, query, 1) == [order[0]]
    assert sorted(cells_to_probe(trained, query, 50)) == list(range(TOPICS))


def test_search_cells_is_checked(tmp_path: Path) -> None:
    for bad in (0, -1, 1.5, True, 10**6):
        with pytest.raises(InvalidInputError, match="search_cells"):
            open_cache(tmp_path / "c.db", search_cells=bad)


# -- a namespace gets cells -------------------------------------------------------


@pytest.mark.usefixtures("small_cells")
def test_a_namespace_gets_cells_when_it_reaches_the_threshold(tmp_path: Path) -> None:
    """The write that brings a namespace to CLUSTER_AT entries trains its cells and
    moves every entry into its nearest cell, nothing lost or doubled; later entries
    go to their nearest cell. Another namespace is untouched."""
    vectors = topic_vectors(CLUSTER_AT + 40, seed=3)
    with open_cache(tmp_path / "c.db") as cache:
        store(cache, topic_vectors(20, seed=4), "small", namespace="small")
        first = store(cache, vectors[: CLUSTER_AT - 10], "big", namespace="big")
        assert centroids(cache, "big") is None
        assert set(index_cells(cache, "big").values()) == {NO_CELL}
        crossing = store(cache, vectors[CLUSTER_AT - 10 : CLUSTER_AT], "cross", namespace="big")
        trained = centroids(cache, "big")
        assert trained is not None and trained.shape == (TOPICS, DIM)
        with cache._db.reading() as conn:
            assert conn.execute(
                "SELECT cells, trained_on FROM vector_cells WHERE namespace = 'big'"
            ).fetchone() == (TOPICS, CLUSTER_AT)
        later = store(cache, vectors[CLUSTER_AT:], "later", namespace="big")
        cells = index_cells(cache, "big")
        ids = first + crossing + later
        assert sorted(cells) == sorted(ids)
        assert [cells[i] for i in ids] == vector_cells.nearest_cells(trained, vectors)
        assert len(set(cells.values())) == TOPICS
        assert centroids(cache, "small") is None
        assert set(index_cells(cache, "small").values()) == {NO_CELL}
        with cache._db.reading() as conn:  # cells live in the large table only
            tables = {n: vector_index.index_table(conn, n) for n in ("big", "small")}
            in_small = "SELECT count(*) FROM entry_vectors_small WHERE namespace = 'big'"
            assert conn.execute(in_small).fetchone()[0] == 0
        assert tables == {"big": "entry_vectors", "small": "entry_vectors_small"}
        for i in (0, 150, CLUSTER_AT + 5):
            assert cache.search_vector(vectors[i], k=1, namespace="big")[0].entry_id == ids[i]


@pytest.mark.usefixtures("small_cells")
def test_a_lookup_scans_the_cells_nearest_the_query(tmp_path: Path) -> None:
    """With one cell probed, a near-copy of an entry is found when the probe's nearest
    cell holds it; with every cell probed it is always found. The KNN of a cell
    returns that cell's rows only."""
    vectors = topic_vectors(CLUSTER_AT + 100, seed=6)
    rng = np.random.default_rng(7)
    with (
        open_cache(tmp_path / "c.db", search_cells=1) as one_cell,
        open_cache(tmp_path / "c.db", search_cells=TOPICS) as all_cells,
    ):
        ids = store(one_cell, vectors, "entry")
        trained = centroids(one_cell, "default")
        assert trained is not None
        cells = index_cells(one_cell, "default")
        in_probed_cell = 0
        for i in rng.choice(len(vectors), 80, replace=False):
            probe = vectors[i] + np.float32(0.005) * rng.standard_normal(DIM).astype(np.float32)
            assert all_cells.search_vector(probe, k=1)[0].entry_id == ids[i]
            if cells_to_probe(trained, probe, 1) == [cells[ids[i]]]:
                in_probed_cell += 1
                assert one_cell.search_vector(probe, k=1)[0].entry_id == ids[i]
        assert in_probed_cell >= 72
        with one_cell._db.reading() as conn:
            for cell in range(TOPICS):
                in_cell = vector_index.candidate_ids(
                    conn,
                    vectors[0],
                    16,
                    0.0,
                    namespace="default",
                    context_key=one_cell.context_key(),
                    user_id="",
                    cells=[cell],
                )
                assert in_cell and {cells[i] for i in in_cell} == {cell}


@pytest.mark.usefixtures("small_cells")
def test_guarded_decisions_with_cells_equal_an_exact_scans(tmp_path: Path) -> None:
    """The k nearest of a lookup come from the probed cells, unless the nearest entry
    found is at least ``whole_namespace_from`` similar: then the other cells add
    candidates. For probes between topics the cells alone miss some of the exact
    4 nearest; the guarded decision of find_similar equals an exact scan's for every
    probe all the same."""
    vectors = topic_vectors(CLUSTER_AT + 100, seed=14)
    rng = np.random.default_rng(15)
    probes = [  # between three topics: their entries sit in several cells
        unit(vectors[i] + vectors[j] * rng.uniform(0.7, 1.0) + vectors[h] * rng.uniform(0.7, 1.0))
        for i, j, h in rng.integers(0, len(vectors), size=(300, 3))
    ]
    path = tmp_path / "c.db"
    with open_cache(path, search_cells=1) as cache:
        store(cache, vectors, "entry")
    cells_only_differ = hits = 0
    guarded = {"guards": True, "read_only": True}
    with (  # candidates enough to take whole cells: the cells are the only approximation
        open_cache(path, search_cells=1, search_candidates=512, **guarded) as fast,
        open_cache(path, exact_search=True, **guarded) as exact,
    ):
        store_ = fast._store
        for probe in probes:
            scope = fast._scope(None, None, None, None)
            want = [r.id for r, _ in exact._store.nearest(scope, probe, 4)]
            in_cells = store_.nearest(scope, probe, 4)
            cells_only = [r.id for r, _ in in_cells]
            below = store_.nearest(scope, probe, 4, whole_namespace_from=1.0)
            above = store_.nearest(scope, probe, 4, whole_namespace_from=0.0)
            assert [r.id for r, _ in below] == cells_only
            # More candidates: each of the k nearest is at least as near as before.
            assert all(a[1] <= c[1] + 1e-9 for a, c in zip(above, in_cells, strict=True))
            cells_only_differ += cells_only != want
            got = fast.find_similar(probe, threshold=0.6)
            expected = exact.find_similar(probe, threshold=0.6)
            assert (got is None) == (expected is None)
            if got is not None and expected is not None:
                assert got[0] == expected[0] and got[1] == pytest.approx(expected[1], abs=1e-6)
                hits += 1
    assert cells_only_differ > 0 and hits > 0


def _with_best_and_rival(
    path: Path, **options: Any
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Fill a namespace with cells, then return (centroids, query, rival): the query
    and its best match sit in one cell, an almost as similar rival in another."""
    with open_cache(path, **options) as cache:
        store(cache, topic_vectors(CLUSTER_AT, seed=16), "filler")
        trained = centroids(cache, "default")
        assert trained is not None
        first, second = 0, int(np.argmin(trained @ trained[0]))  # two distant cells
        best = unit(trained[first] + 0.8 * trained[second])
        rival = unit(0.8 * trained[first] + trained[second])
        query = unit(trained[first] + 0.9 * trained[second])
        nearest = vector_cells.nearest_cells(trained, np.stack([best, rival, query]))
        assert nearest == [first, second, first]  # the set-up these tests are about
        cache.store_many(["best question"], ["best"], embeddings=[best])
    return trained, query, rival


@pytest.mark.usefixtures("small_cells")
def test_a_competitor_in_another_cell_still_costs_a_servable_match_its_margin(
    tmp_path: Path,
) -> None:
    """A query between two cells, nearer the first: its best match sits there, an
    almost as similar competitor (another question) in the second. The probed cell
    alone would serve the match with no margin penalty; an exact scan finds the
    competitor and refuses it at 0.95. So does the fast path, which scans the other
    cells once the match is servable."""
    path = tmp_path / "c.db"
    _, query, rival = _with_best_and_rival(path)
    with open_cache(path) as cache:
        cache.store_many(["rival question"], ["rival"], embeddings=[rival])
    options = {"guards": True, "read_only": True, "search_cells": 1}
    with (
        open_cache(path, **options) as fast,
        open_cache(path, exact_search=True, **options) as exact,
    ):
        assert exact.find_similar(query, threshold=0.95) is None
        assert fast.find_similar(query, threshold=0.95) is None
        found = fast.find_similar(query, threshold=0.85)  # the margin costs < 0.1
        assert found is not None and found[0] == "best"
        scope = fast._scope(None, None, None, None)
        cells_only = fast._store.nearest(scope, query, 4)
        assert "rival question" not in [r.query for r, _ in cells_only]


@pytest.mark.usefixtures("small_cells")
def test_copies_tied_in_another_cell_never_force_an_exact_scan(
    tmp_path: Path, exact_scans: list[int]
) -> None:
    """16 stored copies of one question (keep_both) share their bits in another cell:
    the pass over the other cells cuts the tie instead of giving up for an O(n) scan."""
    path = tmp_path / "c.db"
    _, query, rival = _with_best_and_rival(path)
    with open_cache(path, on_duplicate="keep_both") as cache:
        cache.store_many(["popular question"] * 16, ["p"] * 16, embeddings=[rival] * 16)
    with open_cache(path, guards=True, read_only=True, search_cells=1) as fast:
        scope = fast._scope(None, None, None, None)
        found = fast._store.nearest(scope, query, 4, whole_namespace_from=0.5)
        assert [r.query for r, _ in found][:2] == ["best question", "popular question"]
        assert fast.find_similar(query, threshold=0.9) is None  # the copies compete
    assert exact_scans == []


@pytest.mark.usefixtures("small_cells")
def test_scope_and_expiry_filters_hold_in_a_namespace_with_cells(tmp_path: Path) -> None:
    """Private and expired near-copies, in the same cells, never hide the shared,
    fresh answer; other users never see alice's."""
    clock = FakeClock()
    base = topic_vectors(CLUSTER_AT, seed=8)
    target = topic_vectors(1, seed=10)[0]
    with open_cache(tmp_path / "c.db", clock=clock, search_cells=2) as cache:
        store(cache, base, "filler")
        assert centroids(cache, "default") is not None  # the entries below go to cells
        store(cache, np.repeat(target[None], 30, axis=0), "private", user_id="alice")
        store(cache, np.repeat(target[None], 30, axis=0), "expiring", ttl=60)
        shared = store(cache, target[None], "shared")[0]
        clock.advance(120)
        for user in ("", "bob"):
            hit = cache.search_vector(target, k=1, user_id=user)
            assert hit[0].entry_id == shared
        assert cache.search_vector(target, k=1, user_id="alice")[0].response.startswith(
            "answer private"
        )


@pytest.mark.usefixtures("small_cells")
def test_a_rebuild_trains_cells_for_the_namespaces_large_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vacuum (a rebuild) trains cells for a namespace that grew past the threshold
    while the threshold was higher, and drops those of one that shrank below it."""
    path = tmp_path / "c.db"
    monkeypatch.setattr(vector_cells, "CLUSTER_AT", 10**6)
    with open_cache(path) as cache:
        grew = store(cache, topic_vectors(CLUSTER_AT, seed=11), "grew", namespace="grew")
    monkeypatch.setattr(vector_cells, "CLUSTER_AT", CLUSTER_AT)
    with open_cache(path) as cache:
        shrank = store(cache, topic_vectors(CLUSTER_AT, seed=12), "shrank", namespace="shrank")
        assert centroids(cache, "grew") is None and centroids(cache, "shrank") is not None
        for entry_id in shrank[: CLUSTER_AT // 2]:
            cache.delete(entry_id)
        cache.vacuum()
        assert centroids(cache, "shrank") is None
        assert set(index_cells(cache, "shrank").values()) == {NO_CELL}
        trained = centroids(cache, "grew")
        assert trained is not None
        cells = index_cells(cache, "grew")
        assert sorted(cells) == sorted(grew) and NO_CELL not in cells.values()
        vectors = topic_vectors(CLUSTER_AT, seed=11)
        assert [cells[i] for i in grew] == vector_cells.nearest_cells(trained, vectors)
        for i in (0, 17, 123):
            assert cache.search_vector(vectors[i], k=1, namespace="grew")[0].entry_id == grew[i]


# -- files of the previous layout -------------------------------------------------


def make_previous_layout(path: Path, vectors: np.ndarray[Any, Any]) -> list[int]:
    """A file as the version before cells wrote it: schema 5, a vec0 index without
    the ``cell`` partition key, no vector_cells table."""
    with open_cache(path) as cache:
        ids = store(cache, vectors, "old")
        with cache._db.transaction() as conn:
            conn.execute("DROP TABLE entry_vectors")
            conn.execute("DROP TABLE entry_vectors_small")
            conn.execute(
                "CREATE VIRTUAL TABLE entry_vectors USING vec0(namespace text partition key, "
                f"embedding bit[{DIM}], context integer, owner integer, expires_at float)"
            )
            conn.executemany(
                "INSERT INTO entry_vectors (rowid, namespace, embedding, context, owner, "
                "expires_at) VALUES (?, 'default', vec_bit(?), 0, 0, 1e18)",
                zip(ids, vector_index.quantize(vectors), strict=True),
            )
            conn.execute("DROP TABLE vector_cells")
            conn.execute("DELETE FROM schema_migrations WHERE version >= 6")
            conn.execute("PRAGMA user_version = 5")
    return ids


@pytest.mark.usefixtures("small_cells")
def test_a_file_of_the_previous_layout_is_upgraded_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    vectors = topic_vectors(CLUSTER_AT + 20, seed=13)
    ids = make_previous_layout(path, vectors)
    with pytest.raises(ReadOnlyError, match="schema 5"):  # cannot be upgraded read-only
        open_cache(path, read_only=True)
    with open_cache(path) as cache:
        cells = index_cells(cache, "default")
        assert sorted(cells) == sorted(ids) and centroids(cache, "default") is not None
        for i in (0, 5, 300):
            assert cache.search_vector(vectors[i], k=1)[0].entry_id == ids[i]
    with open_cache(path, read_only=True) as reader:
        assert reader.search_vector(vectors[7], k=1)[0].entry_id == ids[7]


@pytest.mark.usefixtures("small_cells")
def test_a_namespace_emptied_and_refilled_keeps_its_cells_in_the_large_table(
    tmp_path: Path,
) -> None:
    """Emptied, a namespace with cells has no chunk left but keeps its centroids: its
    next entries go to their cells in the large table (where lookups of a namespace
    with cells look), not to the small namespaces' table."""
    vectors = topic_vectors(CLUSTER_AT + 10, seed=21)
    with open_cache(tmp_path / "c.db") as cache:
        ids = store(cache, vectors[:CLUSTER_AT], "first", namespace="big")
        trained = centroids(cache, "big")
        assert trained is not None
        for entry_id in ids:
            cache.delete(entry_id)
        again = store(cache, vectors[CLUSTER_AT:], "again", namespace="big")
        with cache._db.reading() as conn:
            assert vector_index.index_table(conn, "big") == "entry_vectors"
            small = "SELECT count(*) FROM entry_vectors_small WHERE namespace = 'big'"
            assert conn.execute(small).fetchone()[0] == 0
        cells = index_cells(cache, "big")
        assert [cells[i] for i in again] == vector_cells.nearest_cells(
            trained, vectors[CLUSTER_AT:]
        )
        for i, entry_id in enumerate(again):
            found = cache.search_vector(vectors[CLUSTER_AT + i], k=1, namespace="big")
            assert found[0].entry_id == entry_id


@pytest.mark.usefixtures("small_cells")
def test_a_namespace_with_cells_whose_rows_are_in_the_small_table_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version before index_table counted cells put the rows of an emptied namespace
    with cells, refilled, in the small table. Lookups of a namespace with cells now scan
    the large table and miss them: the doctor's check of namespaces split between the
    tables (Admin.split_namespaces) must name it by the same rule, not only by a chunk
    left in the large table."""
    vectors = topic_vectors(CLUSTER_AT + 10, seed=22)
    with open_cache(tmp_path / "c.db") as cache:
        for entry_id in store(cache, vectors[:CLUSTER_AT], "first", namespace="big"):
            cache.delete(entry_id)
        table_of = vector_index.index_table

        def by_chunks_only(conn: Any, namespace: str) -> str:  # the rule before cells counted
            chunks = "SELECT 1 FROM entry_vectors_chunks WHERE partition00 = ?"
            held = conn.execute(chunks, (namespace,)).fetchone() is not None
            return "entry_vectors" if held else "entry_vectors_small"

        monkeypatch.setattr(vector_index, "index_table", by_chunks_only)
        store(cache, vectors[CLUSTER_AT:], "again", namespace="big")
        monkeypatch.setattr(vector_index, "index_table", table_of)
        assert cache.search_vector(vectors[CLUSTER_AT], k=1, namespace="big") == []
        assert Admin(cache._db).split_namespaces() == [("big", 10)]
