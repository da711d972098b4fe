"""The search path: bit-quantized vec0 prefilter + exact re-score (vector_index.py).

The fast path must give the answers of an exact scan: checked with the real local
model on a cache full of near-duplicates, and with a fake embedder for the
filters (scope, expiry), hash collisions, odd dimensions and the file layout.
"""

from __future__ import annotations

import itertools
import random
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from clock import FakeClock
from fakes import FakeEmbedder
from vm_steps import vm_steps

from semcache_sqlite import (
    DimensionMismatchError,
    EntryNotFoundError,
    InvalidInputError,
    InvalidVectorError,
    LocalEmbedder,
    ReadOnlyError,
    SemanticCache,
)
from semcache_sqlite import vector_cells as vector_cells_module
from semcache_sqlite import vector_index as vector_index_module
from semcache_sqlite.db import Database
from semcache_sqlite.migrate import migrate
from semcache_sqlite.validation import as_unit_matrix, as_unit_vector
from semcache_sqlite.vector_index import bit_width, quantize, scope_hash

SUBJECTS = [
    "password",
    "account",
    "invoice",
    "subscription",
    "email address",
    "phone number",
    "order",
    "refund",
    "delivery date",
    "shipping address",
    "profile picture",
    "username",
    "credit card",
    "two-factor authentication",
    "newsletter",
    "API key",
    "billing plan",
    "data export",
    "team members",
    "notification settings",
]
ACTIONS = ["change", "reset", "delete", "update", "cancel", "find", "recover", "verify"]
CACHED_FORMS = [
    "How do I {a} my {s}?",
    "What is the way to {a} the {s}",
    "Can I {a} my {s} from the mobile app?",
]
PROBE_FORMS = [
    "how can i {a} my {s}",
    "steps to {a} my {s}",
    "is it possible to {a} my {s} on my phone",
]
UNRELATED = [
    "what is the weather in paris tomorrow",
    "who won the football world cup in 2014",
    "recipe for a chocolate cake without eggs",
    "how tall is the eiffel tower",
    "best hiking trails near the alps",
    "translate good morning into german",
    "what time does the museum open on sunday",
    "how many planets are in the solar system",
]


@pytest.fixture(scope="module")
def near_duplicates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """480 cached support questions that differ by one word from dozens of others,
    and 128 probes (paraphrases of cached ones and unrelated questions)."""
    path = tmp_path_factory.mktemp("fidelity") / "cache.db"
    cached = [
        form.format(a=a, s=s) for form, a, s in itertools.product(CACHED_FORMS, ACTIONS, SUBJECTS)
    ]
    rng = random.Random(7)
    pairs = rng.sample(list(itertools.product(ACTIONS, SUBJECTS)), 40)
    probes = [rng.choice(PROBE_FORMS).format(a=a, s=s) for a, s in pairs for _ in range(3)]
    probes = sorted(set(probes)) + UNRELATED
    with SemanticCache(path, embedder=LocalEmbedder()) as cache:
        cache.store_many(cached, [f"answer {i}" for i in range(len(cached))])
    return path, probes


@pytest.mark.parametrize("guards", [True, False])
def test_fast_path_decides_like_an_exact_scan(
    near_duplicates: tuple[Path, list[str]], guards: bool
) -> None:
    path, probes = near_duplicates
    opts: dict[str, Any] = {"embedder": LocalEmbedder(), "read_only": True, "guards": guards}
    with (
        SemanticCache(path, **opts) as fast,
        SemanticCache(path, exact_search=True, **opts) as exact,
    ):
        hits = 0
        for probe in probes:
            want, got = exact.lookup(probe), fast.lookup(probe)
            assert (got is None) == (want is None), probe
            if want is not None and got is not None:
                hits += 1
                assert got.entry_id == want.entry_id, probe
                assert got.similarity == pytest.approx(want.similarity, abs=1e-6)
                assert got.score == pytest.approx(want.score, abs=1e-6)
            # The neighbours that can matter (the guards look 0.3 below the best) come
            # in the same order; the ranking of distant entries is approximate.
            near = [r.entry_id for r in exact.search(probe, k=4) if (r.similarity or 0) >= 0.5]
            assert [r.entry_id for r in fast.search(probe, k=4)][: len(near)] == near, probe
        assert hits >= 10  # the probes do reach the decisions that matter


