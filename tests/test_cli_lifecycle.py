"""The lifecycle through the CLI on real files: TTLs across export/import, purge,
vacuum and reembed."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from clitools import FAQ, Cli, fake_cli, write_jsonl
from fakes import FakeEmbedder

from semcache_sqlite import SemanticCache, cli_common, cli_maintenance
from semcache_sqlite.db import Database
from semcache_sqlite.embedders import Embedder
from semcache_sqlite.errors import EmbedderError
from semcache_sqlite.vector_index import NEVER_EXPIRES


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    database = Database(db)
    try:
        with database.reading() as conn:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
    finally:
        database.close()


def _expiry(db: Path) -> dict[str, tuple[object, object, object]]:
    """query -> (entries.ttl, entries.expires_at, the index row's expires_at)."""
    rows = _rows(
        db,
        "SELECT e.query, e.ttl, e.expires_at, v.expires_at FROM entries e JOIN ("
        "SELECT rowid, expires_at FROM entry_vectors UNION ALL "
        "SELECT rowid, expires_at FROM entry_vectors_small) v ON v.rowid = e.id",
    )
    return {str(r[0]): (r[1], r[2], r[3]) for r in rows}


def _seed(db: Path, *, ago: float = 0.0) -> None:
    """One entry with a 1 h TTL, one that never expires, both written ``ago`` seconds ago."""
    with SemanticCache(db, embedder=FakeEmbedder(), clock=lambda: time.time() - ago) as cache:
        cache.store("how do i reset my password", response="Settings", ttl=3600)
        cache.store("what are the pricing plans", response="Free, Pro", ttl=None)


# -- export / import ---------------------------------------------------------------------


@pytest.mark.parametrize("with_vectors", [False, True])
def test_export_import_keeps_ttl_and_expiry(tmp_path: Path, with_vectors: bool) -> None:
    src, dst, dump = tmp_path / "src.db", tmp_path / "dst.db", tmp_path / "dump.jsonl"
    _seed(src)
    extra = ["--with-vectors"] if with_vectors else []
    fake_cli().run("export", src, "-o", dump, *extra)
    result = fake_cli().run("import", dst, dump)
    assert "imported 2 entries" in result.stdout and "expired" not in result.stdout
    before, after = _expiry(src), _expiry(dst)
    assert after == before
    ttl, expires_at, vec_expires_at = after["how do i reset my password"]
    assert ttl == 3600.0 and isinstance(expires_at, float) and vec_expires_at == expires_at
    assert after["what are the pricing plans"] == (None, None, NEVER_EXPIRES)
    shown = {e["query"]: e for e in fake_cli().json("ls", dst)["entries"]}
    assert shown["how do i reset my password"]["expires_at"] == expires_at
    assert shown["what are the pricing plans"]["expires_at"] is None


def test_import_leaves_out_entries_expired_at_export_time(tmp_path: Path) -> None:
    src, dst, dump = tmp_path / "src.db", tmp_path / "dst.db", tmp_path / "dump.jsonl"
    _seed(src, ago=7200)  # the 1 h TTL ran out an hour ago; nothing purged it yet
    fake_cli().run("export", src, "-o", dump)
    assert "how do i reset my password" in dump.read_text(encoding="utf-8")
    result = fake_cli().run("import", dst, dump, "--reembed")
    assert "imported 1 entry" in result.stdout
    assert "1 expired (not imported)" in result.stdout
    assert "(1 embedded with" in result.stdout  # the expired one was not
    assert list(_expiry(dst)) == ["what are the pricing plans"]


def test_import_rejects_a_bad_ttl(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**FAQ[0], "ttl": -5}])
    result = fake_cli().run("import", tmp_path / "c.db", bad, expect=2)
    assert "ttl must be a positive" in result.stderr


