"""Changing the embedding model of a file: batched, resumable, switched in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from clock import FakeClock
from fakes import FakeEmbedder

from semcache_sqlite import (
    EmbedderError,
    EmbedderMismatchError,
    EmbedderResponseError,
    InvalidInputError,
    SemanticCache,
    vector_index,
)


def old_model() -> FakeEmbedder:
    return FakeEmbedder(dim=64, model_id="old-model")


def new_model() -> FakeEmbedder:
    return FakeEmbedder(dim=32, model_id="new-model")


QUERIES = [f"question {i} about topic {i % 7} and item {i * 3}" for i in range(50)]


class FailingEmbedder(FakeEmbedder):
    """Works for ``good_calls`` embed() calls, then raises (a crash half-way)."""

    def __init__(self, good_calls: int) -> None:
        super().__init__(dim=32, model_id="new-model")
        self.good_calls = good_calls

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if self.calls >= self.good_calls:
            raise RuntimeError("embedding service went away")
        return super().embed(texts)


class RolledEmbedder(FakeEmbedder):
    """Another model of new_model()'s dimension: its vectors, rotated."""

    def __init__(self) -> None:
        super().__init__(dim=32, model_id="rolled-model")

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.roll(super().embed(texts), 5, axis=1)


def filled(path: Path) -> SemanticCache:
    cache = SemanticCache(path, embedder=old_model(), threshold=0.8, guards=False)
    cache.store_many(QUERIES, [f"answer {i}" for i in range(len(QUERIES))])
    return cache


def test_reembed_switches_model_and_refuses_the_old_embedder(db_path: Path) -> None:
    with filled(db_path) as cache:
        seen: list[tuple[int, int]] = []
        new = new_model()
        assert cache.reembed(new, batch_size=16, progress=lambda d, t: seen.append((d, t))) == 50
        assert seen[0] == (0, 50) and seen[-1] == (50, 50)
        assert cache.embedder is new and cache.reembed_status() is None
        hit = cache.lookup(QUERIES[3] + " extra")
        assert hit is not None and hit.response == "answer 3"
        stats = cache.stats()
        assert (stats["embedding_model"], stats["embedding_dim"]) == ("new-model", 32)
        assert {cache.get(i).embedding_dim for i in range(1, 51)} == {32}
        assert cache._store.orphan_counts() == (0, 0)
    with pytest.raises(EmbedderMismatchError, match="new-model"):
        SemanticCache(db_path, embedder=old_model())
    with SemanticCache(db_path, embedder=new_model(), threshold=0.8, guards=False) as cache:
        hit = cache.lookup(QUERIES[7] + " extra")
        assert hit is not None and hit.response == "answer 7"


def test_interrupted_reembed_resumes_where_it_stopped(db_path: Path) -> None:
    with filled(db_path) as cache:
        with pytest.raises(EmbedderError, match="went away") as failed:
            cache.reembed(FailingEmbedder(good_calls=2), batch_size=10)
        assert isinstance(failed.value.__cause__, RuntimeError)  # the embedder's own error
        status = cache.reembed_status()
        assert status is not None and (status.model_id, status.done, status.total) == (
            "new-model",
            20,
            50,
        )
        # half-way, the file still belongs to the old model and works with it
        hit = cache.lookup(QUERIES[30] + " extra")
        assert hit is not None and hit.response == "answer 30"
        with pytest.raises(EmbedderMismatchError, match="not finished"):
            SemanticCache(db_path, embedder=new_model())
        # writes made meanwhile (new entry, changed query) are converted too
        added = cache.store("a late question about kites", None, "late answer")
        cache.update(1, query="a rewritten first question about owls")
        resumed = new_model()
        assert cache.reembed(resumed, batch_size=10) == 51
        # only what was not staged yet was embedded again: 30 left + 2 written meanwhile
        assert len(resumed.texts) == 32
        hit = cache.lookup("a late question about kites please")
        assert hit is not None and hit.entry_id == added
        hit = cache.lookup("rewritten first question about owls")
        assert hit is not None and hit.entry_id == 1
        assert cache._store.orphan_counts() == (0, 0)


def test_a_reembed_replaced_by_another_stages_nothing_more(db_path: Path) -> None:
    """Two re-embeds at once (two processes) towards different models: the second one
    drops and recreates the staging table, and the first one's later batches went into
    it; the second took them for its own model's vectors, skipped those entries and
    switched the file to its model with the first model's vectors in it."""
    with (
        filled(db_path) as first,
        SemanticCache(db_path, embedder=old_model(), threshold=0.8, guards=False) as second,
    ):

        def second_begins(done: int, total: int) -> None:
            if done == 10:  # after the first batch
                second._store.reembed_begin("rolled-model", 32)

        with pytest.raises(EmbedderMismatchError, match="cancelled or replaced while"):
            first.reembed(new_model(), batch_size=10, progress=second_begins)
        rolled = RolledEmbedder()
        assert second.reembed(rolled, batch_size=10) == 50
        with second._db.reading() as conn:
            rows = conn.execute(
                "SELECT e.query, b.embedding FROM entries e JOIN entry_embeddings b USING (id)"
            ).fetchall()
        assert len(rows) == 50
        for query, blob in rows:
            assert np.allclose(np.frombuffer(blob, dtype="<f4"), rolled.embed([query])[0])
        hit = second.lookup(QUERIES[12] + " extra")
        assert hit is not None and hit.response == "answer 12"