def test_one_candidate_is_not_enough_on_near_duplicates(
    near_duplicates: tuple[Path, list[str]],
) -> None:
    """The comparison above can fail: with a single Hamming candidate the fast path
    picks another entry than the exact scan for some probes."""
    path, probes = near_duplicates
    with (
        SemanticCache(path, embedder=LocalEmbedder(), read_only=True, search_candidates=1) as one,
        SemanticCache(path, embedder=LocalEmbedder(), read_only=True, exact_search=True) as exact,
    ):
        differ = sum(
            one.search(p, k=1)[0].entry_id != exact.search(p, k=1)[0].entry_id for p in probes
        )
    assert differ > 0


def test_search_candidates_is_checked(tmp_path: Path) -> None:
    bad_values: list[Any] = [0, -1, 1.5, True, 5000]
    for bad in bad_values:
        with pytest.raises(InvalidInputError, match="search_candidates"):
            SemanticCache(tmp_path / "c.db", embedder=FakeEmbedder(), search_candidates=bad)


def test_quantize_matches_sqlite_vec(cache: SemanticCache) -> None:
    vector = np.array([0.5, -1, 0, 2, 3, -4, 5, 6, 7, -8, 1e-9], dtype=np.float32)
    with cache._db.reading() as conn:
        theirs = conn.execute("SELECT vec_quantize_binary(?)", (vector[:8].tobytes(),)).fetchone()
    assert quantize(vector[:8])[0] == bytes(theirs[0])
    assert len(quantize(vector)[0]) == 2 and bit_width(11) == 16  # padded with zero bits


@pytest.mark.parametrize("dim", [3, 5, 12, 64])
def test_any_dimension_works(tmp_path: Path, dim: int) -> None:
    """Bit vectors come in whole bytes: other dimensions are padded with zero bits."""
    vectors = np.random.default_rng(dim).standard_normal((20, dim)).astype(np.float32)
    with SemanticCache(tmp_path / "c.db", embedder=FakeEmbedder(dim=dim), guards=False) as cache:
        ids = cache.store_many(
            [f"entry {i}" for i in range(20)],
            [f"answer {i}" for i in range(20)],
            embeddings=vectors,
        )
        for i, vector in enumerate(vectors):
            found = cache.find_similar(vector, threshold=0.999)
            assert found is not None and found[0] == f"answer {i}"
            assert found[1] == pytest.approx(1.0, abs=1e-6)
            assert cache.search_vector(vector, k=1)[0].entry_id == ids[i]


