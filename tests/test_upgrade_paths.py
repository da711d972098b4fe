"""Files of an older layout met by every kind of opener, and damaged vector blobs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from clitools import Cli
from fakes import FakeEmbedder

from semcache_sqlite import SemanticCache, UpgradeRequiredError
from semcache_sqlite.db import Database
from semcache_sqlite.migrate import migrate

FIXTURE = Path(__file__).parent / "fixtures" / "schema_v1.db"


def _old_file(tmp_path: Path) -> Path:
    path = tmp_path / "old.db"
    shutil.copyfile(FIXTURE, path)  # vectors inside the vec0 table, schema 1
    return path


def _exported_vectors(cli: Cli, path: Path, out: Path) -> dict[int, object]:
    cli.run("export", path, "-o", out, "--with-vectors")
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return {r["id"]: r.get("vector") for r in records if "id" in r and "query" in r}


def test_inspection_reads_the_vectors_of_a_file_never_upgraded(tmp_path: Path) -> None:
    path = _old_file(tmp_path)
    cli = Cli(FakeEmbedder(dim=8, model_id="fake-bow-8"))
    vectors = _exported_vectors(cli, path, tmp_path / "a.jsonl")
    assert len(vectors) == 6 and all(v is not None for v in vectors.values())
    doctor = cli.json("doctor", path, expect=4)
    problems = [c["detail"] for c in doctor["checks"] if c["status"] == "problem"]
    assert any("semcache migrate" in p for p in problems)
    assert not any("without a vector" in p for p in problems)
    assert cli.json("stats", path)["schema_version"] == 1  # never upgraded by inspection


def test_a_cli_write_upgrades_the_vectors_too(tmp_path: Path) -> None:
    path = _old_file(tmp_path)
    cli = Cli(FakeEmbedder(dim=8, model_id="fake-bow-8"))
    cli.run("rm", path, "6")
    vectors = _exported_vectors(cli, path, tmp_path / "b.jsonl")
    assert len(vectors) == 5 and all(v is not None for v in vectors.values())
    assert cli.json("doctor", path)["ok"] is True


def test_read_only_cache_refuses_an_old_layout_up_front(tmp_path: Path) -> None:
    path = _old_file(tmp_path)
    db = Database(path)
    migrate(db)  # schema current, vectors still in the old layout (never bound)
    db.close()
    with pytest.raises(UpgradeRequiredError, match="semcache migrate"):
        SemanticCache(path, embedder=FakeEmbedder(dim=8, model_id="fake-bow-8"), read_only=True)
    with SemanticCache(path, embedder=FakeEmbedder(dim=8, model_id="fake-bow-8")):
        pass  # a writable open upgrades it
    with SemanticCache(
        path, embedder=FakeEmbedder(dim=8, model_id="fake-bow-8"), read_only=True, threshold=0.5
    ) as cache:
        hit = cache.lookup("how can i reset my password quickly")
        assert hit is not None and hit.response == "Settings > Reset"


def test_a_damaged_vector_blob_is_left_out_of_rebuilds_not_fatal(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    embedder = FakeEmbedder()
    with SemanticCache(db_path, embedder=embedder, guards=False) as cache:
        ids = cache.store_many(["alpha beta", "gamma delta", "epsilon zeta"], ["a", "g", "e"])
        with cache._db.transaction() as conn:
            conn.execute(
                "UPDATE entry_embeddings SET embedding = x'00ff00' WHERE id = ?", (ids[1],)
            )
        with caplog.at_level(logging.WARNING, logger="semcache_sqlite"):
            cache.vacuum()
        assert "unusable vectors" in caplog.text
        assert cache.lookup("alpha beta gamma", threshold=0.5) is not None
        found = [r.entry_id for r in cache.search("gamma delta", k=3)]
        assert ids[1] not in found and ids[0] in found
        assert cache._store.orphan_counts()[0] == 1  # doctor reports the damaged entry


def test_import_never_reuses_the_id_of_a_deleted_entry(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    cli = Cli(FakeEmbedder())
    with SemanticCache(path, embedder=FakeEmbedder()) as cache:
        ids = cache.store_many(["alpha", "beta", "gamma"], ["a", "b", "c"])
    cli.run("export", path, "-o", tmp_path / "all.jsonl", "--with-vectors")
    cli.run("rm", path, str(ids[2]))
    cli.run("import", path, tmp_path / "all.jsonl")
    with SemanticCache(path, embedder=FakeEmbedder()) as cache:
        back = cache.lookup("gamma")
        assert back is not None and back.entry_id > ids[2]
    fresh = tmp_path / "fresh.db"
    cli.run("import", fresh, tmp_path / "all.jsonl")  # a new file keeps the exported ids
    with SemanticCache(fresh, embedder=FakeEmbedder()) as cache:
        assert [cache.lookup(q).entry_id for q in ("alpha", "beta", "gamma")] == ids  # type: ignore[union-attr]
