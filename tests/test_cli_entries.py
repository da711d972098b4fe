"""stats, ls, show, search, get, put, update, rm through the CLI runner on real files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from clitools import FAQ, fake_cli, write_jsonl
from fakes import FakeEmbedder

from semcache_sqlite import SemanticCache
from semcache_sqlite.db import Database


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "c.db"
    fake_cli().run("warm", path, write_jsonl(tmp_path / "faq.jsonl", FAQ))
    return path


def test_stats_time_saved_matches_the_library(db: Path) -> None:
    """Time saved comes from the persisted latency sums, as the library's stats() says."""
    calls: list[str] = []

    def slow_llm(prompt: str) -> str:
        sum(i * i for i in range(200_000))  # a measurable LLM latency, by real work
        calls.append(prompt)
        return f"answer to {prompt}"

    with SemanticCache(db, embedder=FakeEmbedder(), llm=slow_llm) as cache:
        cache.get_or_compute("a question nobody asked yet", namespace="ops")  # miss: LLM
        cache.get_or_compute("a question nobody asked yet", namespace="ops")  # hit
        expected = cache.stats("ops")["seconds_saved"]
    assert len(calls) == 1 and expected > 0
    stats = fake_cli().json("stats", db)
    assert stats["namespaces"]["ops"]["time_saved_seconds"] == pytest.approx(expected)
    assert stats["namespaces"]["default"]["time_saved_seconds"] is None  # no LLM timed
    assert stats["time_saved_seconds"] == pytest.approx(expected)


def test_stats_overall_and_per_namespace(db: Path) -> None:
    with SemanticCache(db, embedder=FakeEmbedder()) as cache:
        cache.lookup("how do i reset my password")  # hit
        cache.lookup("something never asked before")  # miss
        cache.lookup("where is the api documentation", namespace="dev")  # hit
    stats = fake_cli().json("stats", db)
    assert (stats["entries"], stats["hits"], stats["misses"]) == (5, 2, 1)
    assert stats["hit_rate"] == pytest.approx(2 / 3)
    assert stats["namespaces"]["dev"] == {
        "entries": 1,
        "hits": 1,
        "misses": 0,
        "total_requests": 1,
        "hit_rate": 1.0,
        "time_saved_seconds": None,
        "policy": {
            "ttl": None,
            "sliding_ttl": False,
            "max_entries": None,
            "eviction": "lru",
            "on_duplicate": "replace",
            "overrides": {},
        },
    }
    assert stats["time_saved_seconds"] is None
    assert (stats["embedding_model"], stats["embedding_dim"]) == ("fake-bow-64", 64)
    assert stats["schema_version"] >= 1 and stats["file_size"] > 0
    table = fake_cli().run("stats", db).stdout
    assert "n/a" in table and "fake-bow-64" in table and "66.7%" in table


def test_ls_filters_sorting_and_paging(db: Path) -> None:
    cli = fake_cli()
    everything = cli.json("ls", db)
    assert everything["total"] == 5
    assert [e["id"] for e in everything["entries"]] == [5, 4, 3, 2, 1]  # newest first
    assert [e["id"] for e in cli.json("ls", db, "--sort", "oldest")["entries"]] == [1, 2, 3, 4, 5]
    assert [e["namespace"] for e in cli.json("ls", db, "-n", "dev")["entries"]] == ["dev"]
    assert [e["query"] for e in cli.json("ls", db, "--user", "alice")["entries"]] == [
        "how do i rotate api keys"
    ]
    assert cli.json("ls", db, "--user", "")["total"] == 4  # shared entries
    matched = cli.json("ls", db, "--match", "SETTINGS > account")  # case-insensitive, response too
    assert sorted(e["id"] for e in matched["entries"]) == [1, 3]
    page = cli.json("ls", db, "--sort", "oldest", "--limit", "2", "--offset", "2")
    assert page["total"] == 5 and [e["id"] for e in page["entries"]] == [3, 4]
    with SemanticCache(db, embedder=FakeEmbedder()) as cache:
        for _ in range(3):
            cache.lookup("what are the pricing plans")
    assert cli.json("ls", db, "--sort", "most-hit")["entries"][0]["id"] == 2
    table = cli.run("ls", db, "--limit", "2").stdout
    assert "next page: --offset 2" in table and "entries 1-2 of 5" in table
    assert "next page" not in cli.run("ls", db, "--limit", "0").stdout  # not itself again


def test_ls_match_is_unicode_case_insensitive_and_literal(tmp_path: Path) -> None:
    db = tmp_path / "u.db"
    cli = fake_cli()
    cli.run("put", db, "STRASSE in Köln", "ok")
    cli.run("put", db, "100% sure_thing", "ok")
    assert cli.json("ls", db, "--match", "straße in köln")["total"] == 1  # casefold: ß = ss
    assert cli.json("ls", db, "--match", "strasse in KÖLN")["total"] == 1
    assert cli.json("ls", db, "--match", "%")["total"] == 1  # no LIKE wildcards
    assert cli.json("ls", db, "--match", "_")["total"] == 1