def test_hash_collisions_cost_recall_never_isolation(
    db_path: Path, fake_embedder: FakeEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users and contexts are 64-bit hashes in the index; even if every one collided,
    the re-score checks the real scope, so nobody sees another's entries."""
    monkeypatch.setattr(vector_index_module, "scope_hash", lambda value: 7 if value else 0)
    with SemanticCache(db_path, embedder=fake_embedder, guards=False) as cache:
        cache.store("my account balance", None, "alice: 12 EUR", user_id="alice")
        cache.store("my account balance", None, "bob: 3 EUR", user_id="bob")
        cache.store("translate hello", None, "bonjour", context="fr")
        cache.store("translate hello", None, "hallo", context="de")
        for user in ("alice", "bob"):
            hit = cache.lookup("my account balance now", user_id=user, threshold=0.5)
            assert hit is not None and hit.response.startswith(user)
        assert cache.lookup("my account balance now", threshold=0.5) is None  # anonymous
        assert cache.lookup("my account balance now", user_id="carol", threshold=0.5) is None
        hit = cache.lookup("translate hello please", context="de", threshold=0.5)
        assert hit is not None and hit.response == "hallo"
        assert cache.lookup("translate hello please", context="es", threshold=0.5) is None


def test_filters_that_cannot_exclude_anything_are_left_out_until_they_can(
    db_path: Path, fake_embedder: FakeEmbedder
) -> None:
    """A namespace of shared entries only is scanned without the owner filter; the
    first private entry brings it back, so 40 private near-copies never hide the
    one shared answer from an anonymous user (nor from another user)."""
    with SemanticCache(db_path, embedder=fake_embedder, guards=False) as cache:
        shared = cache.store("reset my password now please", None, "shared answer")
        assert cache.lookup("reset my password", threshold=0.5) is not None
        vector = fake_embedder.vector("reset my password")
        cache.store_many(
            [f"reset my password {i}" for i in range(40)],
            ["private"] * 40,
            embeddings=[vector] * 40,
            user_id="alice",
        )
        for user in ("", "bob"):
            hit = cache.lookup("reset my password", user_id=user, threshold=0.5)
            assert hit is not None and hit.entry_id == shared
        hit = cache.lookup("reset my password", user_id="alice", threshold=0.5)
        assert hit is not None and hit.response == "private"


def test_expired_near_copies_never_hide_a_fresh_entry(
    db_path: Path, fake_embedder: FakeEmbedder
) -> None:
    clock = FakeClock()
    with SemanticCache(db_path, embedder=fake_embedder, clock=clock, guards=False) as cache:
        vector = fake_embedder.vector("opening hours")
        cache.store_many(
            [f"opening hours {i}" for i in range(40)],
            ["old"] * 40,
            embeddings=[vector] * 40,
            ttl=60,
        )
        clock.advance(120)  # all 40 expired, none purged yet
        fresh = cache.store("what are the opening hours today", None, "9 to 5")
        hit = cache.lookup("opening hours", threshold=0.5)
        assert hit is not None and hit.entry_id == fresh


def test_layout_of_a_new_file(cache: SemanticCache) -> None:
    entry_id = cache.store("alpha beta gamma", None, "a", user_id="alice", context="fr")
    with cache._db.reading() as conn:
        assert int(conn.execute("PRAGMA page_size").fetchone()[0]) == 8192
        for table, chunk_rows in (("entry_vectors", 1024), ("entry_vectors_small", 32)):
            ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
            assert "namespace text partition key" in ddl[0] and "bit[64]" in ddl[0]
            assert f"chunk_size={chunk_rows}" in ddl[0]
        # A namespace of one entry: in the table of the small namespaces.
        assert conn.execute("SELECT count(*) FROM entry_vectors").fetchone()[0] == 0
        row = conn.execute(
            "SELECT namespace, owner, context, expires_at FROM entry_vectors_small WHERE rowid = ?",
            (entry_id,),
        ).fetchone()
        blob = conn.execute(
            "SELECT embedding FROM entry_embeddings WHERE id = ?", (entry_id,)
        ).fetchone()[0]
    assert tuple(row) == ("default", scope_hash("alice"), scope_hash(cache.context_key("fr")), 1e18)
    stored = np.frombuffer(blob, dtype="<f4")
    expected = cache.embedder.embed(["alpha beta gamma"])[0]
    assert stored == pytest.approx(expected / np.linalg.norm(expected), abs=1e-6)


def _vec0_chunk_statements(cache: SemanticCache, query: str) -> list[str]:
    """The statements sqlite-vec itself runs on its chunks table during a lookup and a
    store, each with its query plan (SQLite traces an extension's statements as
    ``-- SQL``)."""
    traced: list[str] = []
    conn = cache._db.connection()  # this thread's: the one the lookup and store use
    conn.set_trace_callback(traced.append)
    try:
        cache.lookup(query)
        cache.store(query + " again", None, "another answer")
    finally:
        conn.set_trace_callback(None)
    inner = {t.removeprefix("-- ").strip() for t in traced if t.startswith("-- ")}
    chunk_queries = sorted(t for t in inner if "_chunks" in t and "partition00 = ?" in t)
    return [
        " ".join(
            str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (0,) * sql.count("?"))
        )
        for sql in chunk_queries
    ]


@pytest.mark.parametrize("table", ["entry_vectors", "entry_vectors_small"])
def test_sqlite_vec_finds_a_partitions_chunks_through_the_index(
    cache: SemanticCache, monkeypatch: pytest.MonkeyPatch, table: str
) -> None:
    """sqlite-vec 0.1.9 looks a partition's chunks up by (namespace, cell) on every KNN
    and insert, in a table it does not index: the library's index must serve both, in
    both vec0 tables (a namespace of one entry is large with PROMOTE_AT=1)."""
    if table == "entry_vectors":
        monkeypatch.setattr(vector_index_module, "PROMOTE_AT", 1)
    entry_id = cache.store("alpha beta gamma", None, "a")
    plans = _vec0_chunk_statements(cache, "alpha beta gamma delta")
    assert len(plans) == 2  # the KNN's chunk list, the insert's newest chunk
    assert all(f"{table}_chunks_partition" in plan for plan in plans), plans
    with cache._db.reading() as conn:
        held = conn.execute(f"SELECT count(*) FROM {table} WHERE rowid = ?", (entry_id,))
        assert held.fetchone()[0] == 1


