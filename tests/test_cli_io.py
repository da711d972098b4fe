"""warm, export and import through the CLI runner on real files."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from clitools import FAQ, Cli, fake_cli, write_jsonl
from fakes import FakeEmbedder

from semcache_sqlite import EmbedderError, EmbedderMismatchError, SemanticCache
from semcache_sqlite.db import Database
from semcache_sqlite.store import Store
from semcache_sqlite.transfer import import_entries, validate_import_file
from semcache_sqlite.validation import query_hash
from semcache_sqlite.warmup import EntryWriter, WarmRow

# -- warm ----------------------------------------------------------------------------------


def test_warm_jsonl_then_rerun_changes_nothing(tmp_path: Path) -> None:
    db, faq = tmp_path / "c.db", write_jsonl(tmp_path / "faq.jsonl", FAQ)
    embedder = FakeEmbedder()
    cli = Cli(embedder)
    first = cli.run("warm", db, faq, "--batch-size", "2")
    assert "5 added, 0 updated, 0 unchanged (5 rows)" in first.stdout
    assert embedder.calls == 3  # one embedding call per batch of 2
    second = cli.run("warm", db, faq)
    assert "0 added, 0 updated, 5 unchanged" in second.stdout
    assert embedder.calls == 3  # nothing re-embedded
    entries = cli.json("ls", db)["entries"]
    assert len(entries) == 5 and all(e["version"] == 1 for e in entries)
    assert {(e["namespace"], e["user_id"]) for e in entries} == {
        ("default", ""),
        ("dev", ""),
        ("default", "alice"),
    }


class _DownEmbedder(FakeEmbedder):
    """Another model than the fake CLI's, whose service is down."""

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        raise EmbedderError("embedding service unreachable")


def test_a_failed_first_write_leaves_a_new_file_to_the_next_embedder(tmp_path: Path) -> None:
    """warm/put on a new file with an embedder that fails bind nothing: the file is not
    left to a model none of its entries were embedded with (a retry exited 6)."""
    faq = write_jsonl(tmp_path / "faq.jsonl", FAQ)
    down = Cli(_DownEmbedder(dim=32, model_id="down-model"))
    for command in (["warm", tmp_path / "w.db", faq], ["put", tmp_path / "p.db", "q", "a"]):
        assert "unreachable" in down.run(*command, expect=1).stderr
        fake_cli().run(*command)  # the default embedder takes the file
    assert fake_cli().json("stats", tmp_path / "w.db")["entries"] == len(FAQ)


@pytest.mark.parametrize("on_duplicate", [None, "keep", "keep_both"])
def test_warm_replaces_changed_responses_instead_of_duplicating(
    tmp_path: Path, on_duplicate: str | None
) -> None:
    """Whatever the namespace's on_duplicate: "keep" made warm and put report "updated"
    while the old answer stayed, "keep_both" added a second entry."""
    db = tmp_path / "c.db"
    cli = fake_cli()
    cli.run("warm", db, write_jsonl(tmp_path / "a.jsonl", FAQ))
    if on_duplicate is not None:
        cli.run("config", db, "--namespace", "default", "--on-duplicate", on_duplicate)
        put = cli.json("put", db, FAQ[1]["query"], "Put answer")
        assert put["status"] == "updated" and cli.json("show", db, 2)["response"] == "Put answer"
    changed = [dict(FAQ[0], response="New answer"), *FAQ[1:]]
    result = cli.run("warm", db, write_jsonl(tmp_path / "b.jsonl", changed))
    assert f"0 added, {1 if on_duplicate is None else 2} updated" in result.stdout
    entry = cli.json("show", db, 1)
    assert (entry["response"], entry["version"]) == ("New answer", 2)
    assert cli.json("stats", db)["entries"] == 5