def test_show_entry_and_unknown_id(db: Path) -> None:
    cli = fake_cli()
    entry = cli.json("show", db, 5)
    assert entry["user_id"] == "alice" and entry["has_vector"] is True
    assert entry["response"] == "Console > Keys" and entry["version"] == 1
    text = cli.run("show", db, 5).stdout
    assert "how do i rotate api keys" in text and "alice" in text
    missing = cli.run("show", db, 999, expect=3)
    assert missing.stderr.strip() == "Error: no cache entry with id 999"


def test_search_marks_hits_and_respects_scope(db: Path) -> None:
    cli = fake_cli()
    found = cli.json("search", db, "how do i reset my password please", "-k", "3")
    assert len(found["results"]) == 3 and found["threshold"] == 0.8
    first, second = found["results"][:2]
    assert first["query"] == "how do i reset my password" and first["would_hit"] is True
    assert second["would_hit"] is False
    strict = cli.json("search", db, "how do i reset my password please", "--threshold", "0.99")
    assert not any(r["would_hit"] for r in strict["results"])
    # alice's own entry is visible to alice only; dev's only in dev
    assert "how do i rotate api keys" not in [r["query"] for r in strict["results"]]
    alice = cli.json("search", db, "rotate api keys", "--user", "alice", "-k", "1")
    assert alice["results"][0]["query"] == "how do i rotate api keys"
    assert cli.json("search", db, "api documentation", "-n", "dev")["results"][0]["id"] == 4
    assert cli.json("search", db, "anything", "-n", "nobody")["results"] == []
    table = cli.run("search", db, "how do i reset my password please").stdout
    assert "* = the entry lookup() would serve" in table and "guards on" in table
    assert found["results"][0]["score"] is not None and found["results"][1]["score"] is None


def test_get_hit_miss_exit_codes_and_no_counting(db: Path) -> None:
    cli = fake_cli()
    hit = cli.run("get", db, "how do i reset my password now")
    assert hit.stdout == "Settings > Account > Reset\n"
    exact = cli.json("get", db, "How do I  RESET my password")
    assert exact["hit"] and exact["exact"] and exact["entry"]["id"] == 1
    miss = cli.run("get", db, "completely unrelated words", expect=3)
    assert miss.stdout == "" and "miss" in miss.stderr
    assert cli.run("-q", "get", db, "completely unrelated words", expect=3).stderr == ""
    assert cli.json("get", db, "how do i reset my password now", "-t", "1.0", expect=3)["closest"]
    assert cli.run("get", db, "rotate api keys", expect=3)  # alice's entry, asked without user
    assert (
        cli.run("get", db, "how do i rotate api keys", "-u", "alice").stdout == "Console > Keys\n"
    )
    assert cli.json("stats", db)["total_requests"] == 0  # get is a peek, not a lookup


