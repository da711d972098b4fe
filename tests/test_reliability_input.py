"""The bad-input catalogue: each bad input gets a typed error (or a defined behaviour)
and leaves the file as it was.

Read-only and disk-full cases run twice where possible: once with what works
anywhere (SQLite's ``mode=ro``, a patched ``os.access``, ``PRAGMA max_page_count``)
and once for real with a read-only bind mount or a small tmpfs, which needs root
and a sandbox that allows ``mount`` (skipped otherwise). Root ignores chmod, so
chmod is not used to make anything read-only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fakes import FakeEmbedder

from semcache_sqlite import (
    DimensionMismatchError,
    EmbedderError,
    EmbedderMismatchError,
    EmbedderResponseError,
    EmbedderTimeoutError,
    FallbackPolicy,
    InvalidInputError,
    InvalidQueryError,
    InvalidThresholdError,
    InvalidVectorError,
    NotACacheFileError,
    ReadOnlyError,
    SchemaTooNewError,
    SemanticCache,
    SemCacheError,
    StorageError,
    StorageFullError,
)
from semcache_sqlite.db import Database
from semcache_sqlite.vector_index import MAX_K

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from reliability import check_file

Snapshot = tuple[Any, ...]


def snapshot(path: Path) -> Snapshot:
    """The file's content that a refused call must not change (counters excluded)."""
    db = Database(path)
    try:
        with db.reading() as conn:
            return (
                conn.execute(
                    "SELECT id, namespace, user_id, context_key, query, response, version, "
                    "metadata FROM entries ORDER BY id"
                ).fetchall(),
                conn.execute(
                    "SELECT rowid FROM entry_vectors UNION ALL "
                    "SELECT rowid FROM entry_vectors_small ORDER BY rowid"
                ).fetchall(),
                conn.execute("SELECT key, value FROM cache_info ORDER BY key").fetchall(),
                conn.execute("PRAGMA user_version").fetchone()[0],
            )
    finally:
        db.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def filled(cache: SemanticCache) -> SemanticCache:
    cache.store_many(["alpha beta gamma", "delta epsilon", "zeta eta theta"], ["1", "2", "3"])
    cache.store("private question", None, "p", user_id="alice", namespace="other")
    return cache


def refused(cache: SemanticCache, error: type[Exception], call: Callable[[], object]) -> None:
    before = snapshot(Path(cache.path))
    with pytest.raises(error):
        call()
    assert snapshot(Path(cache.path)) == before


# -- queries ---------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", " ", "\n\t  \r", "\u3000\u2003", None, b"bytes"])
def test_empty_whitespace_and_non_text_queries(filled: SemanticCache, query: Any) -> None:
    refused(filled, InvalidQueryError, lambda: filled.store(query, None, "r"))
    refused(filled, InvalidQueryError, lambda: filled.store_many(["fine", query], ["1", "2"]))
    refused(filled, InvalidQueryError, lambda: filled.lookup(query))
    refused(filled, InvalidQueryError, lambda: filled.search(query))
    refused(filled, InvalidQueryError, lambda: filled.get_or_compute(query, lambda q: "a"))


@pytest.mark.parametrize("response", ["", " ", "\n\t  \r", "\u3000\u2003"])
def test_empty_and_whitespace_responses_are_refused(filled: SemanticCache, response: str) -> None:
    """As the LLM side: an empty answer is never cached, so it is never stored and served."""
    entry_id = filled.store("kept entry", None, "kept")
    refused(filled, InvalidInputError, lambda: filled.store("q", None, response))
    refused(filled, InvalidInputError, lambda: filled.store_many(["a", "b"], ["1", response]))
    refused(filled, InvalidInputError, lambda: filled.update(entry_id, response=response))
    with pytest.raises(InvalidInputError, match="response is empty or whitespace only"):
        asyncio.run(filled.astore("q", None, response))
    assert filled.get_or_compute("q", lambda q: "computed") == ("computed", False)


def test_a_1_mb_query_is_refused_unless_the_limit_is_raised(
    filled: SemanticCache, db_path: Path
) -> None:
    huge = "x" * 1_000_000
    with pytest.raises(InvalidQueryError, match=r"1,000,000 characters.*100,000.*max_query_chars"):
        filled.store(huge, None, "r")
    refused(filled, InvalidQueryError, lambda: filled.lookup(huge))
    refused(filled, InvalidQueryError, lambda: filled.get_or_compute(huge, lambda q: "a"))
    filled.store("y" * 100_000, None, "at the limit")  # exactly max_query_chars is fine
    refused(filled, InvalidQueryError, lambda: filled.store("y" * 100_001, None, "r"))
    with SemanticCache(db_path, embedder=FakeEmbedder(), max_query_chars=2_000_000) as roomy:
        entry_id = roomy.store(huge, None, "a megabyte of prompt")
        hit = roomy.lookup(huge)
        assert hit is not None and hit.entry_id == entry_id and hit.exact
        assert roomy.get(entry_id).query == huge