def test_warm_of_a_file_repeating_a_query_keeps_the_last_row_and_reruns_unchanged(
    tmp_path: Path,
) -> None:
    """A query repeated in the file (same scope) was written once per row: every re-run
    reported it "updated" and bumped its version. Now the last row wins, up front."""
    db = tmp_path / "c.db"
    rows = [
        FAQ[0],
        dict(FAQ[0], query=FAQ[0]["query"].upper(), response="Second answer"),  # same query
        dict(FAQ[0], namespace="other"),  # another scope: not a repeat
        FAQ[1],
    ]
    faq = write_jsonl(tmp_path / "faq.jsonl", rows)
    cli = fake_cli()
    first = cli.run("warm", db, faq, "--batch-size", "1")
    assert "3 added, 0 updated, 0 unchanged (4 rows); 1 repeated" in first.stdout
    again = cli.run("warm", db, faq)
    assert "0 added, 0 updated, 3 unchanged (4 rows); 1 repeated" in again.stdout
    entries = {(e["namespace"], e["query"]): e for e in cli.json("ls", db)["entries"]}
    kept = entries[("default", FAQ[0]["query"].upper())]
    assert (kept["response"], kept["version"]) == ("Second answer", 1)


def test_warm_keeps_metadata_unless_the_row_gives_some(tmp_path: Path) -> None:
    db, faq = tmp_path / "c.db", write_jsonl(tmp_path / "faq.jsonl", FAQ)
    cli = fake_cli()
    cli.run("warm", db, faq)
    cli.run("update", db, 1, "--metadata", '{"reviewed": true}')
    assert "5 unchanged" in cli.run("warm", db, faq).stdout
    assert cli.json("show", db, 1)["metadata"] == {"reviewed": True}
    tagged = [dict(FAQ[0], metadata={"source": "faq"})]
    assert "1 updated" in cli.run("warm", db, write_jsonl(tmp_path / "t.jsonl", tagged)).stdout
    assert cli.json("show", db, 1)["metadata"] == {"source": "faq"}


def test_entry_deleted_by_another_writer_mid_batch_is_reinserted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "c.db"
    fake_cli().run("warm", db, write_jsonl(tmp_path / "faq.jsonl", FAQ))
    database = Database(db)
    try:
        writer = EntryWriter(database, FakeEmbedder())
        stale = writer.admin.existing("default", "", "", [query_hash(FAQ[0]["query"])])
        Store(database).delete(1)  # another process deletes it after we looked
        monkeypatch.setattr(writer.admin, "existing", lambda *args: stale)
        row = WarmRow(1, FAQ[0]["query"], "changed", "default", "", "")
        ids, counts = writer.write_batch([row])
    finally:
        database.close()
    assert counts.updated == 1 and ids[0] is not None and ids[0] != 1
    entry = fake_cli().json("show", db, ids[0])
    assert (entry["response"], entry["version"], entry["has_vector"]) == ("changed", 1, True)
    assert fake_cli().json("doctor", db)["ok"]


