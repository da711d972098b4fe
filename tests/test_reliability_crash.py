"""Crash safety: a short version of benchmarks/crash.py, and checks of its checker."""

from __future__ import annotations

import sys
from pathlib import Path

from fakes import FakeEmbedder

from semcache_sqlite import SemanticCache
from semcache_sqlite.db import Database
from semcache_sqlite.migrate import latest_version

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import crash


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
