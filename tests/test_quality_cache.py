"""Hit quality inside the cache: each guard on its crafted case (real model), the
exact path, verification, feedback and stored thresholds."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fakes import FakeEmbedder

from semcache_sqlite import (
    Calibration,
    EntryNotFoundError,
    GuardConfig,
    GuardWeights,
    InvalidInputError,
    LocalEmbedder,
    SemanticCache,
)
from semcache_sqlite.embedders import LOCAL_DEFAULT_THRESHOLD, LOCAL_UNGUARDED_THRESHOLD


def _cache(path: Path, embedder: LocalEmbedder, guards: GuardConfig) -> SemanticCache:
    return SemanticCache(path, embedder=embedder, guards=guards)


@pytest.mark.parametrize(
    ("guard", "cached", "asked", "threshold"),
    [
        # cosine 0.89: without the guard this is served at 0.85
        ("negation", ["How do I enable 2FA?"], "How do I disable 2FA?", 0.85),
        # cosine 0.91
        (
            "numbers",
            ["What is the price of the iPhone 12?"],
            "What is the price of the iPhone 13?",
            0.9,
        ),
        # cosine 0.76
        (
            "entities",
            ["What is the best time to visit Paris?"],
            "What is the best time to visit London?",
            0.75,
        ),
        # cosine 0.53: two texts one word apart that the model still finds far apart
        ("swap", ["How do I reset my password?"], "How do I reset my router?", 0.5),
        # cosine 0.69 and 0.68: the query sits between two different cached questions
        (
            "margin",
            ["How do I reset my password?", "How do I reset my router?"],
            "How do I reset it?",
            0.65,
        ),
        (
            "crowding",
            [
                "How do I reset my password?",
                "How do I reset my router?",
                "How do I reset my phone?",
                "How do I reset my email?",
            ],
            "How do I reset it?",  # cosine 0.80 to "phone", the others about 0.69
            0.75,
        ),
    ],
)
def test_each_guard_turns_its_lookalike_into_a_miss(
    tmp_path: Path,
    local_embedder: LocalEmbedder,
    guard: str,
    cached: list[str],
    asked: str,
    threshold: float,
) -> None:
    answers = [f"answer to {q}" for q in cached]
    with _cache(tmp_path / "plain.db", local_embedder, GuardConfig.off()) as plain:
        plain.store_many(cached, answers)
        served = plain.lookup(asked, threshold=threshold)
        assert served is not None, "the case must be a hit on plain cosine"
        assert served.score == served.similarity
    with _cache(tmp_path / "guarded.db", local_embedder, GuardConfig.only(guard)) as guarded:
        guarded.store_many(cached, answers)
        assert guarded.lookup(asked, threshold=threshold) is None
        nearest = guarded.search(asked, k=1)[0]
        assert nearest.similarity >= threshold  # the guard, not the cosine, said no


def test_default_guards_keep_paraphrases_and_exact_repeats(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    with SemanticCache(tmp_path / "c.db", embedder=local_embedder) as cache:
        assert cache.threshold == LOCAL_DEFAULT_THRESHOLD
        cache.store_many(
            [
                "How do I reset my password?",
                "How do I enable 2FA?",
                "What is the capital of France?",
            ],
            ["reset", "2fa on", "Paris"],
        )
        hit = cache.lookup("How can I reset my password?")
        assert hit is not None and hit.response == "reset" and hit.signals is not None
        assert hit.score is not None and hit.score <= hit.similarity
        france = cache.lookup("What's the capital city of France?")
        assert france is not None and france.response == "Paris"
        assert cache.lookup("How do I disable 2FA?") is None
        assert cache.lookup("How do I reset my router?") is None
        # the exact path never runs guards, whatever they would say
        with SemanticCache(
            tmp_path / "c.db",
            embedder=local_embedder,
            guards=GuardConfig(weights=GuardWeights(numbers=1.0, entities=1.0, margin=5.0)),
        ) as strict:
            exact = strict.lookup("how do i ENABLE 2fa?", threshold=1.0)
            assert exact is not None and exact.exact and exact.signals is None


def test_unguarded_default_threshold(tmp_path: Path) -> None:
    with SemanticCache(tmp_path / "a.db", embedder=LocalEmbedder(), guards=False) as cache:
        assert cache.threshold == LOCAL_UNGUARDED_THRESHOLD
    with SemanticCache(tmp_path / "b.db", embedder=LocalEmbedder(), guards=["numbers"]) as cache:
        assert cache.threshold == LOCAL_UNGUARDED_THRESHOLD  # only the default set gets 0.85


def test_find_similar_without_text_takes_the_threshold_of_fewer_guards(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    asked = "How do I disable two-factor authentication?"
    vector = local_embedder.embed([asked])[0]
    with SemanticCache(tmp_path / "c.db", embedder=local_embedder) as cache:
        cache.store("How do I enable two-factor authentication?", None, "2fa on")
        nearest = cache.search(asked, k=1)[0].similarity
        assert LOCAL_DEFAULT_THRESHOLD <= nearest < LOCAL_UNGUARDED_THRESHOLD  # the case's premise
        assert cache.lookup(asked) is None  # the text guards refuse it
        # Only margin and crowding can run on an embedding: the default set's 0.85 does not apply.
        assert cache.find_similar(vector) is None
        served = cache.find_similar(vector, threshold=LOCAL_DEFAULT_THRESHOLD)
        assert served is not None and served[0] == "2fa on"
    with SemanticCache(
        tmp_path / "c.db", embedder=local_embedder, threshold=LOCAL_DEFAULT_THRESHOLD
    ) as chosen:
        assert chosen.find_similar(vector) is not None  # a threshold set on the cache applies


def test_verify_runs_only_inside_its_band(tmp_path: Path, fake_embedder: FakeEmbedder) -> None:
    calls: list[tuple[str, str, str]] = []
    verdict = {"value": True}

    def verify(query: str, cached_query: str, cached_response: str) -> bool:
        calls.append((query, cached_query, cached_response))
        return verdict["value"]

    stored = "alpha beta gamma delta"
    near = "alpha beta gamma delta epsilon"
    similarity = float(fake_embedder.vector(stored) @ fake_embedder.vector(near))
    band = (similarity - 0.01, similarity + 0.01)
    with SemanticCache(
        tmp_path / "v.db",
        embedder=fake_embedder,
        threshold=0.5,
        guards=False,
        verify=verify,
        verify_band=band,
    ) as cache:
        cache.store(stored, None, "answer")
        far = "alpha beta gamma zeta eta theta iota"
        far_similarity = float(fake_embedder.vector(stored) @ fake_embedder.vector(far))
        assert cache.lookup(stored.upper()) is not None  # exact path: no call
        assert cache.lookup(stored + " !", threshold=0.99) is not None  # above the band: no call
        assert calls == []
        if far_similarity < 0.5:  # below the threshold: a miss, no call
            assert cache.lookup(far) is None
            assert calls == []
        assert cache.lookup(near) is not None  # inside the band: asked, said yes
        assert calls == [(near, stored, "answer")]
        verdict["value"] = False
        assert cache.lookup(near) is None  # said no: a miss
        assert cache.find_similar(fake_embedder.vector(near)) is None  # no text to verify: refused
        assert len(calls) == 2
        assert cache.stats()["misses"] >= 2

        def broken(query: str, cached_query: str, cached_response: str) -> bool:
            raise RuntimeError("verifier down")

        cache.verify = broken
        assert cache.lookup(near) is None  # a failing verifier never serves unchecked
    with pytest.raises(InvalidInputError):
        SemanticCache(tmp_path / "w.db", embedder=fake_embedder, verify_band=(0.9, 0.8))


def test_feedback_persists_across_reopen(tmp_path: Path, fake_embedder: FakeEmbedder) -> None:
    path = tmp_path / "f.db"
    with SemanticCache(path, embedder=fake_embedder, threshold=0.5) as cache:
        entry_id = cache.store("alpha beta gamma delta", None, "answer", namespace="ns")
        result = cache.lookup("alpha beta gamma delta epsilon", namespace="ns", user_id="bob")
        assert result is not None
        first = cache.feedback(result, correct=False)
        second = cache.feedback(entry_id, correct=True)  # remembered from the lookup above
        assert second > first
    with SemanticCache(path, embedder=fake_embedder) as cache:
        rows = cache.feedback_rows()
        assert [r.correct for r in rows] == [False, True]
        row = rows[0]
        assert (row.entry_id, row.namespace, row.user_id) == (entry_id, "ns", "")  # the entry's
        assert row.query == "alpha beta gamma delta epsilon"
        assert row.matched_query == "alpha beta gamma delta"
        assert row.similarity == pytest.approx(result.similarity)
        assert row.score == pytest.approx(result.score)
        assert row.signals is not None and row.signals.similarity == pytest.approx(row.similarity)
        assert rows[1].query == row.query  # the id found the remembered lookup
        # a new cache object has not served the entry: only the entry is recorded
        cache.feedback(entry_id, correct=True, query="asked elsewhere")
        last = cache.feedback_rows("ns")[-1]
        assert (last.query, last.similarity, last.signals) == ("asked elsewhere", None, None)
        with pytest.raises(EntryNotFoundError):
            cache.feedback(12345, correct=False)
        with pytest.raises(InvalidInputError):
            cache.feedback("alpha", correct=False)  # type: ignore[arg-type]


def test_threshold_precedence(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    embedder = FakeEmbedder(threshold=0.77)
    with SemanticCache(path, embedder=embedder) as cache:
        assert cache.threshold == 0.77  # the embedder's default
        cache.threshold = 0.8
        assert cache.threshold == 0.8  # constructor level
        cache.set_calibration(Calibration(0.9, source="unit", figures={"hit_rate": 0.3}))
        cache.set_calibration(Calibration(0.97, namespace="strict"))
        assert cache.threshold == cache.threshold_for("other") == 0.9  # file-wide
        assert cache.threshold_for("strict") == 0.97  # the namespace's own
        cache.store("alpha beta gamma delta", None, "a", namespace="strict")
        assert cache.lookup("alpha beta gamma delta epsilon", namespace="strict") is None
        assert cache.lookup("alpha beta gamma delta epsilon", namespace="strict", threshold=0.5)
    with SemanticCache(path, embedder=embedder, threshold=0.6) as cache:
        assert cache.threshold == 0.9  # stored beats the constructor, across reopen
        stored = cache.calibration()
        assert stored is not None and stored.source == "unit" and stored.figures["hit_rate"] == 0.3
        assert stored.embedding_model == embedder.model_id
        assert cache.clear_calibration() is True
        assert cache.threshold == 0.6
        assert cache.clear_calibration() is False


def test_calibration_of_another_model_stops_applying_after_reembed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A threshold measured for model A says nothing about model B's similarities: after
    a re-embed it is ignored (kept as history, and said so) until calibrated again."""
    path = tmp_path / "m.db"
    model_b = FakeEmbedder(model_id="model-b", threshold=0.93)
    with SemanticCache(path, embedder=FakeEmbedder(model_id="model-a")) as cache:
        cache.set_calibration(Calibration(0.3, namespace="faq"))
        cache.set_calibration(Calibration(0.4))
        cache.store("alpha beta gamma delta", None, "a", namespace="faq")
        assert cache.threshold_for("faq") == 0.3
        with caplog.at_level(logging.WARNING, logger="semcache_sqlite"):
            cache.reembed(model_b)
        assert cache.threshold_for("faq") == cache.threshold == 0.93  # model B's default
        assert cache.lookup("alpha beta gamma zeta", namespace="faq") is None  # 0.75 < 0.93
        old = cache.calibration("faq")
        assert old is not None and (old.threshold, old.embedding_model) == (0.3, "model-a")
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "file-wide (model-a), namespace 'faq' (model-a)" in warning
    assert "calibrate again for model-b" in warning
    with SemanticCache(path, embedder=model_b, threshold=0.8) as cache:
        assert cache.threshold_for("faq") == 0.8  # the constructor's, not model A's 0.3
        cache.set_calibration(Calibration(0.6))  # measured for model B: applies again
        assert cache.threshold_for("faq") == 0.6  # 'faq' still has model A's row only