def test_warm_and_put_store_again_what_expired(tmp_path: Path) -> None:
    """An expired copy counts as absent, as in the library's store(): re-warming (or a put
    of the same answer) makes the answer servable again instead of reporting it unchanged."""
    db, faq = tmp_path / "c.db", write_jsonl(tmp_path / "faq.jsonl", FAQ[:2])
    with SemanticCache(db, embedder=FakeEmbedder(), clock=lambda: time.time() - 7200) as cache:
        for row in FAQ[:3]:  # stored 2 h ago with a 1 h TTL: expired, not purged yet
            cache.store(row["query"], response=row["response"], ttl=3600)
    cli = fake_cli()
    assert cli.run("get", db, FAQ[0]["query"], expect=3)
    assert "2 added, 0 updated, 0 unchanged" in cli.run("warm", db, faq).stdout
    assert "0 added, 0 updated, 2 unchanged" in cli.run("warm", db, faq).stdout
    assert cli.run("put", db, FAQ[2]["query"], FAQ[2]["response"]).stdout.startswith("added")
    for row in FAQ[:3]:
        assert cli.json("get", db, row["query"])["entry"]["response"] == row["response"]
    assert cli.json("ls", db)["total"] == 3  # the expired copies were replaced, not kept
    assert cli.json("doctor", db)["ok"]


# -- purge / vacuum -------------------------------------------------------------------------


