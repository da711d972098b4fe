"""SemanticCache behaviour on a real file with sqlite-vec, using the fast fake embedder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from fakes import FakeEmbedder

from semcache_sqlite import (
    DimensionMismatchError,
    EntryNotFoundError,
    InvalidInputError,
    InvalidQueryError,
    InvalidThresholdError,
    InvalidVectorError,
    LLMError,
    SemanticCache,
    VersionConflictError,
)


def test_seed_api_store_find_similar_get_or_compute(
    cache: SemanticCache, fake_embedder: FakeEmbedder
) -> None:
    embedding = fake_embedder.vector("how do i reset my password")
    cache.store("how do i reset my password", embedding, "Settings > Reset")
    found = cache.find_similar(embedding)
    assert found is not None
    response, similarity = found
    assert response == "Settings > Reset"
    assert similarity == pytest.approx(1.0, abs=1e-6)
    assert cache.find_similar(fake_embedder.vector("completely unrelated words here")) is None

    calls: list[str] = []

    def llm(prompt: str) -> str:
        calls.append(prompt)
        return f"fresh answer for {prompt}"

    assert cache.get_or_compute("how do i reset my password", llm) == ("Settings > Reset", True)
    assert cache.get_or_compute("what is the weather today", llm) == (
        "fresh answer for what is the weather today",
        False,
    )
    assert cache.get_or_compute("what is the weather today", llm) == (
        "fresh answer for what is the weather today",
        True,
    )
    assert calls == ["what is the weather today"]
    stats = cache.stats()
    assert {"cached_entries", "hits", "misses", "total_requests", "hit_rate"} <= set(stats)
    assert stats["cached_entries"] == 2
    assert (stats["hits"], stats["misses"], stats["total_requests"]) == (3, 2, 5)
    assert stats["hit_rate"] == pytest.approx(3 / 5)


def test_lookup_result_fields(cache: SemanticCache) -> None:
    entry_id = cache.store("alpha beta gamma delta", None, "answer")
    result = cache.lookup("alpha beta gamma delta epsilon")
    assert result is not None
    assert result.entry_id == entry_id
    assert result.query == "alpha beta gamma delta"
    assert result.response == "answer"
    assert 0.8 <= result.similarity < 1.0
    assert result.created_at.tzinfo is not None
    assert not result.exact


def test_namespaces_never_cross(cache: SemanticCache) -> None:
    cache.store("shared question text", None, "answer A", namespace="tenant-a")
    assert cache.lookup("shared question text", namespace="tenant-b") is None
    hit = cache.lookup("shared question text", namespace="tenant-a")
    assert hit is not None and hit.response == "answer A"
    cache.store("shared question text", None, "answer B", namespace="tenant-b")
    a = cache.lookup("shared question text", namespace="tenant-a")
    b = cache.lookup("shared question text", namespace="tenant-b")
    assert a is not None and b is not None and (a.response, b.response) == ("answer A", "answer B")


def test_user_entries_private_shared_entries_visible(cache: SemanticCache) -> None:
    cache.store("my account balance please", None, "alice's balance", user_id="alice")
    cache.store("opening hours of the shop", None, "9 to 5")  # shared
    assert cache.lookup("my account balance please", user_id="bob") is None
    assert cache.lookup("my account balance please") is None  # anonymous sees shared only
    mine = cache.lookup("my account balance please", user_id="alice")
    assert mine is not None and mine.response == "alice's balance"
    for user in ("alice", "bob", ""):
        shared = cache.lookup("opening hours of the shop", user_id=user)
        assert shared is not None and shared.response == "9 to 5"


def test_user_entry_preferred_over_shared_on_exact_repeat(cache: SemanticCache) -> None:
    cache.store("what is my plan", None, "shared plan answer")
    cache.store("what is my plan", None, "alice's plan", user_id="alice")
    result = cache.lookup("what is my plan", user_id="alice")
    assert result is not None and result.response == "alice's plan"
    shared = cache.lookup("what is my plan", user_id="bob")
    assert shared is not None and shared.response == "shared plan answer"


def test_knn_filter_runs_inside_scan_not_after_top_k(
    cache: SemanticCache, fake_embedder: FakeEmbedder
) -> None:
    # 50 near-identical entries in another namespace would fill any post-filtered top-k.
    for i in range(50):
        cache.store(f"reset password now {i}", None, "noise", namespace="other")
    cache.store("reset password now please kindly", None, "target", namespace="mine")
    result = cache.lookup("reset password now", namespace="mine", threshold=0.5)
    assert result is not None and result.response == "target"


def test_context_key_isolation(db_path: Path) -> None:
    embedder = FakeEmbedder()
    with SemanticCache(db_path, embedder=embedder, threshold=0.8) as cache:
        cache.store("translate hello", None, "bonjour", context={"model": "m1", "system": "fr"})
        assert cache.lookup("translate hello", context={"model": "m2", "system": "fr"}) is None
        assert cache.lookup("translate hello", context={"model": "m1", "system": "de"}) is None
        assert cache.lookup("translate hello") is None
        hit = cache.lookup("translate hello", context={"system": "fr", "model": "m1"})
        assert hit is not None and hit.response == "bonjour"


class _ConfiguredLLM:
    def __init__(self, model: str, system: str) -> None:
        self.cache_context = {"model": model, "system_prompt": system}
        self.calls = 0

    def __call__(self, prompt: str) -> str:
        self.calls += 1
        return f"{self.cache_context['model']} says hi"


def test_llm_configuration_is_part_of_scope(db_path: Path) -> None:
    first = _ConfiguredLLM("gpt-4o", "be brief")
    with SemanticCache(db_path, embedder=FakeEmbedder(), llm=first) as cache:
        assert cache.get_or_compute("say hi please") == ("gpt-4o says hi", False)
        assert cache.get_or_compute("say hi please") == ("gpt-4o says hi", True)
        other_model = _ConfiguredLLM("gpt-4o-mini", "be brief")
        assert cache.get_or_compute("say hi please", other_model) == ("gpt-4o-mini says hi", False)
        other_prompt = _ConfiguredLLM("gpt-4o", "be verbose")
        assert cache.get_or_compute("say hi please", other_prompt)[1] is False
        assert first.calls == 1 and other_model.calls == 1 and other_prompt.calls == 1


def test_exact_match_path_does_not_run_embedder(
    cache: SemanticCache, fake_embedder: FakeEmbedder
) -> None:
    cache.store("How do I reset my password?", None, "Settings > Reset")
    calls = fake_embedder.calls
    result = cache.lookup("  how do I   RESET my password?  ")
    assert result is not None and result.exact and result.similarity == 1.0
    assert fake_embedder.calls == calls
    assert cache.get_or_compute("HOW DO I RESET MY PASSWORD?") == ("Settings > Reset", True)
    assert fake_embedder.calls == calls


def test_exact_path_folds_compatibility_forms_but_not_super_or_subscripts(
    cache: SemanticCache,
) -> None:
    cache.store("What is 2³?", None, "8")
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if c.isalpha() else c for c in "What is H")
    cache.store(f"{fullwidth}\u2082\uff2f?", None, "water")  # fullwidth letters, subscript 2

    def exact_answer(query: str) -> str | None:
        # threshold 1.0: only the exact path (or an identical vector) can serve
        hit = cache.lookup(query, threshold=1.0)
        return None if hit is None else hit.response

    assert exact_answer("What is 23?") is None
    assert exact_answer("what is 2^3?") == "8"
    assert exact_answer("what is h_2o?") == "water"
    assert exact_answer("What is H2O?") is None


def test_threshold_edges(db_path: Path, fake_embedder: FakeEmbedder) -> None:
    with SemanticCache(db_path, embedder=fake_embedder, threshold=0.0) as cache:
        assert cache.threshold == 0.0  # 0 is a value, not "unset"
        cache.store("alpha beta", None, "ab")
        # orthogonal texts have similarity ~0: threshold 0 accepts them
        result = cache.lookup("gamma delta")
        assert result is not None and result.response == "ab"
        # threshold 1: only an identical vector hits
        assert cache.lookup("alpha beta gamma", threshold=1.0) is None
        assert cache.find_similar(fake_embedder.vector("alpha beta"), threshold=1.0) is not None
        assert (
            cache.find_similar(fake_embedder.vector("alpha beta") * 3.0, threshold=1.0) is not None
        )


@pytest.mark.parametrize("bad", [-0.01, 1.01, float("nan"), float("inf"), "0.5", None, True])
def test_invalid_thresholds_rejected(
    db_path: Path, fake_embedder: FakeEmbedder, bad: object
) -> None:
    if bad is not None:
        with pytest.raises(InvalidThresholdError):
            SemanticCache(db_path, embedder=fake_embedder, threshold=bad)  # type: ignore[arg-type]
    with SemanticCache(db_path, embedder=fake_embedder) as cache:
        cache.store("alpha", None, "a")
        if bad is None:
            assert cache.lookup("alpha", threshold=None) is not None
        else:
            with pytest.raises(InvalidThresholdError):
                cache.lookup("alpha beta", threshold=bad)  # type: ignore[arg-type]


def test_default_threshold_comes_from_embedder(db_path: Path) -> None:
    with SemanticCache(db_path, embedder=FakeEmbedder(threshold=0.77)) as cache:
        assert cache.threshold == 0.77


@pytest.mark.parametrize(
    ("vector", "error"),
    [
        (np.ones(63), DimensionMismatchError),
        (np.full(64, np.nan), InvalidVectorError),
        (np.r_[np.ones(63), np.inf], InvalidVectorError),
        (np.zeros(64), InvalidVectorError),
        (np.ones((2, 64)), InvalidVectorError),
        ("not a vector", InvalidVectorError),
    ],
)
def test_bad_vectors_rejected_and_nothing_written(
    cache: SemanticCache, vector: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        cache.store("some query", vector, "resp")
    with pytest.raises(error):
        cache.find_similar(vector)
    assert cache.stats()["cached_entries"] == 0


@pytest.mark.parametrize("query", ["", "   \n\t", "x" * 100_001, "bad \udc80 surrogate", 42])
def test_bad_queries_rejected(cache: SemanticCache, query: object) -> None:
    with pytest.raises(InvalidQueryError):
        cache.store(query, None, "resp")  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError):
        cache.lookup(query)  # type: ignore[arg-type]
    assert cache.stats()["cached_entries"] == 0


def test_nul_bytes_and_sql_metacharacters_round_trip(cache: SemanticCache) -> None:
    query = "x'); DROP TABLE entries; -- \x00 nul"
    namespace = "ns'; DELETE FROM entries; --"
    cache.store(query, None, "resp\x00with nul", namespace=namespace, user_id="u\"'")
    result = cache.lookup(query, namespace=namespace, user_id="u\"'")
    assert result is not None and result.response == "resp\x00with nul" and result.query == query


def test_failed_llm_caches_nothing(cache: SemanticCache) -> None:
    def broken(prompt: str) -> str:
        raise RuntimeError("upstream 500")

    with pytest.raises(LLMError, match="upstream 500"):
        cache.get_or_compute("a brand new question", broken)
    for empty in ("", "   "):

        def blank(prompt: str, answer: str = empty) -> str:
            return answer

        with pytest.raises(LLMError):
            cache.get_or_compute("a brand new question", blank)
    assert cache.stats()["cached_entries"] == 0
    with pytest.raises(LLMError, match="no LLM configured"):
        cache.get_or_compute("a brand new question")


def test_store_same_query_again_replaces(cache: SemanticCache) -> None:
    first = cache.store("what time is it", None, "old")
    second = cache.store("What time is it ", None, "new")
    assert first == second
    entry = cache.get(first)
    assert entry.response == "new" and entry.version == 2
    assert cache.stats()["cached_entries"] == 1
    # another user or namespace is a separate entry
    assert cache.store("what time is it", None, "alice", user_id="alice") != first


def test_store_many_one_embed_call_per_batch(
    cache: SemanticCache, fake_embedder: FakeEmbedder
) -> None:
    queries = [f"question number {i} about topic {i * 7}" for i in range(10)]
    calls = fake_embedder.calls
    ids = cache.store_many(queries, [f"a{i}" for i in range(10)], batch_size=4)
    assert len(set(ids)) == 10
    assert fake_embedder.calls - calls == 3  # batches of 4, 4, 2
    calls = fake_embedder.calls
    again = cache.store_many(queries, [f"b{i}" for i in range(10)])
    assert again == ids and fake_embedder.calls == calls  # re-warm: replace, no re-embedding
    assert cache.get(ids[3]).response == "b3"


def test_store_many_with_embeddings_and_validation(
    cache: SemanticCache, fake_embedder: FakeEmbedder
) -> None:
    vectors = np.stack([fake_embedder.vector("one two"), fake_embedder.vector("three four")])
    calls = fake_embedder.calls
    ids = cache.store_many(["one two", "three four"], ["12", "34"], embeddings=vectors)
    assert fake_embedder.calls == calls and len(ids) == 2
    with pytest.raises(InvalidInputError):
        cache.store_many(["a", "b"], ["only one"])
    with pytest.raises(InvalidQueryError):
        cache.store_many(["fine", ""], ["1", "2"])
    assert cache.stats()["cached_entries"] == 2  # the failed batches wrote nothing


def test_update_delete_clear(cache: SemanticCache) -> None:
    entry_id = cache.store("alpha beta", None, "v1", metadata={"source": "faq"})
    updated = cache.update(entry_id, response="v2")
    assert (updated.response, updated.version, updated.metadata) == ("v2", 2, {"source": "faq"})
    assert updated.updated_at >= updated.created_at
    with pytest.raises(VersionConflictError):
        cache.update(entry_id, response="v3", expected_version=1)
    assert cache.update(entry_id, response="v3", expected_version=2).version == 3
    hit = cache.lookup("alpha beta")
    assert hit is not None and hit.response == "v3"
    assert cache.delete(entry_id) is True
    assert cache.delete(entry_id) is False
    assert cache.lookup("alpha beta") is None
    with pytest.raises(EntryNotFoundError):
        cache.get(entry_id)
    with pytest.raises(EntryNotFoundError):
        cache.update(entry_id, response="x")

    cache.store("one", None, "1", namespace="a")
    cache.store("two", None, "2", namespace="a", user_id="u")
    cache.store("three", None, "3", namespace="b")
    assert cache.clear("a", user_id="u") == 1
    assert cache.clear("a") == 1
    assert cache.stats()["cached_entries"] == 1
    assert cache.clear() == 1
    assert cache.stats()["cached_entries"] == 0
    assert cache._store.orphan_counts() == (0, 0)


def test_entries_and_vectors_stay_in_step(cache: SemanticCache) -> None:
    ids = cache.store_many([f"query {i} text" for i in range(30)], ["r"] * 30)
    for entry_id in ids[::3]:
        cache.delete(entry_id)
    cache.store("query 1 text", None, "replaced")
    cache.clear(namespace="default", user_id="nobody")
    assert cache._store.orphan_counts() == (0, 0)
    assert cache.stats()["cached_entries"] == 20


def test_stats_per_namespace_and_persisted(db_path: Path) -> None:
    with SemanticCache(db_path, embedder=FakeEmbedder()) as cache:
        cache.store("alpha", None, "a", namespace="n1")
        cache.lookup("alpha", namespace="n1")
        cache.lookup("beta", namespace="n1")
        cache.lookup("alpha", namespace="n2")
    with SemanticCache(db_path, embedder=FakeEmbedder()) as cache:
        n1 = cache.stats("n1")
        assert (n1["cached_entries"], n1["hits"], n1["misses"]) == (1, 1, 1)
        overall = cache.stats()
        assert (overall["hits"], overall["misses"], overall["total_requests"]) == (1, 2, 3)
        assert set(overall["namespaces"]) == {"n1", "n2"}
        assert overall["embedding_model"] == "fake-bow-64" and overall["embedding_dim"] == 64
        never_used = cache.stats("never-used")
        assert (
            never_used.items()
            >= {
                "cached_entries": 0,
                "hits": 0,
                "misses": 0,
                "total_requests": 0,
                "hit_rate": 0.0,
            }.items()
        )
        assert not any(never_used.values())  # latency figures are 0 too


def test_search_returns_neighbours_without_counting(cache: SemanticCache) -> None:
    cache.store_many(["red apple pie", "red apple", "blue sky"], ["1", "2", "3"])
    results = cache.search("red apple pie", k=2)
    assert [r.response for r in results] == ["1", "2"]
    assert results[0].similarity >= results[1].similarity
    assert cache.stats()["total_requests"] == 0


def test_closed_cache_refuses_use(db_path: Path) -> None:
    cache = SemanticCache(db_path, embedder=FakeEmbedder())
    cache.close()
    cache.close()  # idempotent
    with pytest.raises(Exception, match="closed"):
        cache.lookup("anything")


def test_store_many_survives_entry_deleted_while_embedding(db_path: Path) -> None:
    class DeletingEmbedder(FakeEmbedder):
        """Deletes entry ``victim`` the first time it embeds: a concurrent delete."""

        victim: int | None = None

        def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
            if self.victim is not None:
                cache.delete(self.victim)
                self.victim = None
            return super().embed(texts)

    embedder = DeletingEmbedder()
    with SemanticCache(db_path, embedder=embedder) as cache:
        kept = cache.store("already stored", None, "old")
        embedder.victim = kept
        ids = cache.store_many(["already stored", "brand new"], ["new", "fresh"])
        assert len(ids) == 2 and kept not in ids  # re-inserted under a new id
        assert [cache.get(i).response for i in ids] == ["new", "fresh"]
        assert [cache.get(i).version for i in ids] == [1, 1]  # nothing written twice
        assert cache._store.orphan_counts() == (0, 0)