def _made_before_the_small_table(
    monkeypatch: pytest.MonkeyPatch, path: Path, *, schema: int | None = None
) -> list[int]:
    """A file as the versions before the small namespaces' table (and, before that, the
    partition index) wrote it: one vec0 table, of 512-row chunks to see a rebuild;
    ``schema``: its version set back to that (6: the version before the table).
    Namespace n1 holds two entries, n2 one; returns their ids."""

    def one_table(conn: Any, dim: int) -> None:
        conn.execute(vector_index_module.vector_table_ddl(dim))

    with monkeypatch.context() as old_version:
        old_version.setattr(vector_index_module, "CHUNK_ROWS", 512)
        old_version.setattr(vector_index_module, "create_vector_table", one_table)
        old_version.setattr(vector_index_module, "complete_index", lambda conn: False)
        with SemanticCache(path, embedder=FakeEmbedder(), guards=False) as cache:
            ids = cache.store_many(["alpha beta", "gamma delta"], ["a", "g"], namespace="n1")
            ids.append(cache.store("epsilon zeta", None, "e", namespace="n2"))
            if schema is not None:
                with cache._db.transaction() as conn:
                    conn.execute("DELETE FROM schema_migrations WHERE version > ?", (schema,))
                    conn.execute(f"PRAGMA user_version = {int(schema)}")
            return ids


def test_a_file_of_a_version_before_the_small_table_gains_it_without_a_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened writable, such a file (schema 6) gets the small namespaces' table and the
    partition indexes (a few ms), not a rebuild of its vectors (its chunk size stays,
    its namespaces stay in the large table, new ones go to the small). Read-only, it is
    refused like any file of an older schema; at schema 7 but without the table (its
    writable open could not take the lock for it), read-only handles work without it.
    `semcache migrate` adds them too."""
    path = tmp_path / "old.db"
    ids = _made_before_the_small_table(monkeypatch, path, schema=6)
    with pytest.raises(ReadOnlyError, match="schema 6"):
        SemanticCache(path, embedder=FakeEmbedder(), read_only=True)
    with closing(Database(path)) as database:
        migrate(database)  # schema 7, the vector index as it was

    def complete_and_chunk_size() -> tuple[bool, bool]:
        with SemanticCache(path, embedder=FakeEmbedder(), read_only=True) as reader:
            conn = reader._db.connection()
            ddl = conn.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'entry_vectors'"
            ).fetchone()[0]
            return not vector_index_module.index_incomplete(conn), "chunk_size=512" in ddl

    assert complete_and_chunk_size() == (False, True)
    with SemanticCache(path, embedder=FakeEmbedder(), read_only=True, guards=False) as reader:
        found = reader.lookup("alpha beta", namespace="n1")
        assert found is not None and found.entry_id == ids[0]
        assert reader.lookup("nothing here", namespace="n3") is None  # no small table
    assert complete_and_chunk_size() == (False, True)  # a read-only open changes nothing
    with SemanticCache(path, embedder=FakeEmbedder(), guards=False) as cache:
        found = cache.lookup("gamma delta", namespace="n1")
        assert found is not None and found.entry_id == ids[1]
        assert _vec0_chunk_statements(cache, "epsilon zeta eta")  # still served
        new = cache.store("theta iota", None, "t", namespace="n3")
        more = cache.store("kappa lambda", None, "k", namespace="n2")
        conn = cache._db.connection()
        assert vector_index_module.index_table(conn, "n2") == "entry_vectors"
        assert vector_index_module.index_table(conn, "n3") == "entry_vectors_small"
        for entry_id, table in ((new, "entry_vectors_small"), (more, "entry_vectors")):
            held = conn.execute(f"SELECT count(*) FROM {table} WHERE rowid = ?", (entry_id,))
            assert held.fetchone()[0] == 1
        found = cache.lookup("theta iota", namespace="n3")
        assert found is not None and found.entry_id == new
    assert complete_and_chunk_size() == (True, True)  # completed, not rebuilt


def test_a_busy_file_before_the_small_table_still_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The small table and the partition index are only optimisations: a writable open
    of a file of a version before them needs no write otherwise, so a writer holding
    the lock past the busy timeout (an import, a vacuum in another process) must not
    make the open fail. The file works without them and gains them at a later open."""
    path = tmp_path / "old.db"
    ids = _made_before_the_small_table(monkeypatch, path)
    writer = Database(path)
    try:
        # The writer holds the write lock while the file is reopened.
        with (
            writer.transaction(),
            SemanticCache(path, embedder=FakeEmbedder(), busy_timeout=0.2) as reopened,
        ):
            found = reopened.lookup("alpha beta", namespace="n1")
            assert found is not None and found.entry_id == ids[0]
            assert vector_index_module.index_incomplete(reopened._db.connection())
    finally:
        writer.close()
    with SemanticCache(path, embedder=FakeEmbedder(), guards=False) as cache:
        assert not vector_index_module.index_incomplete(cache._db.connection())


