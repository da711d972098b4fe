"""`semcache demo` end to end, as a user runs it: offline, then with an OpenAI-compatible LLM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from clitools import Cli
from fakes import FakeEmbedder
from openai_server import OpenAIServer

from semcache_sqlite import SemanticCache
from semcache_sqlite.demo import DEMO_QUERIES


def _demo(db: Path, env_extra: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(env_extra)
    done = subprocess.run(
        [sys.executable, "-m", "semcache_sqlite", "demo", "--db", str(db)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_demo_errors_exit_with_the_documented_codes(tmp_path: Path) -> None:
    cli = Cli()
    bad = cli.run("demo", "--db", tmp_path / "t.db", "--threshold", "2", expect=2)
    assert "threshold" in bad.stderr
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("not a database\n" * 100, encoding="utf-8")
    assert "not a usable SQLite file" in cli.run("demo", "--db", not_sqlite, expect=5).stderr
    other_model = tmp_path / "other-model.db"
    with SemanticCache(other_model, embedder=FakeEmbedder()) as cache:
        cache.store("alpha", None, "a")
    assert "fake-bow-64" in cli.run("demo", "--db", other_model, expect=6).stderr


def test_demo_offline_twice(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    first = _demo(db, {})
    assert "no LLM configured" in first
    lines = [line for line in first.splitlines() if line.startswith(("HIT", "MISS"))]
    assert [line.split()[0] for line in lines] == ["HIT", "MISS", "MISS", "HIT", "MISS"]
    assert "(exact" in lines[3]
    assert "0 entries before this run" in first
    second = _demo(db, {})
    assert "10 entries before this run" in second
    assert "10 requests" in second  # counters persisted across runs
    with SemanticCache(db) as cache:  # the second warm-up kept the FAQ as it was
        assert {cache.get(i).version for i in range(1, 11)} == {1}


def test_demo_with_llm_stores_misses_and_second_run_is_all_hits(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    with OpenAIServer() as server:
        env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "test"}
        first = _demo(db, env)
        assert "LLM answer stored: answer to: What is the capital of France?" in first
        chat_calls = server.state.count("/chat/completions")
        assert chat_calls == 2  # France question + router question; the paraphrase hits
        second = _demo(db, env)
        assert server.state.count("/chat/completions") == chat_calls
    assert [
        line.split()[0] for line in second.splitlines() if line.startswith(("HIT", "MISS"))
    ] == ["HIT"] * len(DEMO_QUERIES)
    with SemanticCache(db) as cache:
        assert cache.stats()["cached_entries"] == 12