BAD_UNICODE = "bad \udc80 surrogate"


def test_lone_surrogates_are_refused_everywhere(filled: SemanticCache) -> None:
    entry_id = filled.store("kept entry", None, "kept")
    refused(filled, InvalidQueryError, lambda: filled.store(BAD_UNICODE, None, "r"))
    refused(filled, InvalidQueryError, lambda: filled.lookup(BAD_UNICODE))
    refused(filled, InvalidInputError, lambda: filled.store("q", None, BAD_UNICODE))
    refused(filled, InvalidInputError, lambda: filled.update(entry_id, response=BAD_UNICODE))
    scopes: list[dict[str, Any]] = [{"namespace": BAD_UNICODE}, {"user_id": BAD_UNICODE}]
    for scope in scopes:
        refused(filled, InvalidInputError, partial(filled.store, "q", None, "r", **scope))
        refused(filled, InvalidInputError, partial(filled.lookup, "alpha", **scope))
        refused(filled, InvalidInputError, partial(filled.clear, **scope))
    with pytest.raises(InvalidInputError):
        SemanticCache(filled.path, embedder=FakeEmbedder(), namespace=BAD_UNICODE)


def test_nul_bytes_kept_in_text_and_refused_in_scope_names(filled: SemanticCache) -> None:
    query, response = "before\x00after the nul", "answer\x00with a nul"
    entry_id = filled.store(query, None, response)
    hit = filled.lookup(query)
    assert hit is not None and hit.entry_id == entry_id
    assert (hit.query, hit.response) == (query, response)
    # sqlite-vec compares TEXT metadata only up to the first NUL, so 'a\0b' and 'a\0c'
    # would be one tenant in the KNN filter (see test_reliability_sqlite_vec.py): refused.
    scopes: list[dict[str, Any]] = [{"namespace": "tenant\x00a"}, {"user_id": "user\x00a"}]
    for scope in scopes:
        refused(filled, InvalidInputError, partial(filled.store, "q", None, "r", **scope))
        with pytest.raises(InvalidInputError, match="NUL"):
            filled.lookup("alpha beta gamma", **scope)


SQL_NAMES = ["'; DROP TABLE entries; --", "x' OR '1'='1", "%", "_", "\\", '"quoted"', "a;b"]


def test_sql_metacharacters_in_scope_names_are_plain_text(cache: SemanticCache) -> None:
    for name in SQL_NAMES:
        cache.store("same question for all", None, f"answer of {name}", namespace=name)
        cache.store("same question for all", None, f"{name} own", namespace=name, user_id=name)
    for name in SQL_NAMES:
        shared = cache.lookup("same question for all words", namespace=name, threshold=0.5)
        own = cache.lookup("same question for all", namespace=name, user_id=name)
        assert shared is not None and shared.response == f"answer of {name}"
        assert own is not None and own.response == f"{name} own"
    assert cache.clear("%") == 2  # a LIKE wildcard would have matched everything
    assert cache.stats()["cached_entries"] == 2 * (len(SQL_NAMES) - 1)
    assert check_file(cache.path).ok


def test_scope_name_length_limit(cache: SemanticCache) -> None:
    longest = "n" * 1024
    cache.store("question", None, "long names are fine", namespace=longest, user_id="u" * 1024)
    hit = cache.lookup("question", namespace=longest, user_id="u" * 1024)
    assert hit is not None and hit.namespace == longest
    scopes: list[dict[str, Any]] = [{"namespace": "n" * 1025}, {"user_id": "u" * 1025}]
    for scope in scopes:
        with pytest.raises(InvalidInputError, match="1025 characters; at most 1024"):
            cache.store("question", None, "r", **scope)
        refused(cache, InvalidInputError, partial(cache.lookup, "question", **scope))
    with pytest.raises(InvalidInputError, match="at most 1024"):
        SemanticCache(cache.path, embedder=FakeEmbedder(), namespace="n" * 5000)
    with pytest.raises(InvalidInputError, match="must not be empty"):
        cache.store("question", None, "r", namespace="")


# -- vectors and thresholds -------------------------------------------------------------


class BrokenEmbedder(FakeEmbedder):
    """Returns the given vector for every text."""

    def __init__(self, vector: Any) -> None:
        super().__init__()
        self.bad = vector

    def embed(self, texts: Any) -> Any:
        return np.stack([np.asarray(self.bad, dtype=np.float32)] * len(texts))