def test_put_adds_replaces_and_reads_stdin(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    cli = fake_cli()
    assert cli.run("put", db, "what is the sla", "99.9%").stdout == "added entry 1 (version 1)\n"
    assert cli.run("put", db, "What is the SLA", "99.95%").stdout == "updated entry 1 (version 2)\n"
    assert cli.json("put", db, "what is the sla", "99.95%") == {
        "id": 1,
        "status": "unchanged",
        "version": 2,
    }
    cli.run("put", db, "what is the sla", "-", "-u", "bob", input="piped answer\n")
    assert (
        cli.json("get", db, "what is the sla", "-u", "bob")["entry"]["response"] == "piped answer"
    )
    cli.run("put", db, "tagged", "x", "--metadata", '{"source": "manual"}', "-n", "ops")
    assert cli.json("show", db, 3)["metadata"] == {"source": "manual"}
    assert cli.json("ls", db)["total"] == 3
    for empty in ("", "  "):
        refused = cli.run("put", db, "an empty answer", empty, expect=2)
        assert "response is empty or whitespace only" in refused.stderr
    cli.run("put", db, "an empty answer", "-", input="\n", expect=2)
    assert cli.json("ls", db)["total"] == 3


def test_update_response_metadata_and_version_check(db: Path) -> None:
    cli = fake_cli()
    assert (
        cli.run("update", db, 1, "--response", "New path").stdout == "updated entry 1 (version 2)\n"
    )
    cli.run("update", db, 1, "--metadata", '{"reviewed": true}', "--if-version", "2")
    entry = cli.json("show", db, 1)
    assert (entry["response"], entry["metadata"], entry["version"]) == (
        "New path",
        {"reviewed": True},
        3,
    )
    conflict = cli.run("update", db, 1, "--response", "x", "--if-version", "1", expect=1)
    assert "version 3, expected 1" in conflict.stderr
    cli.run("update", db, 1, "--response", "-", input="from stdin\n")
    assert cli.json("get", db, "how do i reset my password")["entry"]["response"] == "from stdin"
    assert cli.run("update", db, 999, "--response", "x", expect=3)
    assert cli.run("update", db, 1, expect=2)
    refused = cli.run("update", db, 1, "--response", "", expect=2)
    assert "response is empty or whitespace only" in refused.stderr
    assert cli.json("show", db, 1)["response"] == "from stdin"


def test_rm_by_ids_and_unknown_id(db: Path) -> None:
    cli = fake_cli()
    assert cli.run("rm", db, 1, 2).stdout == "deleted 2 entries\n"
    result = cli.run("rm", db, 3, 99, expect=3)
    assert result.stdout == "deleted 1 entry\n" and "no cache entry with id 99" in result.stderr
    assert [e["id"] for e in cli.json("ls", db)["entries"]] == [5, 4]
    assert cli.json("doctor", db)["ok"]  # vectors went with their entries


BEYOND_INT64 = str(2**63)  # SQLite's INTEGER is 64-bit: the driver would overflow


@pytest.mark.parametrize(
    "args",
    [
        ("show", BEYOND_INT64),
        ("rm", BEYOND_INT64, "--yes"),
        ("rm", "--yes", "--", "1", f"-{2**63 + 1}"),
        ("update", BEYOND_INT64, "--response", "x"),
        ("update", "1", "--response", "x", "--if-version", BEYOND_INT64),
        ("ls", "--limit", BEYOND_INT64),
        ("ls", "--offset", BEYOND_INT64),
    ],
)
def test_numbers_beyond_int64_are_usage_errors(db: Path, args: tuple[str, ...]) -> None:
    cli = fake_cli()
    before = cli.json("ls", db)
    result = cli.run(args[0], db, *args[1:], expect=2)  # Cli.run fails on a traceback
    assert "is not in the range" in result.stderr
    assert cli.json("ls", db) == before


def test_put_and_update_refuse_metadata_json_cannot_hold(db: Path) -> None:
    cli = fake_cli()
    before = cli.json("ls", db)
    for value in ("NaN", "Infinity", "-Infinity"):
        bad = f'{{"score": {value}}}'
        put = cli.run("put", db, "a new question", "r", "--metadata", bad, expect=2)
        assert "metadata cannot be stored as JSON" in put.stderr
        update = cli.run("update", db, 1, "--metadata", bad, expect=2)
        assert "metadata cannot be stored as JSON" in update.stderr
    assert cli.json("ls", db) == before


def test_rm_bulk_confirmation_dry_run_and_filters(db: Path) -> None:
    cli = fake_cli()
    assert cli.run("rm", db, "--user", "", "--dry-run").stdout == (
        "would delete 4 entries (shared (no user))\n"
    )
    declined = cli.run("rm", db, "--namespace", "default", input="n\n", expect=1)
    assert "Delete 4 entries" in declined.stderr and cli.json("ls", db)["total"] == 5
    cli.run("rm", db, "--namespace", "default", "--user", "alice", input="y\n")
    assert cli.json("ls", db)["total"] == 4
    assert cli.run("rm", db, "--namespace", "nope", "--yes").stdout.startswith("nothing to delete")
    assert cli.run("rm", db, "--all", "--yes").stdout == "deleted 4 entries\n"
    assert cli.json("stats", db)["entries"] == 0
    assert cli.run("rm", db, 1, "--all", expect=2)


def test_rm_older_than(db: Path) -> None:
    database = Database(db)
    try:
        with database.transaction() as conn:  # age two entries by 10 days
            conn.execute(
                "UPDATE entries SET updated_at = ? WHERE id IN (1, 2)", (time.time() - 864000,)
            )
    finally:
        database.close()
    cli = fake_cli()
    assert cli.run("rm", db, "--older-than", "11d", "--dry-run").stdout.startswith("would delete 0")
    assert cli.run("rm", db, "--older-than", "1w", "--dry-run").stdout.startswith("would delete 2")
    assert cli.run("rm", db, "--older-than", "216h", "-y").stdout.startswith("deleted 2 entries")
    assert cli.run("rm", db, "--older-than", "3600", "-y").stdout.startswith("nothing to delete")
    assert cli.json("ls", db)["total"] == 3


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 604800), ("12h", 43200), ("30m", 1800), ("45s", 45), ("90", 90), ("1h30m", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    from semcache_sqlite.cli_common import parse_duration

    assert parse_duration(text) == seconds
