"""Crash safety: a short version of benchmarks/crash.py, and checks of its checker."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeEmbedder

from semcache_sqlite import SemanticCache, vector_cells
from semcache_sqlite.db import Database
from semcache_sqlite.migrate import latest_version
from semcache_sqlite.vector_index import quantize

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import crash
from reliability import HashEmbedder, check_file


def test_sigkill_while_writing_loses_nothing_committed(tmp_path: Path) -> None:
    report = crash.run(tmp_path, kills=6, scenarios=("writes",), seed=3, max_lines=120)
    assert report.ok, report.summary()
    writes = report.scenarios[0]
    assert writes.kills == 6 and writes.verified > 0


def test_sigkill_during_a_slow_migration_leaves_old_or_new_version(tmp_path: Path) -> None:
    report = crash.run(tmp_path, kills=3, scenarios=("migration",), seed=5, migration_rows=60_000)
    assert report.ok, report.summary()
    outcomes = report.scenarios[0].outcomes
    assert sum(outcomes.values()) == 4  # the calibration run + 3 kills
    assert not any("between" in name for name in outcomes)


def test_writes_checker_catches_lost_half_and_phantom_writes() -> None:
    """The checker must be able to fail: feed it file contents that contradict the reports."""
    model = crash._WritesModel()
    pending = model.apply(["s 1", "S 1 10", "s 2", "S 2 11", "b 3"])
    assert pending == {"kind": "b", "args": ["3"]}
    rows = {
        10: (crash.query_text(1), crash.answer_text(1, 1)),
        20: (crash.query_text(3), crash.answer_text(3, 1)),  # 1 of a batch of 8: half there
        30: ("nobody stored this", "x"),
    }
    problems = model.resolve(pending, rows) + model.compare(rows)
    text = "\n".join(problems)
    assert "half there" in text
    assert "lost: entry 11" in text
    assert "nobody committed" in text


def test_migration_checker_catches_a_half_migrated_file(tmp_path: Path) -> None:
    path = tmp_path / "half.db"
    with SemanticCache(path, embedder=FakeEmbedder()) as cache:
        cache.store("alpha", None, "a")
    old = latest_version()
    assert crash._migration_state(str(path), old, 10)[0] == "old"
    db = Database(path)
    with db.transaction() as conn:  # the table without the version bump: "in between"
        conn.execute("CREATE TABLE crash_test_payload (id INTEGER PRIMARY KEY)")
    db.close()
    state, problems = crash._migration_state(str(path), old, 10)
    assert state == "between" and problems


SMALL = crash.BulkSizes(entries=300, rows=300, batch=8, delay=0.002)


def test_sigkill_during_reembed_leaves_old_or_new_model_and_resumes(tmp_path: Path) -> None:
    report = crash.run(tmp_path, kills=3, scenarios=("reembed",), seed=11, bulk=SMALL)
    assert report.ok, report.summary()
    outcomes = report.scenarios[0].outcomes
    assert sum(outcomes.values()) == 4  # the calibration run + 3 kills
    assert report.scenarios[0].verified > 0  # progress reports checked against staged vectors


def test_sigkill_during_import_leaves_all_or_nothing(tmp_path: Path) -> None:
    report = crash.run(tmp_path, kills=3, scenarios=("import",), seed=12, bulk=SMALL)
    assert report.ok, report.summary()
    assert sum(report.scenarios[0].outcomes.values()) == 4


def test_sigkill_during_warm_leaves_whole_batches_and_rerun_completes(tmp_path: Path) -> None:
    report = crash.run(tmp_path, kills=3, scenarios=("warm",), seed=13, bulk=SMALL)
    assert report.ok, report.summary()
    assert sum(report.scenarios[0].outcomes.values()) == 4


def test_sigkill_while_a_namespace_gets_its_cells_leaves_every_entry_in_its_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With cells from 400 entries, warming 300 rows into a file of 300 crosses the
    mark mid-way: the kills land around the write that trains the cells and moves
    every entry into one. After each, check_file finds every index row in the cell
    of its nearest centroid (or the namespace still without cells, under 400)."""
    monkeypatch.setenv(crash.CELLS_AT_VARIABLE, "400")
    monkeypatch.setattr(vector_cells, "CLUSTER_AT", 400)
    monkeypatch.setattr(vector_cells, "CELLS", 4)
    monkeypatch.setattr(vector_cells, "PROBED_CELLS", 2)
    report = crash.run(tmp_path, kills=4, scenarios=("warm", "import"), seed=17, bulk=SMALL)
    assert report.ok, report.summary()