@pytest.mark.parametrize(
    ("vector", "error"),
    [
        (np.ones(63), DimensionMismatchError),
        (np.ones(65), DimensionMismatchError),
        (np.full(64, np.nan), InvalidVectorError),
        (np.r_[np.ones(63), np.nan], InvalidVectorError),
        (np.r_[np.ones(63), np.inf], InvalidVectorError),
        (np.r_[np.ones(63), -np.inf], InvalidVectorError),
        (np.zeros(64), InvalidVectorError),
    ],
)
def test_bad_vectors_from_caller_or_embedder(
    filled: SemanticCache, db_path: Path, vector: Any, error: type[Exception]
) -> None:
    refused(filled, error, lambda: filled.store("new query", vector, "r"))
    refused(
        filled, error, lambda: filled.store_many(["a1", "a2"], ["1", "2"], embeddings=[vector] * 2)
    )
    refused(filled, error, lambda: filled.find_similar(vector))
    filled.close()
    # The same vector coming out of the embedder is the embedder's fault: a typed
    # EmbedderResponseError; get_or_compute fails open (answers, stores nothing).
    with SemanticCache(db_path, embedder=BrokenEmbedder(vector)) as broken:
        refused(broken, EmbedderResponseError, lambda: broken.store("another new", None, "r"))
        refused(broken, EmbedderResponseError, lambda: broken.lookup("not stored yet"))
        refused(broken, EmbedderResponseError, lambda: broken.search("not stored yet"))
        refused(broken, EmbedderResponseError, lambda: broken.update(1, query="a new text"))
        refused(
            broken,
            EmbedderResponseError,
            lambda: broken.forget_similar("alpha beta gamma", min_similarity=0.5),
        )
        before = broken.stats()["cached_entries"]
        assert broken.get_or_compute("not stored yet", lambda q: "a") == ("a", False)
        assert broken.stats()["cached_entries"] == before
    strict = FallbackPolicy.strict()
    with SemanticCache(db_path, embedder=BrokenEmbedder(vector), policy=strict) as broken:
        refused(broken, EmbedderResponseError, lambda: broken.get_or_compute("new", lambda q: "a"))


class FailingEmbedder(FakeEmbedder):
    """Fails as told: raises ``failure`` if it is an exception, else returns it."""

    def __init__(self, failure: Any) -> None:
        super().__init__()
        self.failure = failure

    def embed(self, texts: Any) -> Any:
        if isinstance(self.failure, BaseException):
            raise self.failure
        return self.failure


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (RuntimeError("CUDA out of memory"), EmbedderError),
        (KeyError("token"), EmbedderError),
        (None, EmbedderError),
        (np.ones((2, 64), dtype=np.float32), EmbedderResponseError),  # 2 vectors for 1 text
        (np.full((1, 64), np.nan, dtype=np.float32), EmbedderResponseError),
        (TimeoutError("read timed out"), EmbedderTimeoutError),  # e.g. socket.timeout
    ],
)
def test_failing_embedder_is_typed_in_every_method(
    filled: SemanticCache, db_path: Path, failure: Any, error: type[Exception]
) -> None:
    """Search and the writes (and their async twins) type an embedder's failure as
    lookups do: an EmbedderError, never the raw exception nor the caller's fault."""
    filled.close()
    with SemanticCache(db_path, embedder=FailingEmbedder(failure)) as broken:
        calls: dict[str, Callable[[], object]] = {
            "lookup": lambda: broken.lookup("not stored yet"),
            "store": lambda: broken.store("not stored yet", None, "r"),
            "store_many": lambda: broken.store_many(["not stored yet"], ["r"]),
            "search": lambda: broken.search("not stored yet"),
            "update": lambda: broken.update(1, query="not stored yet"),
            "forget_similar": lambda: broken.forget_similar("alpha", min_similarity=0.5),
            "alookup": lambda: asyncio.run(broken.alookup("not stored yet")),
            "astore": lambda: asyncio.run(broken.astore("not stored yet", None, "r")),
            "astore_many": lambda: asyncio.run(broken.astore_many(["not stored yet"], ["r"])),
            "asearch": lambda: asyncio.run(broken.asearch("not stored yet")),
            "aupdate": lambda: asyncio.run(broken.aupdate(1, query="not stored yet")),
            "aforget_similar": lambda: asyncio.run(
                broken.aforget_similar("alpha", min_similarity=0.5)
            ),
        }
        for name, call in calls.items():
            before = snapshot(db_path)
            with pytest.raises(error) as caught:
                call()
            assert not isinstance(caught.value, InvalidInputError), name
            if isinstance(failure, BaseException):
                # (asyncio re-creates a TimeoutError coming out of a worker thread)
                assert repr(caught.value.__cause__) == repr(failure), name
                assert str(failure.args[0]) in str(caught.value), name
            assert snapshot(db_path) == before, name