def test_orphans_in_either_vector_table_are_found(cache: SemanticCache) -> None:
    ids = cache.store_many(["alpha", "beta", "gamma"], ["a", "b", "c"])
    assert cache._store.orphan_counts() == (0, 0)
    with cache._db.transaction() as conn:
        conn.execute("DELETE FROM entry_embeddings WHERE id = ?", (ids[0],))
        conn.execute("DELETE FROM entry_vectors_small WHERE rowid = ?", (ids[1],))
        conn.execute("DELETE FROM entries WHERE id = ?", (ids[2],))
    assert cache._store.orphan_counts() == (2, 1)
    assert [r.entry_id for r in cache.search("alpha", k=3)] == []  # no exact vector: skipped


def test_a_batch_of_vectors_is_validated_like_single_ones() -> None:
    """store_many normalises a well-formed matrix in one pass; the result equals the
    row-by-row path, and any bad row still gets that path's error."""
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64, np.int64):
        matrix = (rng.standard_normal((40, 12)) * 7).astype(dtype)
        batch = as_unit_matrix(matrix, 12, 40)
        rows = np.stack([as_unit_vector(row, 12) for row in matrix])
        assert batch.dtype == np.float32
        assert np.abs(batch - rows).max() <= 1e-7
    unit = rows.astype(np.float32)  # rows of norm 1 (float32) pass through unchanged
    assert np.array_equal(as_unit_matrix(unit, 12, 40), unit)
    for extreme in (np.full((2, 4), 1e200), np.full((2, 4), 1e-42, dtype=np.float32)):
        assert as_unit_matrix(extreme, 4, 2) == pytest.approx(np.full((2, 4), 0.5))
    for bad, message in (([np.nan] * 12, "NaN"), ([0] * 12, "all zeros"), ([np.inf] * 12, "NaN")):
        matrix = rng.standard_normal((5, 12))
        matrix[3] = bad
        with pytest.raises(InvalidVectorError, match=message):
            as_unit_matrix(matrix, 12, 5)
    with pytest.raises(DimensionMismatchError):
        as_unit_matrix(rng.standard_normal((5, 11)), 12, 5)


@pytest.mark.parametrize("widening", [4, 2])
def test_candidates_that_all_tie_are_widened_then_scanned_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exact_scans: list[int], widening: int
) -> None:
    """All coordinates positive (some embedders, or a server's odd model): every entry
    has the same sign bits, so the 16 Hamming-nearest are an arbitrary 16. The lookup
    then takes every entry at that distance (all 60, under 4 x 16); when there are
    more than the widening allows (2 x 16), it scans the exact vectors instead."""
    monkeypatch.setattr(vector_index_module, "TIE_WIDENING", widening)
    rng = np.random.default_rng(3)
    vectors = np.abs(rng.standard_normal((60, 32))).astype(np.float32) + 0.1
    with SemanticCache(tmp_path / "c.db", embedder=FakeEmbedder(dim=32), guards=False) as cache:
        texts = [f"entry {i}" for i in range(60)]
        ids = cache.store_many(texts, [f"answer {i}" for i in range(60)], embeddings=vectors)
        for i in (59, 40, 17):
            probe = vectors[i] + np.float32(0.01) * rng.standard_normal(32).astype(np.float32)
            assert cache.search_vector(probe, k=1)[0].entry_id == ids[i]
            found = cache.find_similar(probe, threshold=0.99)
            assert found is not None and found[0] == f"answer {i}"
    assert len(exact_scans) == (0 if widening == 4 else 6)


def test_a_widened_tie_keeps_the_scope_and_expiry_filters(tmp_path: Path) -> None:
    """The widening query filters like the first: of 80 entries with the same bits,
    only the 30 shared, unexpired ones of this context come back."""
    clock = FakeClock()
    vector = np.ones(16, dtype=np.float32)
    with SemanticCache(
        tmp_path / "c.db", embedder=FakeEmbedder(dim=16), clock=clock, guards=False
    ) as cache:

        def put(n: int, tag: str, **scope: Any) -> list[int]:
            texts = [f"{tag} {i}" for i in range(n)]
            return cache.store_many(texts, texts, embeddings=[vector] * n, **scope)

        wanted = put(30, "shared")
        put(20, "private", user_id="alice")
        put(20, "other context", context="fr")
        put(10, "expiring", ttl=60)
        clock.advance(120)
        with cache._db.reading() as conn:
            found = vector_index_module.candidate_ids(
                conn,
                vector,
                16,
                clock(),
                namespace="default",
                context_key=cache.context_key(),
                user_id="",
            )
        assert found is not None and sorted(found) == wanted


