"""doctor, migrate, vacuum and shell through the CLI runner on real files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from clitools import FAQ, Cli, fake_cli, write_jsonl
from fakes import FakeEmbedder

from semcache_sqlite import Calibration, SemanticCache, vector_cells
from semcache_sqlite.admin import Admin
from semcache_sqlite.db import Database
from semcache_sqlite.migrate import latest_version
from semcache_sqlite.vector_index import PARTITION_INDEX, quantize


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "c.db"
    fake_cli().run("warm", path, write_jsonl(tmp_path / "faq.jsonl", FAQ))
    return path


def _sql(db: Path, statement: str) -> None:
    database = Database(db)
    try:
        with database.transaction() as conn:
            conn.execute(statement)
    finally:
        database.close()


def test_doctor_healthy_file(db: Path) -> None:
    report = fake_cli().json("doctor", db)
    assert report["ok"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["sqlite-vec"]["detail"].startswith("v0.1")
    assert checks["integrity"]["status"] == "ok"
    assert checks["entries/vectors"]["detail"] == "5 entries, each with its vector"
    assert checks["journal mode"]["detail"] == "wal"
    assert "fake-bow-64 (64-d)" in checks["embedding model"]["detail"]
    assert checks["schema version"]["status"] == "ok"
    assert checks["index bits"]["detail"] == "not judged: 5 vectors sampled"
    text = fake_cli().run("doctor", db).stdout
    assert "no problems found" in text and "sqlite driver" in text


def test_doctor_finds_orphans_in_both_directions(db: Path) -> None:
    _sql(db, "DELETE FROM entries WHERE id = 1")  # vector left without its entry
    _sql(db, "DELETE FROM entry_vectors_small WHERE rowid = 2")  # entry left without its vector
    result = fake_cli().run("doctor", db, expect=4)
    assert "1 entries without a vector, 1 vectors without an entry" in result.stdout
    assert "FAIL" in result.stdout and "1 problem(s) found" in result.stdout
    assert fake_cli().json("doctor", db, expect=4)["ok"] is False


def test_doctor_finds_entries_of_another_model(db: Path) -> None:
    _sql(db, "UPDATE entries SET embedding_model = 'other' WHERE id = 3")
    report = fake_cli().json("doctor", db, expect=4)
    assert [c["detail"] for c in report["checks"] if c["status"] == "problem"] == [
        "1 entries recorded with another model/dim"
    ]


def test_doctor_warns_of_miscounted_namespaces_and_vacuum_recounts(db: Path) -> None:
    """Limits are checked against entry_counts; a row written around the library (the
    sqlite3 shell) is not counted: doctor says so, vacuum recounts."""
    _sql(db, "UPDATE entry_counts SET entries = entries + 7 WHERE namespace = 'dev'")
    checks = {c["name"]: c for c in fake_cli().json("doctor", db)["checks"]}
    assert checks["entry counts"]["status"] == "warn"
    assert "'dev' counted 8, holds 1" in checks["entry counts"]["detail"]
    fake_cli().run("vacuum", db)
    names = [c["name"] for c in fake_cli().json("doctor", db)["checks"]]
    assert "entry counts" not in names


@pytest.mark.parametrize("index", [PARTITION_INDEX, "entry_vectors_small_chunks_partition"])
def test_doctor_warns_of_unindexed_partitions_until_migrate(db: Path, index: str) -> None:
    _sql(db, f"DROP INDEX {index}")
    warned = [c for c in fake_cli().json("doctor", db)["checks"] if c["status"] == "warn"]
    assert [c["name"] for c in warned] == ["vector table"] and "migrate" in warned[0]["detail"]
    fake_cli().run("migrate", db)
    assert not [c for c in fake_cli().json("doctor", db)["checks"] if c["status"] == "warn"]


def test_doctor_warns_of_a_namespace_split_between_the_vec0_tables(db: Path) -> None:
    """A namespace's rows are all in one table: lookups scan only that one, so a row
    left in the small table while the namespace has some in the large one (a hand edit)
    is never found. doctor says so; vacuum puts the namespace back in one table."""
    database = Database(db)
    try:
        with database.transaction() as conn:
            blob = conn.execute("SELECT embedding FROM entry_embeddings WHERE id = 1").fetchone()
            conn.execute("DELETE FROM entry_vectors_small WHERE rowid = 1")
            conn.execute(
                "INSERT INTO entry_vectors (rowid, namespace, cell, embedding, context, owner, "
                "expires_at) VALUES (1, 'default', -1, vec_bit(?), 0, 0, 1e18)",
                (quantize(np.frombuffer(blob[0], dtype="<f4"))[0],),
            )
    finally:
        database.close()
    warned = [c for c in fake_cli().json("doctor", db)["checks"] if c["status"] == "warn"]
    assert [c["name"] for c in warned] == ["vector table"]
    stranded = len([e for e in FAQ if e.get("namespace", "default") == "default"]) - 1
    assert warned[0]["detail"].startswith(f"'default' ({stranded} rows) in both vec0 tables")
    fake_cli().run("vacuum", db)
    assert not [c for c in fake_cli().json("doctor", db)["checks"] if c["status"] == "warn"]
    assert fake_cli().json("get", db, FAQ[1]["query"])["hit"]


@pytest.mark.parametrize("signs", ["balanced", "all positive"])
def test_doctor_judges_whether_the_index_bits_tell_entries_apart(
    tmp_path: Path, signs: str
) -> None:
    """The fast path re-scores the 16 entries with the nearest sign bits: an embedder
    whose coordinates are all positive gets a warning to use exact_search."""
    vectors = np.random.default_rng(1).standard_normal((300, 32)).astype(np.float32)
    if signs == "all positive":
        vectors = np.abs(vectors) + np.float32(0.01)
    path = tmp_path / "c.db"
    with SemanticCache(path, embedder=FakeEmbedder(dim=32)) as cache:
        texts = [f"question {i}" for i in range(300)]
        cache.store_many(texts, texts, embeddings=vectors)
    report = fake_cli().json("doctor", path)
    check = {c["name"]: c for c in report["checks"]}["index bits"]
    assert report["ok"] is True  # a warning, not a problem
    sampled = int(check["detail"].split("(")[1].split()[0])
    assert 100 <= sampled <= 300
    if signs == "balanced":
        assert check["status"] == "ok" and "of 32 bits per vector" in check["detail"]
        assert float(check["detail"].split("~")[1].split()[0]) > 28
    else:
        assert check["status"] == "warn" and "exact_search=True" in check["detail"]
        assert check["detail"].startswith("sign bits carry ~0 of 32 bits")


def test_doctor_reports_the_cells_of_large_namespaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No line while no namespace is large; a warning for a large namespace without
    cells (grown while the mark was higher) until a write trains them; a warning for
    many index rows outside any cell, until vacuum sorts them."""
    path = tmp_path / "c.db"
    vectors = np.random.default_rng(2).standard_normal((150, 32)).astype(np.float32)
    texts = [f"question {i}" for i in range(150)]
    monkeypatch.setattr(vector_cells, "CELLS", 4)
    with SemanticCache(path, embedder=FakeEmbedder(dim=32)) as cache:
        cache.store_many(texts, texts, embeddings=vectors, namespace="big")
        cache.store_many(texts[:5], texts[:5], embeddings=vectors[:5], namespace="small")

    def cells_check() -> dict[str, str] | None:
        report = fake_cli().json("doctor", path)
        assert report["ok"] is True
        return {c["name"]: c for c in report["checks"]}.get("index cells")

    assert cells_check() is None
    monkeypatch.setattr(vector_cells, "CLUSTER_AT", 50)
    check = cells_check()
    assert check is not None and check["status"] == "warn"
    assert check["detail"].startswith("'big' has 150 entries and no cells")
    with SemanticCache(path, embedder=FakeEmbedder(dim=32)) as cache:  # a write trains them
        cache.store("one more", None, "answer", namespace="big")
    expected = {
        "name": "index cells",
        "status": "info",
        "detail": "'big': 4 cells trained on 151 of 151 entries, 0 outside any cell",
    }
    assert cells_check() == expected
    # Index rows outside any cell (none of the library's writes leaves them there):
    # every lookup scans them, so doctor says how to sort them into cells.
    database = Database(path)
    try:
        with database.transaction() as conn:
            rows = conn.execute(
                "SELECT e.id, b.embedding FROM entries e JOIN entry_embeddings b USING (id) "
                "WHERE e.namespace = 'big' LIMIT 120"
            ).fetchall()
            for entry_id, blob in rows:
                conn.execute("DELETE FROM entry_vectors WHERE rowid = ?", (entry_id,))
                conn.execute(
                    "INSERT INTO entry_vectors (rowid, namespace, cell, embedding, context, "
                    "owner, expires_at) VALUES (?, 'big', -1, vec_bit(?), 0, 0, 1e18)",
                    (entry_id, quantize(np.frombuffer(blob, dtype="<f4"))[0]),
                )
    finally:
        database.close()
    check = cells_check()
    assert check is not None and check["status"] == "warn"
    assert check["detail"].startswith("'big' has 120 entries outside any cell")
    fake_cli().run("vacuum", path)
    assert cells_check() == expected