def test_extreme_but_valid_vectors_are_normalised(cache: SemanticCache) -> None:
    """Their norm overflowed to inf / underflowed to 0 and they were refused as all-zero."""
    direction = np.arange(1, 65, dtype=np.float64)
    cache.store("alpha", direction, "a")
    for scale in (1e300, 1e-300, 1e-320):
        found = cache.find_similar(direction * scale, threshold=1.0)
        assert found is not None and found[0] == "a", scale


@pytest.mark.parametrize("bad", [-0.01, 1.0001, float("nan"), float("inf"), -float("inf"), "0.9"])
def test_thresholds_outside_zero_one(filled: SemanticCache, db_path: Path, bad: Any) -> None:
    with pytest.raises(InvalidThresholdError):
        SemanticCache(db_path, embedder=FakeEmbedder(), threshold=bad)
    with pytest.raises(InvalidThresholdError):
        filled.threshold = bad
    refused(filled, InvalidThresholdError, lambda: filled.lookup("alpha beta", threshold=bad))
    vector = FakeEmbedder().vector("alpha beta")
    refused(filled, InvalidThresholdError, lambda: filled.find_similar(vector, threshold=bad))
    refused(
        filled,
        InvalidThresholdError,
        lambda: filled.get_or_compute("brand new", lambda q: "a", threshold=bad),
    )
    assert filled.threshold == 0.8


def test_complex_vectors_are_refused_not_cut_to_their_real_part(filled: SemanticCache) -> None:
    vector = FakeEmbedder().vector("alpha beta gamma").astype(np.complex128) * (1 + 1j)
    for given in (vector, list(vector)):
        refused(filled, InvalidVectorError, partial(filled.store, "new query", given, "r"))
        refused(filled, InvalidVectorError, partial(filled.find_similar, given))
        refused(filled, InvalidVectorError, partial(filled.search_vector, given))
    refused(
        filled,
        InvalidVectorError,
        lambda: filled.store_many(["a1", "a2"], ["1", "2"], embeddings=np.stack([vector] * 2)),
    )


@pytest.mark.parametrize("k", [0, -1, MAX_K + 1, 2.5, "3", None, True])
def test_search_k_outside_one_to_max_k(filled: SemanticCache, k: Any) -> None:
    vector = FakeEmbedder().vector("alpha beta gamma")
    with pytest.raises(InvalidInputError, match="k must be an int"):
        filled.search("alpha beta gamma", k=k)
    with pytest.raises(InvalidInputError, match="k must be an int"):
        filled.search_vector(vector, k=k)
    assert len(filled.search("alpha beta gamma", k=MAX_K)) == 3


# -- other arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"busy_timeout": float("nan")},
        {"busy_timeout": float("inf")},
        {"busy_timeout": -1},
        {"busy_timeout": "x"},
        {"max_query_chars": None},
        {"max_query_chars": 0},
        {"max_query_chars": "x"},
        {"embedder": "local"},
        {"embedder": object()},
        {"policy": "strict"},
        {"path": None},
        {"path": 5},
    ],
)
def test_bad_constructor_arguments(db_path: Path, options: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"path": db_path, "embedder": FakeEmbedder(), **options}
    with pytest.raises(InvalidInputError, match=next(iter(options))):
        SemanticCache(**arguments)
    assert not db_path.exists()


def test_numpy_numbers_work_where_python_numbers_do(db_path: Path) -> None:
    with SemanticCache(
        db_path,
        embedder=FakeEmbedder(),
        busy_timeout=np.float32(5),
        ttl=np.int64(60),
        max_entries=np.int64(5),
        max_query_chars=np.int64(1000),
    ) as cache:
        entry_id = np.int64(cache.store("numpy question", None, "numpy answer"))
        assert cache.get(entry_id).response == "numpy answer"
        assert cache.feedback(entry_id, correct=True) >= 1
        assert cache.update(entry_id, response="changed", ttl=np.float64(30)).version == 2
        assert cache.namespace_policy().max_entries is None  # namespace limit: not set
        assert cache.delete(entry_id)


@pytest.mark.parametrize(
    "options", [{"embed_timeout": "1"}, {"coalesce_timeout": float("inf")}, {"embed_timeout": 0}]
)
def test_bad_fallback_policy_arguments(options: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError, match=next(iter(options))):
        FallbackPolicy(**options)


@pytest.mark.parametrize("entry_id", [2**63, -(2**63) - 1, "1", None, 1.5, True])
def test_entry_ids_that_are_not_sqlite_integers(filled: SemanticCache, entry_id: Any) -> None:
    refused(filled, InvalidInputError, lambda: filled.get(entry_id))
    refused(filled, InvalidInputError, lambda: filled.delete(entry_id))
    refused(filled, InvalidInputError, lambda: filled.update(entry_id, response="r"))
    refused(filled, InvalidInputError, lambda: filled.feedback(entry_id, True))
    if entry_id is not None:  # None: no version check
        update = partial(filled.update, 1, response="r", expected_version=entry_id)
        refused(filled, InvalidInputError, update)
    assert filled.get(np.int64(1)).response == "1"  # numpy integers are ints