def test_sign_bit_information() -> None:
    """Bits of information the sign bits carry: one per coordinate whose sign splits
    the vectors in half, none for one they all share."""
    rng = np.random.default_rng(2)
    balanced = rng.standard_normal((4000, 16))
    assert vector_index_module.sign_bit_information(balanced) == pytest.approx(16, abs=0.05)
    assert vector_index_module.sign_bit_information(np.abs(balanced)) == 0.0
    half = np.abs(balanced)
    half[:, 0] = balanced[:, 0]  # one coordinate keeps its sign: 1 bit
    assert vector_index_module.sign_bit_information(half) == pytest.approx(1, abs=0.01)
    skewed = np.where(rng.random((4000, 1)) < 0.1, -1.0, 1.0)  # 10% negative: 0.47 bits
    assert vector_index_module.sign_bit_information(skewed) == pytest.approx(0.469, abs=0.02)


# -- the small namespaces' table ---------------------------------------------------


def _rows_per_table(cache: SemanticCache, namespace: str) -> tuple[int, int]:
    """(index rows in the large table, in the small one) of a namespace."""
    with cache._db.reading() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.execute(f"SELECT count(*) FROM {t} WHERE namespace = ?", (namespace,))
                .fetchone()[0])
            for t in ("entry_vectors", "entry_vectors_small")
        )  # fmt: skip


def _unit_vectors(count: int, seed: int, dim: int = 64) -> np.ndarray[Any, Any]:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    unit: np.ndarray[Any, Any] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def _all_found(
    cache: SemanticCache, ids: list[int], vectors: np.ndarray[Any, Any], ns: str
) -> bool:
    return all(
        cache.search_vector(v, k=1, namespace=ns)[0].entry_id == i
        for i, v in zip(ids, vectors, strict=True)
    )