@pytest.mark.parametrize("guards", [True, False])
def test_text_the_model_cannot_see_is_compared_before_a_similar_hit(
    tmp_path: Path, local_embedder: LocalEmbedder, guards: bool
) -> None:
    """Emoji are all one unknown token to the local model, and it sees 256 tokens: texts
    that differ only there get the same vector, similarity 1.0. Served, "👎" got the
    answer stored for "👍"; now such a match is refused whatever the guards, while the
    same unseen text (a paraphrase around the same emoji) is still served."""
    with SemanticCache(tmp_path / "c.db", embedder=local_embedder, guards=guards) as cache:
        long_prompt = "summarise this report please " * 60  # ~300 tokens
        cache.store_many(
            ["👍", "is my order on its way 📦", long_prompt + "section A"],
            ["glad it helped", "it ships tomorrow", "summary of A"],
        )
        hit = cache.lookup("Is my order on its way? 📦", threshold=0.9)
        assert hit is not None and hit.response == "it ships tomorrow" and not hit.exact
        for asked in ("👎", "is my order on its way 🚚", long_prompt + "section B"):
            nearest = cache.search(asked, k=1)  # ranks by the vectors alone: they agree
            assert len(nearest) == 1 and nearest[0].similarity > 0.999
            assert cache.lookup(asked) is None  # the texts do not
            result = cache.get_or_compute_result(asked, lambda q: f"fresh answer to {q}")
            assert not result.is_cached and str(result.response).startswith("fresh answer")
        served = cache.get_or_compute_result("👎", lambda q: "not called")
        assert served.is_cached and served.response == "fresh answer to 👎"  # exact path