@pytest.mark.parametrize(
    "metadata",
    [{"score": float("nan")}, {"x": float("inf")}, {"when": object()}, [("a", 1), 3], "text"],
)
def test_metadata_json_cannot_hold(filled: SemanticCache, metadata: Any) -> None:
    refused(filled, InvalidInputError, lambda: filled.store("new q", None, "r", metadata=metadata))
    refused(
        filled,
        InvalidInputError,
        lambda: filled.store_many(["n1", "n2"], ["1", "2"], metadata=metadata),
    )
    refused(filled, InvalidInputError, lambda: filled.update(1, metadata=metadata))
    with pytest.raises(InvalidInputError, match="metadata"):
        filled.store("new q", None, "r", metadata=metadata)


def test_store_many_refuses_a_str_where_texts_are_expected(filled: SemanticCache) -> None:
    refused(filled, InvalidInputError, lambda: filled.store_many("abc", "xyz"))
    refused(filled, InvalidInputError, lambda: filled.store_many(["a", "b"], "xy"))
    bad_size: Any = "x"
    refused(filled, InvalidInputError, lambda: filled.store_many(["a"], ["1"], batch_size=bad_size))
    refused(filled, InvalidInputError, lambda: filled.store_many(["a"], ["1"], batch_size=0))
    vectors = (FakeEmbedder().vector(q) for q in ("a", "b"))
    refused(
        filled,
        InvalidVectorError,
        lambda: filled.store_many(["a", "b"], ["1", "2"], embeddings=vectors),
    )
    assert len(filled.store_many(("t1", "t2"), ("1", "2"))) == 2  # any other sequence


class NaNFor(FakeEmbedder):
    """Returns NaN for queries that contain "poison"."""

    def embed(self, texts: Any) -> Any:
        matrix = np.array(super().embed(texts))
        matrix[["poison" in t for t in texts]] = np.nan
        return matrix


def test_store_many_embedder_failure_in_a_later_batch_says_what_was_stored(
    db_path: Path,
) -> None:
    with SemanticCache(db_path, embedder=NaNFor()) as cache:
        queries = ["one alpha", "two beta", "three poison", "four delta"]
        with pytest.raises(EmbedderResponseError, match=r"\(2 of the 4 entries.*stayed stored"):
            cache.store_many(queries, ["r"] * 4, batch_size=2)
        assert sorted(e.query for e in cache._store.iter_entries()) == ["one alpha", "two beta"]
        with pytest.raises(EmbedderResponseError) as first_batch:
            cache.store_many(["five poison", "six"], ["r", "r"], batch_size=2)
        assert "stayed stored" not in str(first_batch.value)  # nothing was stored


# -- files that are not (good) cache files ---------------------------------------------


def test_files_that_are_not_sqlite(tmp_path: Path) -> None:
    for name, content in [
        ("text.db", b"hello, this is not a database\n" * 200),
        ("random.db", np.random.default_rng(1).bytes(64 * 1024)),
        ("header-only.db", b"SQLite format 3\x00" + b"\xff" * 200),
    ]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(NotACacheFileError):
            SemanticCache(path, embedder=FakeEmbedder())
        with pytest.raises(NotACacheFileError):
            SemanticCache(path, embedder=FakeEmbedder(), read_only=True)
        assert path.read_bytes() == content, name
    with pytest.raises(NotACacheFileError, match="is a directory"):  # CLI: exit 5
        SemanticCache(tmp_path, embedder=FakeEmbedder())
    with pytest.raises(StorageError, match="does the directory exist"):
        SemanticCache(tmp_path / "missing" / "cache.db", embedder=FakeEmbedder())
    empty = tmp_path / "empty.db"  # defined: an empty file is a new SQLite database
    empty.touch()
    with SemanticCache(empty, embedder=FakeEmbedder()) as cache:
        cache.store("alpha", None, "a")
    assert check_file(empty).ok


#: ``damaged_copy`` offset meaning "the middle of the page".
MIDDLE = -1


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[int]]]:
    """A closed cache file with 1,500 entries, and the pages of each table and index."""
    path = tmp_path_factory.mktemp("corrupt") / "base.db"
    with SemanticCache(path, embedder=FakeEmbedder()) as cache:
        cache.store_many(
            [f"query {i} words here {i * 3}" for i in range(1500)],
            [f"response {i} " * 10 for i in range(1500)],
            metadata={"source": "test"},
        )
    db = Database(path)
    with db.reading() as conn:
        pages: dict[str, list[int]] = {}
        for name, page in conn.execute("SELECT name, pageno FROM dbstat ORDER BY pageno"):
            pages.setdefault(str(name), []).append(int(page))
    db.close()
    return path, pages