def test_a_namespace_moves_to_the_large_table_when_it_reaches_promote_at(
    cache: SemanticCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below PROMOTE_AT entries a namespace's index rows are in the small table; the
    write that takes it there moves them all to the large one, nothing lost or doubled;
    a namespace written whole past the mark goes straight to the large one."""
    monkeypatch.setattr(vector_index_module, "PROMOTE_AT", 30)
    vectors = _unit_vectors(80, seed=1)
    texts = [f"question {i}" for i in range(80)]
    grow = cache.store_many(texts[:20], texts[:20], embeddings=vectors[:20], namespace="grow")
    stay = cache.store_many(texts[20:25], texts[20:25], embeddings=vectors[20:25], namespace="stay")
    assert _rows_per_table(cache, "grow") == (0, 20)
    assert _all_found(cache, grow, vectors[:20], "grow")
    grow += cache.store_many(
        texts[25:40], texts[25:40], embeddings=vectors[25:40], namespace="grow"
    )
    assert _rows_per_table(cache, "grow") == (35, 0)
    assert _rows_per_table(cache, "stay") == (0, 5)
    whole = cache.store_many(texts[40:], texts[40:], embeddings=vectors[40:], namespace="whole")
    assert _rows_per_table(cache, "whole") == (40, 0)
    assert _all_found(cache, grow, np.concatenate([vectors[:20], vectors[25:40]]), "grow")
    assert _all_found(cache, stay, vectors[20:25], "stay")
    assert _all_found(cache, whole, vectors[40:], "whole")
    assert cache._store.orphan_counts() == (0, 0)


def test_a_promotion_reads_only_the_rows_of_its_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write that takes a namespace to PROMOTE_AT finds its rows in the small table
    without reading the other small namespaces' rows: asked by namespace outside a KNN,
    vec0 scans the whole table (0.45 s at 80k rows there, under the write lock).
    Measured in SQLite VM steps, which do not depend on the machine."""
    monkeypatch.setattr(vector_index_module, "PROMOTE_AT", 20)
    vectors = _unit_vectors(20, seed=3)
    texts = [f"question {i}" for i in range(20)]

    def steps_of_the_crossing_write(other_namespaces: int) -> int:
        with SemanticCache(tmp_path / f"c{other_namespaces}.db", embedder=FakeEmbedder()) as cache:
            for n in range(other_namespaces):
                cache.store_many(texts[:19], texts[:19], embeddings=vectors[:19], namespace=f"o{n}")
            cache.store_many(texts[:19], texts[:19], embeddings=vectors[:19], namespace="grow")
            with vm_steps(cache) as steps:
                cache.store(texts[19], vectors[19], texts[19], namespace="grow")
            assert _rows_per_table(cache, "grow") == (20, 0)
            return steps[0]

    alone = steps_of_the_crossing_write(0)
    assert steps_of_the_crossing_write(30) < alone * 1.5, alone  # was 3x, growing with them


def test_clearing_a_small_namespace_does_not_scan_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vec0 answers ``rowid IN (...)`` with a scan of the whole table: clearing a
    namespace of 13 entries took 33-41 ms in a file of 100k (every other row read under
    the write lock), ~10x that at 1M. A few entries are now deleted rowid by rowid.
    Measured in SQLite VM steps, which do not depend on the machine."""
    monkeypatch.setattr(vector_index_module, "PROMOTE_AT", 100)  # both vec0 tables in use

    def steps_of_clearing(others: int) -> int:
        vectors = _unit_vectors(others + 3, seed=5)
        texts = [f"question {i}" for i in range(others + 3)]
        with SemanticCache(tmp_path / f"c{others}.db", embedder=FakeEmbedder()) as cache:
            big = cache.store_many(texts[3:], texts[3:], embeddings=vectors[3:], namespace="big")
            for n in range(3):  # small namespaces, in the small table
                cache.store_many(
                    texts[3:13], texts[3:13], embeddings=vectors[3:13], namespace=f"s{n}"
                )
            cache.store_many(texts[:3], texts[:3], embeddings=vectors[:3], namespace="gone")
            with vm_steps(cache) as steps:
                assert cache.clear("gone") == 3
            assert _rows_per_table(cache, "gone") == (0, 0)
            assert cache._store.orphan_counts() == (0, 0)
            assert _all_found(cache, big[::50], vectors[3::50], "big")
            return steps[0]

    fewer = steps_of_clearing(300)
    assert steps_of_clearing(3000) < fewer * 1.5, fewer  # was ~10x, growing with them


@pytest.mark.parametrize("ratio", [1, 10**9], ids=["rowid-by-rowid", "one-scan"])
def test_deletes_by_scope_leave_no_orphans_either_way(
    cache: SemanticCache, monkeypatch: pytest.MonkeyPatch, ratio: int
) -> None:
    """Both ways of deleting a scope's vectors (vector_index.ROWID_DELETE_RATIO) take
    exactly its rows, from both vec0 tables and the exact vectors."""
    monkeypatch.setattr(vector_index_module, "PROMOTE_AT", 30)
    monkeypatch.setattr(vector_index_module, "ROWID_DELETE_RATIO", ratio)
    vectors = _unit_vectors(60, seed=6)
    texts = [f"question {i}" for i in range(60)]
    large = cache.store_many(texts[:40], texts[:40], embeddings=vectors[:40], namespace="large")
    small = cache.store_many(texts[40:], texts[40:], embeddings=vectors[40:], namespace="small")
    mine = cache.store_many(texts[:5], texts[:5], embeddings=vectors[:5], user_id="u1")
    assert cache.clear("default", user_id="u1") == 5
    assert cache.clear("large") == 40
    assert _rows_per_table(cache, "large") == (0, 0) and _rows_per_table(cache, "default") == (0, 0)
    assert _rows_per_table(cache, "small") == (0, 20)
    assert _all_found(cache, small, vectors[40:], "small")
    assert cache._store.orphan_counts() == (0, 0)
    assert cache.stats()["cached_entries"] == 20
    for entry_id in large + mine:
        with pytest.raises(EntryNotFoundError):
            cache.get(entry_id)


def test_a_namespace_lives_in_one_table_through_deletes_and_a_rebuild(
    cache: SemanticCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Emptied, a large namespace has no chunk left in the large table, so its next
    entries go to the small one; a rebuild (vacuum) puts each namespace in the table for
    its size then. Its entries are found throughout."""
    monkeypatch.setattr(vector_index_module, "PROMOTE_AT", 30)
    vectors = _unit_vectors(60, seed=2)
    texts = [f"question {i}" for i in range(60)]
    ids = cache.store_many(texts[:40], texts[:40], embeddings=vectors[:40], namespace="n")
    assert _rows_per_table(cache, "n") == (40, 0)
    for entry_id in ids[10:]:
        cache.delete(entry_id)
    assert _rows_per_table(cache, "n") == (10, 0)  # still large: it has chunks there
    assert _all_found(cache, ids[:10], vectors[:10], "n")
    cache.vacuum()  # rebuilt: 10 entries belong in the small table
    assert _rows_per_table(cache, "n") == (0, 10)
    assert _all_found(cache, ids[:10], vectors[:10], "n")
    for entry_id in ids[:10]:
        cache.delete(entry_id)
    again = cache.store_many(texts[40:45], texts[40:45], embeddings=vectors[40:45], namespace="n")
    assert _rows_per_table(cache, "n") == (0, 5)
    assert _all_found(cache, again, vectors[40:45], "n")
    assert cache._store.orphan_counts() == (0, 0)


def test_a_small_namespace_preallocates_a_small_chunk(tmp_path: Path) -> None:
    """Each namespace pre-allocates a chunk of its table: 1,024 rows of bit[384] took
    ~85 KiB per namespace, most of a file of many small namespaces."""
    with SemanticCache(tmp_path / "c.db", embedder=FakeEmbedder(dim=384)) as cache:
        cache.store("first question", None, "a", namespace="ns-0")
        conn = cache._db.connection()

        def file_bytes() -> int:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            return int(pages) * int(conn.execute("PRAGMA page_size").fetchone()[0])

        before = file_bytes()
        for j in range(1, 101):
            cache.store(f"question {j}", None, "a", namespace=f"ns-{j}")
        per_namespace = (file_bytes() - before) / 100
    assert per_namespace < 12 * 1024, per_namespace  # 32-row chunks: ~4-8 KiB with the rows


def test_a_lookup_reads_one_snapshot_while_another_writer_promotes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookup finds its namespace's table, then runs the KNN there: another process
    moving the namespace to the large table between the two (its promotion committed)
    made the KNN scan an emptied table, and the lookup missed an entry it holds. The
    lookup's statements read one snapshot of the file."""
    monkeypatch.setattr(vector_index_module, "PROMOTE_AT", 30)
    path = tmp_path / "c.db"
    vectors = _unit_vectors(31, seed=4)
    texts = [f"question {i}" for i in range(31)]
    with SemanticCache(path, embedder=FakeEmbedder(), read_only=False) as cache:
        ids = cache.store_many(texts[:29], texts[:29], embeddings=vectors[:29], namespace="n")
    writer = SemanticCache(path, embedder=FakeEmbedder())
    reader = SemanticCache(path, embedder=FakeEmbedder(), read_only=True)
    try:
        table_of = vector_index_module.index_table
        crossed: list[bool] = []

        def promoted_meanwhile(conn: Any, namespace: str) -> str:
            table = table_of(conn, namespace)
            if conn is reader._db.connection() and not crossed:
                crossed.append(True)  # the other writer crosses 30 entries now
                writer.store_many(texts[29:], texts[29:], embeddings=vectors[29:], namespace="n")
            return table

        monkeypatch.setattr(vector_index_module, "index_table", promoted_meanwhile)
        found = reader.search_vector(vectors[3], k=1, namespace="n")
        assert [r.entry_id for r in found] == [ids[3]]
        monkeypatch.setattr(vector_index_module, "index_table", table_of)
        assert _rows_per_table(writer, "n") == (31, 0)  # it did move meanwhile
    finally:
        writer.close()
        reader.close()


@pytest.mark.parametrize("user", ["", "u1"])
def test_cells_in_one_statement_give_k_from_each_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, user: str
) -> None:
    """``candidate_ids`` asks for several cells with one ``cell IN (...)`` statement;
    the guards' pass over the other cells keeps more than ``k`` of them, so it needs
    sqlite-vec to answer with ``k`` rows from each cell, as one statement per cell did."""
    monkeypatch.setattr(vector_cells_module, "CLUSTER_AT", 300)
    monkeypatch.setattr(vector_cells_module, "CELLS", 8)
    monkeypatch.setattr(vector_cells_module, "TRAINING_SAMPLE", 200)
    vectors = _unit_vectors(520, seed=7)
    texts = [f"question {i}" for i in range(520)]
    with SemanticCache(tmp_path / "c.db", embedder=FakeEmbedder()) as cache:
        cache.store_many(texts[:500], texts[:500], embeddings=vectors[:500], namespace="big")
        cache.store_many(
            texts[500:], texts[500:], embeddings=vectors[500:], namespace="big", user_id="u1"
        )
        conn = cache._db.connection()

        def candidates(vector: Any, cells: list[int], k: int) -> list[int]:
            found = vector_index_module.candidate_ids(
                conn, vector, k, 0.0, namespace="big", context_key="", user_id=user,
                cells=cells, keep=10**6, widen=False,
            )  # fmt: skip
            assert found is not None
            return found

        for vector in vectors[::25]:
            cells = vector_index_module.lookup_cells(conn, "big", vector, 3)
            assert cells is not None  # the namespace has cells
            for some, k in ((cells[0], 16), (cells[1], 4)):
                together = candidates(vector, some, k)
                one_by_one = [i for cell in some for i in candidates(vector, [cell], k)]
                assert sorted(together) == sorted(one_by_one)
                assert len(together) > k or len(some) == 1