def test_the_vector_sample_reaches_ids_thinned_by_deletes(tmp_path: Path) -> None:
    """Runs of ids from random starts: distinct entries, from a dense file or from one
    where 9 in 10 entries were deleted."""
    path = tmp_path / "c.db"
    vectors = np.random.default_rng(4).standard_normal((3000, 8)).astype(np.float32)
    with SemanticCache(path, embedder=FakeEmbedder(dim=8)) as cache:
        ids = cache.store_many([f"q {i}" for i in range(3000)], ["a"] * 3000, embeddings=vectors)
        admin = Admin(cache._db)
        dense = admin.sample_vectors(2000)
        assert 1000 <= len(dense) <= 2000 and len(np.unique(dense, axis=0)) == len(dense)
        for entry_id in ids:
            if entry_id % 10:
                cache.delete(entry_id)
        sparse = admin.sample_vectors(2000)
        assert 100 <= len(sparse) <= 300
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        sims = sparse @ unit.T  # each sampled vector is one of the entries kept
        assert np.all(sims.max(axis=1) > 0.9999)
        assert all(ids[j] % 10 == 0 for j in sims.argmax(axis=1))


def test_migrate_creates_reports_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    latest = latest_version()
    assert fake_cli().run("migrate", db).stdout == f"{db}: created at schema version {latest}\n"
    assert "already at schema version" in fake_cli().run("migrate", db).stdout
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert fake_cli().run("migrate", empty).stdout == (
        f"{empty}: migrated from schema version 0 to {latest}\n"
    )
    assert fake_cli().json("stats", empty)["entries"] == 0