def exercise(path: Path) -> list[str]:
    """Open and use a damaged file; return the errors. Any non-library error fails."""
    errors: list[str] = []
    try:
        with SemanticCache(path, embedder=FakeEmbedder()) as cache:
            for call in (
                lambda: cache.lookup("query 5 words here 15"),
                lambda: cache.lookup("query 700 words here 2100 and more"),
                lambda: cache.search("query 1 words", k=20),
                lambda: [cache.get(i) for i in range(1, 1501)],
                lambda: cache.store("a new entry", None, "new"),
                cache.stats,
            ):
                try:
                    call()
                except (NotACacheFileError, KeyError) as exc:  # KeyError: a row lost to damage
                    errors.append(type(exc).__name__)
    except NotACacheFileError as exc:
        errors.append(f"open: {exc}")
    return errors


def page_size(path: Path) -> int:
    """From the SQLite header (bytes 16-17, big-endian; 1 means 65536)."""
    value = int.from_bytes(path.read_bytes()[16:18], "big")
    return 65536 if value == 1 else value


def damaged_copy(base: Path, tmp_path: Path, page: int, offset: int, size: int = 64) -> Path:
    """A copy with ``size`` bytes flipped at ``offset`` of ``page`` (MIDDLE: its middle)."""
    path = tmp_path / f"damaged-{page}-{offset}.db"
    shutil.copyfile(base, path)
    page_bytes = page_size(base)
    offset = page_bytes // 2 if offset == MIDDLE else offset
    with path.open("r+b") as f:
        f.seek((page - 1) * page_bytes + offset)
        data = f.read(size)
        f.seek((page - 1) * page_bytes + offset)
        f.write(bytes(b ^ 0xFF for b in data))
    return path