def test_warm_csv_with_and_without_header(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    cli = fake_cli()
    with_header = tmp_path / "h.csv"
    with_header.write_text(
        'response,query,user_id\n"Yes, daily",do you back up my data,\n'
        "Console > Keys,how do i rotate keys,alice\n",
        encoding="utf-8",
    )
    assert "2 added" in cli.run("warm", db, with_header).stdout
    positional = tmp_path / "p.data"
    positional.write_text("where are invoices,Billing > Invoices,billing\n", encoding="utf-8")
    assert cli.run("warm", db, positional, expect=2).stderr.count("--format") == 1
    cli.run("warm", db, positional, "--format", "csv")
    entries = {e["query"]: e for e in cli.json("ls", db)["entries"]}
    assert entries["do you back up my data"]["response"] == "Yes, daily"
    assert entries["how do i rotate keys"]["user_id"] == "alice"
    assert entries["where are invoices"]["namespace"] == "billing"
    blank = tmp_path / "blank.csv"  # blank namespace / user_id cells take the options'
    blank.write_text("query,response,namespace,user_id\nhow to cancel?,Billing > Cancel,,\n")
    cli.run("warm", db, blank, "-n", "support", "-u", "dave")
    cancel = next(e for e in cli.json("ls", db)["entries"] if e["query"] == "how to cancel?")
    assert (cancel["namespace"], cancel["user_id"]) == ("support", "dave")


def test_warm_malformed_line_reported_with_line_number_nothing_written(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    rows: list[dict[str, str] | str] = [*FAQ[:3], "", '{"query": "no response here"}', FAQ[3]]
    result = fake_cli().run("warm", db, write_jsonl(tmp_path / "bad.jsonl", rows), expect=2)
    assert "bad.jsonl line 5: missing 'response'" in result.stderr
    assert "nothing was written" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not db.exists()
    empty = write_jsonl(tmp_path / "empty.jsonl", [FAQ[0], '{"query": "q", "response": ""}'])
    result = fake_cli().run("warm", db, empty, expect=2)
    assert "empty.jsonl line 2: response is empty or whitespace only" in result.stderr
    assert not db.exists()
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("query,response\nfine,ok\nonly one column\n", encoding="utf-8")
    assert (
        "bad.csv line 3: expected at least 2 columns"
        in fake_cli().run("warm", db, bad_csv, expect=2).stderr
    )


def test_warm_metadata_json_cannot_hold_is_a_line_error(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    rows: list[dict[str, str] | str] = [
        FAQ[0],
        '{"query": "q", "response": "r", "metadata": {"score": NaN}}',
    ]
    result = fake_cli().run("warm", db, write_jsonl(tmp_path / "nan.jsonl", rows), expect=2)
    assert "nan.jsonl line 2: metadata cannot be stored as JSON" in result.stderr
    assert "nothing was written" in result.stderr and not db.exists()


class _Interrupting(FakeEmbedder):
    """Raises KeyboardInterrupt (Ctrl-C) on the n-th embed call."""

    def __init__(self, on_call: int) -> None:
        super().__init__()
        self.on_call = on_call

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if self.calls + 1 == self.on_call:
            self.calls += 1
            raise KeyboardInterrupt
        return super().embed(texts)


def test_interrupted_warm_keeps_batches_and_can_be_rerun(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    rows = [
        {"query": f"question number {i} about topic {i}", "response": f"a{i}"} for i in range(10)
    ]
    faq = write_jsonl(tmp_path / "many.jsonl", rows)
    result = Cli(_Interrupting(on_call=3)).run("warm", db, faq, "--batch-size", "3", expect=1)
    assert "interrupted after 6 of 10 rows" in result.stderr and "re-run" in result.stderr
    assert fake_cli().json("ls", db)["total"] == 6
    embedder = FakeEmbedder()
    rerun = Cli(embedder).run("warm", db, faq, "--batch-size", "3")
    assert "4 added, 0 updated, 6 unchanged" in rerun.stdout
    assert len(embedder.texts) == 4  # only the missing rows were embedded
    assert fake_cli().json("ls", db)["total"] == 10
    assert fake_cli().json("doctor", db)["ok"]


# -- export / import ----------------------------------------------------------------------


@pytest.fixture
def source(tmp_path: Path) -> Path:
    db = tmp_path / "source.db"
    with SemanticCache(db, embedder=FakeEmbedder()) as cache:
        cache.store_many([r["query"] for r in FAQ[:3]], [r["response"] for r in FAQ[:3]])
        cache.store("where is the api documentation", None, "docs", namespace="dev")
        cache.store("how do i rotate api keys", None, "Keys", user_id="alice", metadata={"t": 1})
        cache.store("ctx question", None, "ctx answer", context={"model": "m1"})
        cache.update(2, response="Free, Pro, Team, Enterprise")
        cache.lookup("how do i reset my password")
        cache.delete(3)  # ids with a gap
    return db


def _entries(db: Path) -> list[dict[str, object]]:
    entries = fake_cli().json("ls", db, "--sort", "oldest")["entries"]
    assert isinstance(entries, list)
    return entries


def _answers(db: Path, queries: list[tuple[str, str, str]]) -> list[object]:
    with SemanticCache(db, embedder=FakeEmbedder()) as cache:
        found = [cache.lookup(q, namespace=ns, user_id=user) for q, ns, user in queries]
    return [None if f is None else (f.entry_id, f.response, round(f.similarity, 5)) for f in found]


QUESTIONS = [
    ("how can i reset my password", "default", ""),
    ("what pricing plans are there", "default", ""),
    ("api documentation location", "dev", ""),
    ("rotate my api keys", "default", "alice"),
    ("rotate my api keys", "default", ""),
    ("how do i delete my account", "default", ""),
]


@pytest.mark.parametrize("vectors", [None, "base64", "list"])
def test_export_import_round_trip_same_entries_and_answers(
    source: Path, tmp_path: Path, vectors: str | None
) -> None:
    dump = tmp_path / "dump.jsonl"
    extra = [] if vectors is None else ["--with-vectors", "--vector-format", vectors]
    embedder = FakeEmbedder()
    Cli(embedder).run("export", source, "-o", dump, *extra)
    header = json.loads(dump.read_text().splitlines()[0])
    assert header["semcache_export"] == 1 and header["embedding_model"] == "fake-bow-64"
    assert header["entries"] == 5 and header["vectors"] == vectors
    target = tmp_path / "target.db"
    result = Cli(embedder).run("import", target, dump)
    assert "5 added, 0 replaced" in result.stdout
    assert embedder.calls == (1 if vectors is None else 0)
    exported = _entries(source)
    assert _entries(target) == exported
    assert _answers(target, QUESTIONS) == _answers(source, QUESTIONS)  # (counts hits)
    again = fake_cli().run("import", target, dump)  # idempotent: replaces, never duplicates
    assert "0 added, 5 replaced" in again.stdout and _entries(target) == exported


def test_export_to_stdout_with_filters(source: Path) -> None:
    lines = fake_cli().run("export", source, "--namespace", "dev").stdout.splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["query"] == "where is the api documentation"
    vector = json.loads(
        fake_cli().run("export", source, "--user", "alice", "--with-vectors").stdout.splitlines()[1]
    )["vector"]
    floats = np.frombuffer(base64.b64decode(vector), dtype="<f4")
    assert floats.shape == (64,) and abs(float(np.linalg.norm(floats)) - 1) < 1e-5


def test_import_malformed_line_reported_and_nothing_imported(source: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    fake_cli().run("export", source, "-o", dump)
    lines = dump.read_text().splitlines()
    lines.insert(3, '{"query": "half a line", "respo')
    lines.insert(5, json.dumps({"query": "ok", "response": "ok", "version": 0}))
    dump.write_text("\n".join(lines) + "\n")
    target = tmp_path / "target.db"
    fake_cli().run("put", target, "already here", "keep me")
    result = fake_cli().run("import", target, dump, expect=2)
    message = result.stderr.strip()
    assert "dump.jsonl line 4: not valid JSON" in message
    assert "1 more problem(s) (line 6)" in message and "nothing was imported" in message
    assert [e["query"] for e in _entries(target)] == ["already here"]
    fresh = tmp_path / "fresh.db"
    fake_cli().run("import", fresh, dump, expect=2)
    assert not fresh.exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"response": "r"}', "missing 'query'"),
        ('{"query": " ", "response": "r"}', "empty or whitespace"),
        ('{"query": "q", "response": "r", "created_at": "yesterday"}', "'created_at' must be"),
        ('{"query": "q", "response": "r", "metadata": [1]}', "'metadata' must be a JSON object"),
        ('{"query": "q", "response": "r", "vector": "%%%"}', "not valid base64"),
        ('{"query": "q", "response": "r", "vector": [0, 0, 0]}', "all zeros"),
        ('{"semcache_export": 1}', "only allowed on the first line"),
        # times that datetime cannot represent would make the entry unreadable afterwards
        ('{"query": "q", "response": "r", "created_at": 1e300}', "'created_at' must be unix"),
        ('{"query": "q", "response": "r", "updated_at": -1e12}', "'updated_at' must be unix"),
        ('{"query": "q", "response": "r", "last_hit_at": 1' + "0" * 400 + "}", "'last_hit_at'"),
        ('{"query": "q", "response": "r", "expires_at": 1e300}', "'expires_at' must be unix"),
        ('{"query": "q", "response": "r", "expires_at": NaN}', "'expires_at' must be unix"),
        ('{"query": "q", "response": "r", "ttl": -1}', "ttl must be a positive, finite"),
        # integers beyond SQLite's 64-bit INTEGER
        ('{"query": "q", "response": "r", "version": 9223372036854775808}', "'version' must"),
        ('{"query": "q", "response": "r", "hit_count": 9223372036854775808}', "'hit_count'"),
        ('{"query": "q", "response": "r", "id": 9223372036854775808}', "'id' must be an int"),
        # metadata JSON cannot hold (json.loads reads NaN and Infinity)
        ('{"query": "q", "response": "r", "metadata": {"x": NaN}}', "metadata cannot be stored"),
        ('{"query": "q", "response": "r", "metadata": {"x": -Infinity}}', "metadata cannot"),
    ],
)
def test_import_validation_messages(tmp_path: Path, line: str, message: str) -> None:
    dump = write_jsonl(tmp_path / "d.jsonl", ['{"query": "fine", "response": "ok"}', line])
    result = fake_cli().run("import", tmp_path / "t.db", dump, expect=2)
    assert "line 2" in result.stderr and message in result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "t.db").exists()


def test_import_restores_what_export_wrote_from_a_file_of_an_earlier_version(
    tmp_path: Path,
) -> None:
    """Earlier versions stored empty responses and ttls reaching past the year 9999; this
    one refuses to write such entries, but a backup holding them must restore whole."""
    old = tmp_path / "old.db"
    fake_cli().run("warm", old, write_jsonl(tmp_path / "faq.jsonl", FAQ))
    db = Database(old)  # what an earlier version could leave: plain SQL suffices
    with db.transaction() as conn:
        conn.execute(
            "UPDATE entries SET response = '', ttl = 3e11 WHERE query = ?", (FAQ[0]["query"],)
        )
    db.close()
    dump = tmp_path / "dump.jsonl"
    fake_cli().run("export", old, "-o", dump)
    restored = tmp_path / "restored.db"
    fake_cli().run("import", restored, dump)
    listing = fake_cli().json("ls", restored, "--limit", 100)
    assert listing["total"] == len(FAQ)
    kept = next(r for r in listing["entries"] if r["query"] == FAQ[0]["query"])
    assert kept["response"] == ""


def test_import_times_at_the_ends_of_the_range_stay_readable(tmp_path: Path) -> None:
    """The documented range (years 1 to 9999) is usable: ls, show, get and lookups work."""
    db = tmp_path / "t.db"
    rows = [
        {"query": "the oldest entry", "response": "old", "created_at": -62135596800},
        {"query": "from the far future", "response": "new", "created_at": 253402300799,
         "updated_at": 253402300799, "last_hit_at": 253402300799},
        {"query": "expires last", "response": "late", "expires_at": 253402300799},
    ]  # fmt: skip
    cli = fake_cli()
    cli.run("import", db, write_jsonl(tmp_path / "d.jsonl", rows))
    assert "9999-12-31 23:59:59Z" in cli.run("ls", db).stdout
    assert "9999-12-31" in cli.run("show", db, 2).stdout
    assert cli.run("get", db, "from the far future").exit_code == 0
    with SemanticCache(db, embedder=FakeEmbedder()) as cache:
        hit = cache.lookup("from the far future")
        assert hit is not None and hit.created_at.year == 9999
        assert cache.get(1).created_at.year == 1
        assert cache.get_or_compute("expires last", lambda q: "x") == ("late", True)


def test_import_newer_export_format_refused(tmp_path: Path) -> None:
    dump = write_jsonl(tmp_path / "d.jsonl", ['{"semcache_export": 99}', FAQ[0]])
    refused = fake_cli().run("import", tmp_path / "t.db", dump, expect=2).stderr
    assert "newer" in refused and "upgrade semcache-sqlite" in refused
    assert "pip install" not in refused  # installed from source: no PyPI package to name


class _FailingOnSecondCall(FakeEmbedder):
    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if self.calls == 1:
            from semcache_sqlite import EmbedderError

            raise EmbedderError("embedding service went away")
        return super().embed(texts)


def test_import_failing_half_way_rolls_everything_back(source: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    fake_cli().run("export", source, "-o", dump)
    target = tmp_path / "target.db"
    fake_cli().run("put", target, "already here", "keep me")
    result = Cli(_FailingOnSecondCall()).run("import", target, dump, "--batch-size", "2", expect=1)
    assert "embedding service went away" in result.stderr
    assert [e["query"] for e in _entries(target)] == ["already here"]
    assert fake_cli().json("doctor", target)["ok"]


class _BrokenEmbedder(FakeEmbedder):
    """A third-party embedder failing its own way: a raw error from its second call on,
    or (``nan=True``) NaN vectors."""

    def __init__(self, nan: bool = False) -> None:
        super().__init__()
        self.nan = nan

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        matrix = super().embed(texts)
        if self.calls > 1 and self.nan:
            matrix[:] = np.nan
        elif self.calls > 1:
            raise RuntimeError("upstream 500")
        return matrix


@pytest.mark.parametrize("nan", [False, True])
def test_warm_and_import_report_a_failing_embedder_as_its_failure(
    source: Path, tmp_path: Path, nan: bool
) -> None:
    """The embedder's fault exits 1 with its message (not a traceback for its RuntimeError,
    nor exit 2 "bad input" for its NaN vectors); warm keeps its whole first batch,
    import nothing."""
    message = "unusable vector" if nan else "the embedder failed: upstream 500"
    faq = write_jsonl(tmp_path / "faq.jsonl", FAQ)
    warmed = tmp_path / "w.db"
    result = Cli(_BrokenEmbedder(nan)).run("warm", warmed, faq, "--batch-size", "2", expect=1)
    assert message in result.stderr
    assert fake_cli().json("ls", warmed)["total"] == 2
    dump = tmp_path / "dump.jsonl"
    fake_cli().run("export", source, "-o", dump)
    target = tmp_path / "target.db"
    fake_cli().run("put", target, "already here", "keep me")
    failed = Cli(_BrokenEmbedder(nan)).run("import", target, dump, "--batch-size", "2", expect=1)
    assert message in failed.stderr
    assert [e["query"] for e in _entries(target)] == ["already here"]
    assert fake_cli().json("doctor", target)["ok"]


def test_import_refuses_an_embedder_of_another_model_than_the_file(
    source: Path, tmp_path: Path
) -> None:
    dump = tmp_path / "dump.jsonl"
    fake_cli().run("export", source, "-o", dump)
    target = tmp_path / "t.db"
    fake_cli().run("put", target, "already here", "keep me")
    other = FakeEmbedder(dim=64, model_id="another-64")  # same size, another model
    database = Database(target)
    try:
        with pytest.raises(EmbedderMismatchError, match="another-64"):
            import_entries(
                database,
                dump,
                validate_import_file(dump),
                model_id=FakeEmbedder().model_id,
                dim=64,
                use_vectors=False,
                embedder=lambda: other,
            )
    finally:
        database.close()
    assert other.calls == 0 and [e["query"] for e in _entries(target)] == ["already here"]


def test_import_vectors_of_another_model_need_reembed(source: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    fake_cli().run("export", source, "-o", dump, "--with-vectors")
    target = tmp_path / "other.db"
    other = FakeEmbedder(dim=32, model_id="fake-bow-32")
    refused = Cli(other).run("import", target, dump, expect=6)
    assert "'fake-bow-64' (64-d)" in refused.stderr and "--reembed" in refused.stderr
    assert not target.exists()
    result = Cli(other).run("import", target, dump, "--reembed")
    assert "5 embedded with fake-bow-32" in result.stdout
    stats = Cli(other).json("stats", target)
    assert (stats["embedding_model"], stats["embedding_dim"], stats["entries"]) == (
        "fake-bow-32",
        32,
        5,
    )
    assert (
        Cli(other).run("get", target, "how can i reset my password").stdout.startswith("Settings")
    )


def test_import_plain_jsonl_without_header(tmp_path: Path) -> None:
    dump = write_jsonl(tmp_path / "plain.jsonl", FAQ)
    target = tmp_path / "t.db"
    assert "5 added" in fake_cli().run("import", target, dump).stdout
    assert fake_cli().json("get", target, "how do i rotate api keys", "-u", "alice")["hit"]
    vectors_no_header = write_jsonl(
        tmp_path / "v.jsonl", [{"query": "q", "response": "r", "vector": [1.0] * 64}]
    )
    assert "--reembed" in fake_cli().run("import", target, vectors_no_header, expect=6).stderr


def test_export_output_file_is_atomic(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("previous backup\n")
    fake_cli().run("export", tmp_path / "missing.db", "-o", out, expect=5)
    assert out.read_text() == "previous backup\n"
    fake_cli().run("export", source, "-o", out)
    assert len(out.read_text().splitlines()) == 6
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_export_output_through_a_symlink_a_fifo_and_with_the_usual_mode(
    source: Path, tmp_path: Path
) -> None:
    real = tmp_path / "backups" / "latest.jsonl"
    real.parent.mkdir()
    real.write_text("previous backup\n")
    real.chmod(0o640)
    link = tmp_path / "latest.jsonl"
    link.symlink_to(real)
    fake_cli().run("export", source, "-o", link)
    assert link.is_symlink() and len(real.read_text().splitlines()) == 6  # the target replaced
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # its permissions kept
    fresh = tmp_path / "fresh.jsonl"
    fake_cli().run("export", source, "-o", fresh)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[str] = []
    # The reader a FIFO needs; a daemon, so a FIFO replaced by a file cannot hang the run.
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    fake_cli().run("export", source, "-o", fifo)
    reader.join(timeout=30)
    assert stat.S_ISFIFO(fifo.lstat().st_mode)  # still a FIFO, not replaced by a file
    assert len(received) == 1 and len(received[0].splitlines()) == 6


def test_import_keeps_a_namespace_within_its_entry_limit(tmp_path: Path) -> None:
    """A namespace's max_entries (stored in the file) holds for imported entries too:
    the import evicts by the namespace's policy, in its own transaction."""
    target = tmp_path / "t.db"
    with SemanticCache(target, embedder=FakeEmbedder()) as cache:
        cache.configure_namespace("support", max_entries=10)
        cache.store("an entry from before", None, "old", namespace="support")
        cache.store("another namespace", None, "kept", namespace="other")
    rows = [
        {"query": f"support question {i}", "response": f"answer {i}", "namespace": "support"}
        for i in range(30)
    ]
    result = fake_cli().run("import", target, write_jsonl(tmp_path / "d.jsonl", rows))
    assert "30 added" in result.stdout and "evicted" in result.stdout
    with SemanticCache(target, embedder=FakeEmbedder()) as cache:
        assert cache.stats(namespace="support")["cached_entries"] <= 10
        assert cache.stats(namespace="other")["cached_entries"] == 1
    assert fake_cli().json("doctor", target)["ok"]