def test_the_cells_checker_finds_a_row_outside_its_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vector_cells, "CLUSTER_AT", 50)
    monkeypatch.setattr(vector_cells, "CELLS", 4)
    path = tmp_path / "c.db"
    vectors = np.random.default_rng(4).standard_normal((60, 16)).astype(np.float32)
    with SemanticCache(path, embedder=FakeEmbedder(dim=16)) as cache:
        ids = cache.store_many([f"q{i}" for i in range(60)], ["a"] * 60, embeddings=vectors)
    assert check_file(path).ok
    database = Database(path)
    try:
        with database.transaction() as conn:
            cell = conn.execute(
                "SELECT cell FROM entry_vectors WHERE rowid = ?", (ids[0],)
            ).fetchone()[0]
            conn.execute("DELETE FROM entry_vectors WHERE rowid = ?", (ids[0],))
            conn.execute(
                "INSERT INTO entry_vectors (rowid, namespace, cell, embedding, context, owner, "
                "expires_at) VALUES (?, 'default', ?, vec_bit(?), 0, 0, 1e18)",
                (ids[0], (cell + 1) % 4, quantize(vectors[0])[0]),
            )
    finally:
        database.close()
    found = check_file(path)
    assert found.misplaced_cells == 1 and not found.ok
    assert "1 index rows or namespaces not in their cells" in found.problems()


def test_the_cells_checker_finds_a_namespace_split_between_the_vec0_tables(
    tmp_path: Path,
) -> None:
    """A namespace's index rows are all in the large table or all in the small one."""
    path = tmp_path / "c.db"
    vectors = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    with SemanticCache(path, embedder=FakeEmbedder(dim=16)) as cache:
        ids = cache.store_many(["q0", "q1", "q2"], ["a"] * 3, embeddings=vectors)
    assert check_file(path).ok
    database = Database(path)
    try:
        with database.transaction() as conn:  # one row moved to the large table by hand
            conn.execute("DELETE FROM entry_vectors_small WHERE rowid = ?", (ids[0],))
            conn.execute(
                "INSERT INTO entry_vectors (rowid, namespace, cell, embedding, context, owner, "
                "expires_at) VALUES (?, 'default', -1, vec_bit(?), 0, 0, 1e18)",
                (ids[0], quantize(vectors[0])[0]),
            )
    finally:
        database.close()
    found = check_file(path)
    assert found.misplaced_cells == 2 and not found.ok  # the two rows left in the small one


def test_bulk_checkers_catch_missing_entries_and_half_imports(tmp_path: Path) -> None:
    """The re-embed and import checks must be able to fail."""
    template = crash._bulk_template(str(tmp_path), 10)
    state, _staged, problems = crash._reembed_state(template, 11)
    assert state == "old"
    assert any("expected 11" in p for p in problems)
    assert any("lookup of entry 10" in p for p in problems)
    file = crash._bulk_file(str(tmp_path), 20)
    with SemanticCache(template, embedder=HashEmbedder(crash.OLD_DIM)) as cache:
        cache.store(crash.bulk_query(0), None, crash.bulk_answer(0), namespace=crash.BULK_NS)
    sizes = crash.BulkSizes(entries=10, rows=20)
    expected = {crash.bulk_query(i): crash.bulk_answer(i) for i in range(20)}
    problems = crash._import_problems(template, sizes, expected, finished=False)
    assert any("neither 10" in p for p in problems), problems
    assert file
