"""`semcache get` / `semcache search` decide like SemanticCache.lookup(): same threshold
precedence (stored calibrations included), same guards, same exact path; never counted,
never written."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
from clitools import FAQ, Cli, fake_cli, write_jsonl
from fakes import FakeEmbedder

from semcache_sqlite import Calibration, GuardConfig, GuardWeights, LocalEmbedder, SemanticCache
from semcache_sqlite.db import Database

ENABLE = "How do I enable two-factor authentication?"
DISABLE = "How do I disable two-factor authentication?"
PARAPHRASE = "How can I enable two-factor authentication?"


@pytest.fixture
def faq_db(tmp_path: Path) -> Path:
    path = tmp_path / "c.db"
    fake_cli().run("warm", path, write_jsonl(tmp_path / "faq.jsonl", FAQ))
    return path


def _rows(path: Path) -> dict[str, Any]:
    """What a lookup would change: entries (hit counts), counters, calibrations, feedback."""
    db = Database(path)
    try:
        with db.reading() as conn:
            return {
                table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in ("entries", "namespace_stats", "calibrations", "feedback")
            }
    finally:
        db.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_get_agrees_with_lookup_where_a_guard_refuses(
    tmp_path: Path, local_embedder: LocalEmbedder
) -> None:
    db = tmp_path / "2fa.db"
    with SemanticCache(db, embedder=local_embedder) as cache:
        cache.store(ENABLE, None, "Settings > Security > Enable 2FA")
        cache.store("How do I reset my password?", None, "Settings > Reset")
        # A plain-cosine k=1 rule at the same threshold would serve the enable answer...
        nearest = cache.search(DISABLE, 1)[0]
        assert nearest.query == ENABLE and nearest.similarity >= cache.threshold == 0.85
        # ...but the library's guards (enable/disable are opposites) refuse it.
        assert cache.lookup(DISABLE) is None
        served = cache.lookup(PARAPHRASE)
        assert served is not None and served.score is not None
        plain = SemanticCache(db, embedder=local_embedder, guards=False)
        with plain:
            assert plain.lookup(DISABLE) is None  # 0.88 < the unguarded default 0.95
            assert plain.threshold == 0.95
    before, digest = _rows(db), _digest(db)
    cli = Cli(local_embedder)

    miss = cli.run("get", db, DISABLE, expect=3)
    assert miss.stdout == ""
    assert "guards" in miss.stderr and "lowered the score" in miss.stderr
    assert "threshold 0.850 from the embedder's default" in miss.stderr
    report = cli.json("get", db, DISABLE, expect=3)
    assert report["hit"] is False and report["closest"]["query"] == ENABLE
    assert report["threshold"] == 0.85 and report["similarity"] >= 0.85 > report["score"]
    assert report["closest"]["score"] == report["score"]
    assert "opposites" in report["penalties"]
    assert report["similarity"] == pytest.approx(nearest.similarity, abs=1e-6)

    hit = cli.json("get", db, PARAPHRASE)
    assert hit["hit"] is True and hit["entry"]["id"] == served.entry_id
    assert hit["score"] == pytest.approx(served.score, abs=1e-6)
    assert "score" in cli.run("get", db, PARAPHRASE).stderr

    no_guards = cli.json("get", db, DISABLE, "--no-guards", expect=3)
    assert no_guards["threshold"] == 0.95 and no_guards["guards"] == []
    assert no_guards["score"] == no_guards["similarity"] and no_guards["penalties"] == {}
    # an explicit threshold is a per-call one; --no-guards then is plain cosine at it
    assert cli.json("get", db, DISABLE, "--no-guards", "-t", "0.85")["hit"] is True

    # search marks with the same decision: nothing for DISABLE, the entry for PARAPHRASE
    found = cli.json("search", db, DISABLE, "-k", "2")
    assert found["lookup"]["hit"] is False and found["lookup"]["score"] == report["score"]
    assert not any(r["would_hit"] for r in found["results"])
    assert found["results"][0]["score"] == report["score"] and found["results"][1]["score"] is None
    marked = cli.json("search", db, PARAPHRASE, "-k", "2")
    assert [r["would_hit"] for r in marked["results"]] == [True, False]
    assert marked["lookup"]["entry_id"] == served.entry_id

    # none of it counted or written
    assert _rows(db) == before and _digest(db) == digest


def test_get_and_search_honour_stored_calibrations(faq_db: Path) -> None:
    cli = fake_cli()
    asked = "how do i reset my password now"
    assert cli.json("get", faq_db, asked)["threshold"] == 0.8  # the embedder's default
    with SemanticCache(faq_db, embedder=FakeEmbedder()) as cache:
        cache.set_calibration(Calibration(0.99, namespace="default"))
        cache.set_calibration(Calibration(0.3))  # file-wide: every other namespace
        assert cache.lookup(asked) is None
        assert cache.lookup(asked, threshold=0.5) is not None
        assert cache.threshold_for("dev") == 0.3
    before = _rows(faq_db)

    miss = cli.json("get", faq_db, asked, expect=3)
    assert miss["threshold"] == 0.99 and miss["closest"]["id"] == 1
    assert miss["threshold_source"] == "the calibration of namespace 'default'"
    assert "threshold 0.990 from the calibration of namespace 'default'" in (
        cli.run("get", faq_db, asked, expect=3).stderr
    )
    assert cli.json("search", faq_db, asked)["threshold"] == 0.99
    # per call beats the stored calibration, as lookup(threshold=...) does
    override = cli.json("get", faq_db, asked, "--threshold", "0.5")
    assert override["hit"] is True and override["threshold_source"] == "--threshold"
    dev = cli.json("get", faq_db, "where is the api documentation page", "-n", "dev")
    assert dev["threshold"] == 0.3 and dev["threshold_source"] == "the file's calibration"
    # the exact path answers whatever the threshold
    assert cli.json("get", faq_db, "How do I reset my password")["exact"] is True
    assert _rows(faq_db) == before


def test_get_uses_calibrated_guard_weights_like_lookup(faq_db: Path) -> None:
    """A calibration's refitted weights change the score; get reports lookup()'s score."""
    asked = "how do i reset my password please"
    heavy = GuardConfig(weights=GuardWeights(swap=4.0))
    with SemanticCache(faq_db, embedder=FakeEmbedder()) as cache:
        before = cache.lookup(asked)
        assert before is not None and before.score is not None
        cache.set_calibration(Calibration(0.8, guards=heavy))
        after = cache.search(asked, 1)[0]
        assert cache.lookup(asked) is None  # the heavier swap penalty pushes it below 0.8
    report = fake_cli().json("get", faq_db, asked, expect=3)
    assert report["similarity"] == pytest.approx(after.similarity, abs=1e-6)
    assert report["score"] < before.score and set(report["penalties"]) == {"swap"}
    assert before.signals is not None  # the same texts and neighbours: the same signals
    expected = heavy.penalties(before.signals)["swap"]
    assert report["penalties"]["swap"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("guards", [True, False])
def test_get_agrees_with_lookup_on_every_query(faq_db: Path, guards: bool) -> None:
    queries = [
        "how do i reset my password",
        "how do i reset my password now",
        "how do i reset my router",
        "reset password",
        "what are the pricing plans for teams",
        "how do i delete my account please",
        "where is the api documentation",
        "completely unrelated words",
    ]
    flag = "--guards" if guards else "--no-guards"
    cli = fake_cli()
    with SemanticCache(faq_db, embedder=FakeEmbedder(), guards=guards) as cache:
        for query in queries:
            for namespace in ("default", "dev"):
                expected = cache.lookup(query, namespace=namespace)
                code = 0 if expected is not None else 3
                got = cli.json("get", faq_db, query, "-n", namespace, flag, expect=code)
                assert got["threshold"] == cache.threshold_for(namespace)
                if expected is None:
                    continue
                assert got["entry"]["id"] == expected.entry_id
                assert got["exact"] is expected.exact
                assert got["score"] == pytest.approx(expected.score, abs=1e-6)


def test_get_on_a_file_of_an_older_version_asks_for_an_upgrade(tmp_path: Path) -> None:
    """The CLI's lookups never migrate: on a first-schema file (vectors inside the vec0
    table, no calibrations) `get` says how to upgrade; after `semcache migrate` it works."""
    path = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "schema_v1.db", path)
    cli = Cli(FakeEmbedder(dim=8, model_id="fake-bow-8"))
    asked = "how do i reset my password please"  # not an exact repeat: needs the KNN
    assert cli.run("get", path, "how do i reset my password").stdout == "Settings > Reset\n"
    refused = cli.run("get", path, asked, expect=5)
    assert "semcache migrate" in refused.stderr
    assert cli.json("stats", path)["schema_version"] == 1  # inspection left it as it was
    cli.run("migrate", path)
    assert cli.run("get", path, asked).stdout == "Settings > Reset\n"
    assert cli.json("get", path, "refund policy for my orders", "-n", "shop")["hit"] is True


def test_get_ignores_a_calibration_of_the_files_former_model(faq_db: Path) -> None:
    """After a re-embed, `get`/`search` drop the old model's calibration as lookup() does."""
    model_b = FakeEmbedder(model_id="model-b", threshold=0.99)
    with SemanticCache(faq_db, embedder=FakeEmbedder()) as cache:
        cache.set_calibration(Calibration(0.3))
        cache.reembed(model_b)
    cli = Cli(model_b)
    asked = "how do i reset my password now"
    report = cli.json("get", faq_db, asked, expect=3)
    assert (report["threshold"], report["threshold_source"]) == (0.99, "the embedder's default")
    assert cli.json("search", faq_db, asked)["threshold"] == 0.99


class _BrokenEmbedder(FakeEmbedder):
    """The file's embedder (same model id and dimension) failing in one of two ways."""

    def __init__(self, failure: str) -> None:
        super().__init__()
        self.failure = failure

    def embed(self, texts: Any) -> Any:
        if self.failure == "raises":
            raise RuntimeError("embedding service down")
        return super().embed(texts) * float("nan")


@pytest.mark.parametrize(("failure", "says"), [("raises", "service down"), ("nan", "unusable")])
def test_get_and_search_report_a_failing_embedder_in_one_line(
    faq_db: Path, failure: str, says: str
) -> None:
    cli = Cli(_BrokenEmbedder(failure))
    for command in ("get", "search"):
        done = cli.run(command, faq_db, "how can i change my password", expect=1)  # no traceback
        assert "embedder" in done.stderr and says in done.stderr, done.stderr