def test_batch_size_is_checked_and_may_be_a_numpy_int(db_path: Path) -> None:
    with filled(db_path) as cache:
        for bad in (0, -1, 2.5, True, "10"):
            with pytest.raises(InvalidInputError, match="batch_size"):
                cache.reembed(new_model(), batch_size=bad)  # type: ignore[arg-type]
        assert cache.reembed_status() is None  # refused before anything was staged
        assert cache.reembed(new_model(), batch_size=np.int64(20)) == 50


class NaNEmbedder(FakeEmbedder):
    """Returns NaN vectors from its second call on: the embedder's fault, not the input's."""

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        matrix = super().embed(texts)
        if self.calls > 1:
            matrix[:] = np.nan
        return matrix


def test_unusable_vectors_from_the_new_model_are_its_error_and_change_nothing(
    db_path: Path,
) -> None:
    with filled(db_path) as cache:
        with pytest.raises(EmbedderResponseError, match="unusable vector"):
            cache.reembed(NaNEmbedder(dim=32, model_id="new-model"), batch_size=10)
        status = cache.reembed_status()
        assert status is not None and status.done == 10  # the good batch stays staged
        assert cache.stats()["embedding_model"] == old_model().model_id
        hit = cache.lookup(QUERIES[30] + " extra")
        assert hit is not None and hit.response == "answer 30"
        assert cache.reembed(new_model(), batch_size=10) == 50


def test_reembed_towards_another_model_starts_over(db_path: Path) -> None:
    with filled(db_path) as cache:
        with pytest.raises(EmbedderError):
            cache.reembed(FailingEmbedder(good_calls=1), batch_size=10)
        other = FakeEmbedder(dim=16, model_id="third-model")
        assert cache.reembed(other, batch_size=25) == 50
        assert len(other.texts) == 50 and cache.stats()["embedding_dim"] == 16
        assert cache.cancel_reembed() is False


def test_failed_switch_rolls_back_to_the_old_vectors(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with filled(db_path) as cache:
        # fails after the old vec0 table was dropped, inside the switch transaction
        monkeypatch.setattr(vector_index, "vector_table_ddl", lambda dim: "CREATE nonsense")
        with pytest.raises(Exception, match="syntax"):
            cache.reembed(new_model(), batch_size=100)
        assert cache.embedder.model_id == "old-model"
        hit = cache.lookup(QUERIES[5] + " extra")
        assert hit is not None and hit.response == "answer 5"
        assert cache.stats()["embedding_model"] == "old-model"
        assert cache._store.orphan_counts() == (0, 0)
        monkeypatch.undo()
        assert cache.reembed(new_model()) == 50


def test_other_cache_with_old_embedder_is_refused_after_switch(db_path: Path) -> None:
    clock = FakeClock()
    with (
        filled(db_path) as converter,
        SemanticCache(
            db_path,
            embedder=old_model(),
            clock=clock,
        ) as stale,
    ):
        assert stale.lookup(QUERIES[0] + " extra") is not None
        converter.reembed(new_model())
        with pytest.raises(EmbedderMismatchError, match="re-embedded"):
            stale.lookup(QUERIES[0] + " extra")  # its vectors would be meaningless now
        with pytest.raises(EmbedderMismatchError):
            stale.store("a stale write", None, "r")
        assert converter._store.orphan_counts() == (0, 0)


@pytest.mark.parametrize("dim", [32, 64])
def test_stale_forget_similar_is_refused_and_deletes_nothing(db_path: Path, dim: int) -> None:
    """A handle still on the old model compared its vectors with the new model's: it
    deleted nothing (another dimension) or the wrong entries (the same one)."""
    with filled(db_path) as converter, SemanticCache(db_path, embedder=old_model()) as stale:
        converter.reembed(FakeEmbedder(dim=dim, model_id="new-model"))
        with pytest.raises(EmbedderMismatchError, match="re-embedded"):
            stale.forget_similar(QUERIES[0], min_similarity=0.0)  # would match every entry
        with pytest.raises(EmbedderMismatchError, match="re-embedded"):
            stale.search_vector(stale.embedder.embed([QUERIES[0]])[0])
        with pytest.raises(EmbedderMismatchError, match="re-embedded"):
            stale.update(1, query="a stale new query")
        assert converter.stats()["cached_entries"] == len(QUERIES)
        assert converter.get(1).query == QUERIES[0]
        assert converter.forget_similar(QUERIES[0], min_similarity=0.999) == 1