def test_unseen_text_of_the_local_model(local_embedder: LocalEmbedder) -> None:
    assert local_embedder.unseen_text("How do I reset my password?") == ""
    assert local_embedder.unseen_text("Café au lait, привет, 日本語") == ""  # in its vocabulary
    assert local_embedder.unseen_text("thanks 👍 ok ✅") == "👍✅"
    assert local_embedder.unseen_text("zero\u200bwidth left\u200e") == ""  # invisible (Cf)
    assert local_embedder.unseen_text("re\u0301sume\u0301") == ""  # decomposed accents
    tail = local_embedder.unseen_text("word " * 300 + "END")
    assert tail.endswith("END") and tail.startswith("word")  # past the 256 tokens


def test_an_ascii_word_too_long_for_the_tokenizer_is_unseen(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    """The tokenizer makes one [UNK] of a word over 100 characters (a SHA-512 digest, a
    long identifier): two prompts differing only in such a word got the same vector, and
    the ASCII shortcut of unseen_text said the model saw everything, so the answer for one
    digest was served for the other at similarity 1.0."""
    digest_a, digest_b = "0123456789abcdef" * 8, "fedcba9876543210" * 8  # 128 hex digits
    assert local_embedder.unseen_text(f"verify sha512 {digest_a}") == digest_a
    assert local_embedder.unseen_text("what is [UNK]?") == "[UNK]"  # the unknown token, as text
    assert local_embedder.unseen_text("a" * 100 + " ok") == ""  # 100 characters: one word piece
    with SemanticCache(tmp_path / "c.db", embedder=local_embedder) as cache:
        cache.store(f"verify sha512 {digest_a}", None, "digest A is valid")
        asked = f"verify sha512 {digest_b}"
        assert cache.search(asked, k=1)[0].similarity > 0.999  # the vectors agree
        assert cache.lookup(asked) is None  # the texts do not


@pytest.mark.parametrize("guards", [True, False])
def test_a_tie_is_served_by_the_entry_whose_unseen_text_matches(
    tmp_path: Path, local_embedder: LocalEmbedder, guards: bool
) -> None:
    """Entries "thumbs 👍" and "thumbs 👎" embed alike (emoji are one unknown token): they tie
    for any query. The nearest by id was judged alone, so "the thumbs 👎" was refused
    for the 👍 entry although the 👎 entry, equally near, has the same unseen text."""
    with SemanticCache(tmp_path / "c.db", embedder=local_embedder, guards=guards) as cache:
        cache.store_many(["thumbs 👍", "thumbs 👎"], ["good", "bad"])  # 👍 has the lower id
        tied = cache.search("the thumbs 👎", k=2)
        assert [r.response for r in tied] == ["good", "bad"]
        assert tied[0].similarity == tied[1].similarity
        hit = cache.lookup("the thumbs 👎", threshold=0.5)
        assert hit is not None and hit.response == "bad" and not hit.exact
        hit = cache.lookup("the thumbs 👍", threshold=0.5)
        assert hit is not None and hit.response == "good"
        assert cache.lookup("the thumbs 📦", threshold=0.5) is None  # neither matches