@pytest.mark.parametrize("mmap_size", [0, 1 << 28])  # read() or a memory map: same error
def test_truncated_file(
    big_file: tuple[Path, dict[str, list[int]]], tmp_path: Path, mmap_size: int
) -> None:
    path = tmp_path / "half.db"
    shutil.copyfile(big_file[0], path)
    os.truncate(path, path.stat().st_size // 2)
    before = digest(path)
    with pytest.raises(NotACacheFileError, match="malformed"):
        SemanticCache(path, embedder=FakeEmbedder(), mmap_size=mmap_size)
    assert digest(path) == before
    assert not check_file(path).ok


@pytest.mark.parametrize(
    ("table", "offset", "detected"),
    [
        ("entries", MIDDLE, True),  # record bytes: text that is not UTF-8
        ("entries", 8, True),  # cell pointers: rows lost, integrity_check says so
        ("entries_by_exact_query", MIDDLE, True),
        ("sqlite_schema", 8, True),  # cell pointers of a schema page
        ("entry_embeddings", MIDDLE, False),  # float bytes: SQLite cannot tell
        ("entry_vectors_vector_chunks00", MIDDLE, False),  # index bits: SQLite cannot tell
    ],
)
def test_flipped_bytes_in_the_middle_of_a_page(
    big_file: tuple[Path, dict[str, list[int]]],
    tmp_path: Path,
    table: str,
    offset: int,
    detected: bool,
) -> None:
    """Defined behaviour: damage is reported as NotACacheFileError when it is read (or a
    damaged row is missing), never as another exception or a crash; PRAGMA
    integrity_check (benchmarks/reliability.check_file) finds structural damage. Damaged
    vector bytes are not detectable; vectors that became NaN are skipped by lookups."""
    base, pages = big_file
    page = pages[table][len(pages[table]) // 2]
    path = damaged_copy(base, tmp_path, page, offset)
    errors = exercise(path)
    found = bool(errors) or not check_file(path).ok
    assert found == detected, errors


def test_middle_of_the_file(big_file: tuple[Path, dict[str, list[int]]], tmp_path: Path) -> None:
    base = big_file[0]
    middle_page = base.stat().st_size // page_size(base) // 2
    for offset in (0, 8, 1000, 3000):
        exercise(damaged_copy(base, tmp_path, middle_page, offset))  # raises nothing else


def test_damaged_metadata_json(cache: SemanticCache, tmp_path: Path) -> None:
    entry_id = cache.store("alpha", None, "a", metadata={"source": "faq"})
    cache.close()
    raw = bytearray(Path(cache.path).read_bytes())
    where = raw.find(b'{"source": "faq"}')
    assert where > 0
    raw[where] ^= 0x01  # '{' -> 'z': still UTF-8, no longer JSON
    path = tmp_path / "bad-json.db"
    path.write_bytes(bytes(raw))
    with (
        SemanticCache(path, embedder=FakeEmbedder()) as damaged,
        pytest.raises(NotACacheFileError, match="damaged metadata"),
    ):
        damaged.get(entry_id)


def test_file_of_another_embedding_model_or_newer_schema(db_path: Path) -> None:
    with SemanticCache(db_path, embedder=FakeEmbedder(dim=64)) as cache:
        cache.store("alpha", None, "a")
    before = digest(db_path)
    for read_only in (False, True):
        for embedder in (FakeEmbedder(dim=32), FakeEmbedder(dim=64, model_id="other-model")):
            with pytest.raises(EmbedderMismatchError, match="re-embed"):
                SemanticCache(db_path, embedder=embedder, read_only=read_only)
    assert digest(db_path) == before
    db = Database(db_path)
    with db.transaction() as conn:
        conn.execute("PRAGMA user_version = 999")
    db.close()
    before = digest(db_path)
    for read_only in (False, True):
        with pytest.raises(SchemaTooNewError, match="newer semcache-sqlite"):
            SemanticCache(db_path, embedder=FakeEmbedder(), read_only=read_only)
    assert digest(db_path) == before


# -- read-only files and directories ---------------------------------------------------


def check_read_only_cache(path: Path) -> None:
    """What read_only=True promises, on any file: reads work, writes are refused."""
    with SemanticCache(path, embedder=FakeEmbedder(), threshold=0.8, read_only=True) as cache:
        assert cache.read_only
        hit = cache.lookup("alpha beta gamma delta")
        assert hit is not None and hit.response == "1"
        assert cache.get(hit.entry_id).response == "1"
        assert [r.response for r in cache.search("alpha beta gamma", k=1)] == ["1"]
        before = cache.stats()
        assert before["cached_entries"] == 4
        assert cache.get_or_compute("brand new question", lambda q: "fresh") == ("fresh", False)
        assert cache.stats()["total_requests"] == before["total_requests"]  # not counted
        for write in (
            lambda: cache.store("new", None, "n"),
            lambda: cache.update(hit.entry_id, response="x"),
            lambda: cache.delete(hit.entry_id),
            lambda: cache.clear(),
        ):
            with pytest.raises(ReadOnlyError, match="read_only=True"):
                write()
        assert cache.lookup("brand new question") is None


def test_read_only_option_on_an_ordinary_file(filled: SemanticCache) -> None:
    path = Path(filled.path)
    filled.close()
    before = snapshot(path)
    check_read_only_cache(path)
    assert snapshot(path) == before
    with pytest.raises(StorageError, match="no such cache file"):
        SemanticCache(path.with_name("missing.db"), embedder=FakeEmbedder(), read_only=True)
    empty = path.with_name("empty.db")
    empty.touch()
    with pytest.raises(ReadOnlyError, match="cannot be upgraded"):
        SemanticCache(empty, embedder=FakeEmbedder(), read_only=True)


def test_read_only_directory_reported_up_front(
    filled: SemanticCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What os.access says decides (it reports a read-only mount even to root)."""
    path = Path(filled.path)
    filled.close()
    for name in (f"{path}-wal", f"{path}-shm"):
        Path(name).unlink(missing_ok=True)
    real_access = os.access

    def no_writes_in(target: Path) -> Callable[..., bool]:
        def access(p: Any, mode: int, **kwargs: Any) -> bool:
            if mode & os.W_OK and Path(p) == target:
                return False
            return real_access(p, mode, **kwargs)

        return access

    for target, message in ((path.parent, "directory is read-only"), (path, "file is read-only")):
        monkeypatch.setattr(os, "access", no_writes_in(target))
        with pytest.raises(ReadOnlyError, match=f"{message}.*read_only=True"):
            SemanticCache(path, embedder=FakeEmbedder())
        check_read_only_cache(path)
        monkeypatch.setattr(os, "access", real_access)


def _can_mount() -> bool:
    if not sys.platform.startswith("linux") or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/semcache-mount-probe-{uuid.uuid4().hex}")
    probe.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True
        )
        if done.returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    except OSError:
        return False
    finally:
        with suppress(OSError):
            probe.rmdir()


CAN_MOUNT = _can_mount()
needs_mount = pytest.mark.skipif(not CAN_MOUNT, reason="mount is not allowed here (needs root)")


@contextmanager
def mounted(args: list[str], target: Path) -> Iterator[Path]:
    target.mkdir(exist_ok=True)
    subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


@needs_mount
@pytest.mark.parametrize("state", ["closed", "open elsewhere"])
def test_read_only_bind_mount(filled: SemanticCache, tmp_path: Path, state: str) -> None:
    """A real read-only directory: without read_only=True a clear ReadOnlyError; with it,
    reads work, whether the file was closed cleanly (no -wal/-shm: opened immutable) or
    a writer elsewhere still has it open (its -wal and -shm are there)."""
    source = Path(filled.path)
    if state == "closed":
        filled.close()
        assert not Path(f"{source}-wal").exists()
    before = snapshot(source)
    with mounted(["--bind", "-o", "ro", str(source.parent)], tmp_path / "ro") as ro:
        path = ro / source.name
        with pytest.raises(ReadOnlyError, match="read_only=True"):
            SemanticCache(path, embedder=FakeEmbedder())
        check_read_only_cache(path)
    assert snapshot(source) == before


# -- a full disk ------------------------------------------------------------------------


def fill_until_full(cache: SemanticCache, start: int = 0) -> tuple[int, Snapshot]:
    """Store big entries until StorageFullError; return how many went in and the content
    as it was before the failed store (which must be the content after it too)."""
    path = Path(cache.path)
    for i in range(start, start + 10_000):
        before = snapshot(path)
        try:
            cache.store(f"filler entry {i} " + "pad " * 50, None, "r" * 3000 + str(i))
        except StorageFullError:
            return i - start, before
    raise AssertionError("never filled up")


@pytest.mark.parametrize("where", ["vector chunk", "entry pages"])
def test_disk_full_via_max_page_count(cache: SemanticCache, where: str) -> None:
    """PRAGMA max_page_count caps this connection's file size: SQLITE_FULL, like a full
    disk. The first cap leaves no room for sqlite-vec's first vector chunk (its error
    loses SQLITE_FULL); the second leaves room for a chunk but not for more rows."""
    conn = cache._db.connection()  # the cache's connection for this thread
    if where == "entry pages":
        cache.store("first entry", None, "allocates the first vector chunk")
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    _stored, before = fill_until_full(cache)
    assert snapshot(Path(cache.path)) == before  # nothing half-written
    assert cache._store.orphan_counts() == (0, 0)
    if where == "entry pages":
        assert cache.lookup("first entry") is not None  # reads go on (the count is dropped)
    conn.execute("PRAGMA max_page_count = 4294967294")  # "space freed"
    entry_id = cache.store("after the cap is lifted", None, "works again")
    assert cache.get(entry_id).response == "works again"
    assert check_file(cache.path).ok


def test_disk_full_after_the_llm_answered_returns_the_answer(cache: SemanticCache) -> None:
    """The paid-for answer is not lost when the disk is full: returned uncached."""
    conn = cache._db.connection()  # the cache's connection for this thread
    cache.store("first entry", None, "allocates the first vector chunk")
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    _stored, before = fill_until_full(cache)
    answer = "the expensive answer " * 500  # needs new pages, as the last filler did
    result = cache.get_or_compute_result("a new question", lambda q: answer)
    assert (result.response, result.is_cached, result.outcome, result.reason) == (
        answer,
        False,
        "uncached",
        "store_failed",
    )
    assert isinstance(result.error, StorageFullError) and not result.stored
    assert snapshot(Path(cache.path)) == before


def test_a_setting_in_the_file_that_refuses_the_store_returns_the_answer(
    cache: SemanticCache,
) -> None:
    """Not only StorageErrors: whatever SemCacheError the store raises after the LLM was
    paid (here a namespace setting no version writes, edited in by hand), the answer is
    returned uncached, not lost."""
    with cache._db.transaction() as conn:
        conn.execute(
            "INSERT INTO namespace_config (namespace, settings, updated_at) VALUES (?, ?, 0)",
            ("default", '{"eviction": "mru"}'),
        )
    calls: list[str] = []

    def llm(query: str) -> str:
        calls.append(query)
        return "paid"

    result = cache.get_or_compute_result("a new question", llm)
    assert (result.response, result.is_cached, result.reason) == ("paid", False, "store_failed")
    assert isinstance(result.error, InvalidInputError) and calls == ["a new question"]
    assert cache.stats()["cached_entries"] == 0


@needs_mount
def test_disk_full_on_a_small_tmpfs(tmp_path: Path) -> None:
    with mounted(["-t", "tmpfs", "-o", "size=4m", "tmpfs"], tmp_path / "small") as disk:
        path = disk / "cache.db"
        cache = SemanticCache(path, embedder=FakeEmbedder())
        try:
            cache.store("first entry", None, "before the disk filled up")
            filler = disk / "filler"
            free = shutil.disk_usage(disk).free
            filler.write_bytes(b"\0" * max(0, free - 600_000))
            stored, before = fill_until_full(cache)
            assert snapshot(path) == before
            assert cache._store.orphan_counts() == (0, 0)
            hit = cache.lookup("first entry")  # reads still work on a full disk
            assert hit is not None and hit.response == "before the disk filled up"
            filler.unlink()  # space freed
            entry_id = cache.store("after space was freed", None, "works again")
            assert cache.get(entry_id).response == "works again"
            assert cache.clear() == stored + 2
        finally:
            cache.close()
        assert check_file(path).ok


def test_every_error_above_is_a_semcache_error() -> None:
    for error in (StorageFullError, ReadOnlyError, NotACacheFileError, InvalidVectorError):
        assert issubclass(error, SemCacheError)