def test_migrate_reports_a_vector_index_it_upgraded(tmp_path: Path) -> None:
    """A file whose schema is current but whose vector index is not (here: made before
    the partition index) is upgraded, and says so instead of "already at"."""
    db = tmp_path / "m.db"
    fake_cli().run("put", db, "a question", "an answer")
    with closing(Database(db)) as database, database.transaction() as conn:
        conn.execute(f"DROP INDEX {PARTITION_INDEX}")
    assert fake_cli().run("migrate", db).stdout == (
        f"{db}: at schema version {latest_version()} (latest); vector index upgraded\n"
    )
    assert "already at schema version" in fake_cli().run("migrate", db).stdout
    assert fake_cli().json("get", db, "a question")["hit"]


def test_vacuum_reclaims_space_after_deletes(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    rows = [{"query": f"question {i} " * 20, "response": "x" * 2000} for i in range(300)]
    fake_cli().run("-q", "warm", db, write_jsonl(tmp_path / "big.jsonl", rows))
    fake_cli().run("rm", db, "--all", "--yes")
    before = db.stat().st_size
    result = fake_cli().run("vacuum", db)
    assert db.stat().st_size < before / 2
    assert "reclaimed" in result.stdout and "->" in result.stdout
    assert fake_cli().json("doctor", db)["ok"]


def test_shell_print_and_missing_shell(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite_vec

    printed = fake_cli().run("shell", db, "--print").stdout.strip()
    assert printed.endswith(f" {db}") and ".load" in printed
    assert str(sqlite_vec.loadable_path()) in printed
    monkeypatch.setattr(shutil, "which", lambda name: None)
    result = fake_cli().run("shell", db, expect=1)
    assert result.stdout.startswith("sqlite3 -cmd")
    assert "no sqlite3 shell found" in result.stderr


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="no sqlite3 shell installed")
def test_shell_runs_sqlite3_with_sqlite_vec_loaded(db: Path) -> None:
    sql = (
        "select count(*) from entries; "
        "select rowid, vec_length(embedding) from entry_vectors_small where rowid = 1;"
    )
    done = subprocess.run(
        [sys.executable, "-m", "semcache_sqlite", "shell", str(db), sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["5", "1|64"]


def test_doctor_warns_of_calibrations_of_another_model(db: Path) -> None:
    with SemanticCache(db, embedder=FakeEmbedder()) as cache:
        cache.set_calibration(Calibration(0.3, namespace="dev"))
        cache.reembed(FakeEmbedder(model_id="model-b"))
    report = Cli(FakeEmbedder(model_id="model-b")).json("doctor", db)
    assert report["ok"] is True  # a warning: lookups work, with another threshold
    [check] = [c for c in report["checks"] if c["name"] == "calibrations"]
    assert check["status"] == "warn"
    assert check["detail"].startswith("namespace 'dev' (fake-bow-64): measured with another")