def test_purge_dry_run_then_purge(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    _seed(db, ago=7200)
    with SemanticCache(db, embedder=FakeEmbedder(), clock=lambda: time.time() - 7200) as cache:
        cache.store("expired elsewhere", response="x", namespace="dev", ttl=60)
    cli = fake_cli()
    dry = cli.run("purge", db, "--dry-run")
    assert "2 entries expired (dry run: nothing deleted)" in dry.stdout
    assert cli.json("purge", db, "--dry-run", "--namespace", "dev")["expired"] == 1
    assert len(_expiry(db)) == 3
    assert "purged 1 entry expired in namespace 'dev'" in cli.run("purge", db, "-n", "dev").stdout
    assert cli.json("purge", db) == {
        "path": str(db),
        "namespace": None,
        "dry_run": False,
        "expired": 1,
    }
    assert list(_expiry(db)) == ["what are the pricing plans"]
    assert "purged 0 entries expired" in cli.run("purge", db).stdout
    assert "namespace" in cli.run("purge", db, "-n", "", expect=2).stderr


def test_vacuum_purges_repacks_and_needs_no_embedder(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    fake_cli().run("warm", db, write_jsonl(tmp_path / "faq.jsonl", FAQ))
    _seed(db, ago=7200)  # replaces two of them; one has expired since
    embedder = FakeEmbedder()
    report = Cli(embedder).json("vacuum", db)
    assert embedder.calls == 0
    assert report["expired_purged"] == 1
    assert report["vectors_rebuilt"] == len(_expiry(db)) == 4
    assert report["bytes_after"] <= report["bytes_before"]
    text = fake_cli().run("vacuum", db).stdout
    assert "reclaimed; 0 entries expired purged, 4 vectors repacked" in text
    assert fake_cli().json("doctor", db)["ok"] is True
    assert fake_cli().json("get", db, FAQ[1]["query"])["hit"] is True


def test_vacuum_says_when_a_reader_keeps_the_wal(tmp_path: Path) -> None:
    """`semcache vacuum` beside a process in a read transaction: the sizes cannot show
    the space reclaimed yet (the compacted file sits in the -wal file), so it says why."""
    db = tmp_path / "c.db"
    fake_cli().run("warm", db, write_jsonl(tmp_path / "faq.jsonl", FAQ))
    reader = Database(db)
    try:
        conn = reader.connection()
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM entries").fetchone()
        report = fake_cli().json("vacuum", db)
        text = fake_cli().run("vacuum", db).stdout
        conn.execute("ROLLBACK")
    finally:
        reader.close()
    assert report["wal_truncated"] is False
    assert "another process is using the file" in text
    assert fake_cli().json("vacuum", db)["wal_truncated"] is True
    assert "another process" not in fake_cli().run("vacuum", db).stdout
    assert fake_cli().json("get", db, FAQ[1]["query"])["hit"] is True


# -- reembed --------------------------------------------------------------------------------


class FlakyEmbedder(FakeEmbedder):
    """Fails on the ``fail_on``-th embed() call."""

    def __init__(self, fail_on: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.fail_on = fail_on

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if self.calls + 1 == self.fail_on:
            self.calls += 1
            raise EmbedderError("the embedding server went away")
        return super().embed(texts)


def _target(monkeypatch: pytest.MonkeyPatch, embedder: Embedder) -> list[tuple[object, ...]]:
    asked: list[tuple[object, ...]] = []

    def make(name: str, model: str | None, dim: int | None, base_url: str | None) -> Embedder:
        asked.append((name, model, dim, base_url))
        return embedder

    monkeypatch.setattr(cli_maintenance, "target_embedder", make)
    return asked


def test_reembed_converts_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "c.db"
    fake_cli().run("warm", db, write_jsonl(tmp_path / "faq.jsonl", FAQ))
    new = FakeEmbedder(dim=32, model_id="fake-new")
    asked = _target(monkeypatch, new)
    result = Cli(FakeEmbedder()).run(
        "reembed",
        db,
        "--to-embedder",
        "openai",
        "--embedding-model",
        "fake-new",
        "--base-url",
        "http://localhost:1",
    )
    assert asked == [("openai", "fake-new", None, "http://localhost:1")]
    assert "re-embedded 5 entries: fake-bow-64 (64-d) -> fake-new (32-d)" in result.stdout
    assert Cli(new).json("stats", db)["embedding_model"] == "fake-new"
    assert Cli(new).json("get", db, FAQ[0]["query"])["hit"] is True
    assert Cli(FakeEmbedder()).run("get", db, FAQ[0]["query"], expect=6)
    again = Cli(new).run("reembed", db, "--to-embedder", "openai")
    assert "already uses fake-new (32-d); nothing to do" in again.stdout


def test_reembed_resumes_after_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "c.db"
    fake_cli().run("warm", db, write_jsonl(tmp_path / "faq.jsonl", FAQ))
    flaky = FlakyEmbedder(fail_on=3, dim=32, model_id="fake-new")
    _target(monkeypatch, flaky)
    argv = ["reembed", db, "--to-embedder", "openai", "--batch-size", "2"]
    failed = fake_cli().run(*argv, expect=1)
    assert "the embedding server went away" in failed.stderr
    assert fake_cli().json("stats", db)["embedding_model"] == "fake-bow-64"  # still usable
    texts_before = len(flaky.texts)
    resumed = fake_cli().run(*argv)
    assert "resuming: 4 of 5 entries already re-embedded" in resumed.stderr
    assert "re-embedded 5 entries" in resumed.stdout
    assert len(flaky.texts) - texts_before == 1  # only the entry not staged yet


def test_reembed_progress_bar_only_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "c.db"
    fake_cli().run("warm", db, write_jsonl(tmp_path / "faq.jsonl", FAQ))
    _target(monkeypatch, FakeEmbedder(dim=32, model_id="fake-new"))
    plain = fake_cli().run("reembed", db, "--to-embedder", "openai")
    assert "re-embedding" not in plain.stderr
    monkeypatch.setattr(cli_common, "_stderr_is_tty", lambda: True)
    _target(monkeypatch, FakeEmbedder(dim=16, model_id="fake-newer"))
    shown = fake_cli().run("reembed", db, "--to-embedder", "openai")
    assert "re-embedding with fake-newer" in shown.stderr
    _target(monkeypatch, FakeEmbedder(dim=8, model_id="fake-newest"))
    quiet = fake_cli().run("-q", "reembed", db, "--to-embedder", "openai")
    assert quiet.stderr == "" and "re-embedded 5 entries" in quiet.stdout


def test_reembed_usage_errors(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    fake_cli().run("warm", db, write_jsonl(tmp_path / "faq.jsonl", FAQ))
    assert (
        "only for --to-embedder openai"
        in fake_cli()
        .run("reembed", db, "--to-embedder", "local", "--embedding-model", "x", expect=2)
        .stderr
    )
    assert "--to-embedder" in fake_cli().run("reembed", db, expect=2).stderr


# -- config / stats / ls / show ---------------------------------------------------------------


def test_config_sets_shows_and_resets_namespace_overrides(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    cli = fake_cli()
    cli.run("warm", db, write_jsonl(tmp_path / "faq.jsonl", FAQ))
    assert cli.json("config", db)["namespaces"]["default"] == {
        "ttl": None,
        "sliding_ttl": False,
        "max_entries": None,
        "eviction": "lru",
        "on_duplicate": "replace",
        "overrides": {},
    }
    changed = cli.json(
        "config", db, "-n", "default", "--ttl", "1h", "--max-entries", "2", "--eviction", "fifo"
    )
    assert changed["evicted"] == 3  # 4 entries, limit 2: evicted at once, down to 95 % (1)
    policy = changed["namespaces"]["default"]
    assert (policy["ttl"], policy["max_entries"], policy["eviction"]) == (3600.0, 2, "fifo")
    assert policy["overrides"] == {"eviction": "fifo", "max_entries": 2, "ttl": 3600.0}
    with SemanticCache(db, embedder=FakeEmbedder()) as cache:  # the library sees them
        assert cache.namespace_policy("default").max_entries == 2
        entry = cache.store("a new question", response="a", namespace="default")
        assert cache.get(entry).expires_at is not None
    text = cli.run("config", db).stdout
    assert "default: ttl 1h, max 2 (fifo)  [overrides: eviction=fifo, max_entries=2" in text
    assert "dev: ttl never, max none (lru)  [overrides: none]" in text
    stats = cli.json("stats", db)["namespaces"]
    assert stats["default"]["policy"]["max_entries"] == 2
    assert "ttl 1h, max 2 (fifo)" in cli.run("stats", db).stdout
    cli.run("config", db, "-n", "default", "--ttl", "none")
    assert cli.json("config", db, "-n", "default")["namespaces"]["default"]["ttl"] is None
    reset = cli.run("config", db, "-n", "default", "--reset").stdout
    assert "default: ttl never, max none (lru)  [overrides: none]" in reset
    assert "--namespace is needed" in cli.run("config", db, "--ttl", "1h", expect=2).stderr
    assert (
        "--max-entries" in cli.run("config", db, "-n", "x", "--max-entries", "0", expect=2).stderr
    )
    assert "--ttl" in cli.run("config", db, "-n", "x", "--ttl", "soon", expect=2).stderr


def test_ls_and_show_show_expiry(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    _seed(db)
    cli = fake_cli()
    listed = cli.run("ls", db).stdout
    assert "expires (UTC)" in listed and "never" in listed
    rows = {e["query"]: e for e in cli.json("ls", db)["entries"]}
    ttl_id = rows["how do i reset my password"]["id"]
    forever_id = rows["what are the pricing plans"]["id"]
    assert (
        cli.json("show", db, ttl_id)["expires_at"]
        == rows["how do i reset my password"]["expires_at"]
    )
    shown = cli.run("show", db, forever_id).stdout
    assert re.search(r"^expires_at\s+never\s*$", shown, re.MULTILINE), shown


def test_lifecycle_commands_on_a_first_schema_file(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "schema_v1.db", db)
    cli = Cli(FakeEmbedder(dim=8, model_id="fake-bow-8"))
    assert cli.json("stats", db)["namespaces"]["shop"]["policy"] is None  # read-only: no upgrade
    assert cli.json("config", db)["namespaces"] == {"default": None, "shop": None}
    assert cli.json("purge", db, "--dry-run")["expired"] == 0
    cli.run("export", db, "-o", tmp_path / "v1.jsonl")  # read-only: no ttl column yet
    assert '"ttl": null' in (tmp_path / "v1.jsonl").read_text(encoding="utf-8")
    assert cli.json("vacuum", db)["vectors_rebuilt"] == 6  # upgrades, then repacks
    assert cli.json("doctor", db)["ok"] is True
    assert cli.json("config", db, "-n", "shop", "--ttl", "1d")["namespaces"]["shop"]["ttl"] == 86400
