"""The `semcache` command as a whole: help, exit codes, error messages, embedder choice."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from clitools import FAQ, Cli, fake_cli, write_jsonl
from fakes import FakeEmbedder
from openai_server import OpenAIServer

from semcache_sqlite import SemanticCache, cli_common
from semcache_sqlite.cli import cli
from semcache_sqlite.embedders import LOCAL_DIM, LOCAL_MODEL_ID

README = Path(__file__).resolve().parent.parent / "README.md"


def _commands() -> list[str]:
    return list(cli.commands)


@pytest.mark.parametrize("name", _commands())
def test_every_command_has_help_with_an_example(name: str) -> None:
    result = Cli().run(name, "--help")
    assert "Example" in result.stdout, result.stdout
    assert "semcache" in result.stdout.split("Example", 1)[1]


def test_group_help_documents_every_exit_code() -> None:
    out = Cli().run("--help").stdout
    for code in range(7):
        assert re.search(rf"^\s+{code}\s+\S", out, re.MULTILINE), f"exit code {code} missing"
    expected = {"stats", "ls", "show", "search", "get", "put", "update", "rm", "warm", "export"}
    expected |= {"import", "doctor", "migrate", "vacuum", "shell", "demo", "purge", "reembed"}
    assert expected <= set(_commands())


def test_readme_documents_every_command_and_exit_code() -> None:
    readme = README.read_text(encoding="utf-8")
    for name in _commands():
        assert f"`semcache {name}" in readme, name
    for code in range(7):
        assert re.search(rf"^\| {code} \|", readme, re.MULTILINE), f"exit code {code} missing"


# -- files that are not there or not usable ---------------------------------------------

_ARGS = {
    "stats": [],
    "ls": [],
    "show": ["1"],
    "search": ["hello there"],
    "get": ["hello there"],
    "put": ["hello there", "general kenobi"],
    "update": ["1", "--response", "x"],
    "rm": ["1"],
    "warm": ["WARM"],
    "export": [],
    "import": ["IMPORT"],
    "doctor": [],
    "migrate": [],
    "vacuum": [],
    "purge": [],
    "reembed": ["--to-embedder", "local"],
    "config": [],
    "shell": ["--print"],
}
_CREATING = {"put", "warm", "import", "migrate"}


def _argv(name: str, db: Path, tmp_path: Path) -> list[str]:
    warm_file = write_jsonl(tmp_path / "warm.jsonl", FAQ[:2])
    import_file = write_jsonl(tmp_path / "import.jsonl", FAQ[:2])
    files = {"WARM": str(warm_file), "IMPORT": str(import_file)}
    return [name, str(db), *(files.get(a, a) for a in _ARGS[name])]


@pytest.mark.parametrize("name", sorted(_ARGS))
def test_missing_file_is_created_only_by_writing_commands(name: str, tmp_path: Path) -> None:
    db = tmp_path / "absent.db"
    argv = _argv(name, db, tmp_path)
    if name in _CREATING:
        fake_cli().run(*argv)
        assert db.exists()
    else:
        result = fake_cli().run(*argv, expect=5)
        assert result.stderr.strip() == f"Error: {db}: no such cache file"
        assert not db.exists() and not Path(f"{db}-wal").exists()


@pytest.mark.parametrize("name", sorted(set(_ARGS) - {"shell"}))
def test_corrupt_file_is_a_one_line_error(name: str, tmp_path: Path) -> None:
    db = tmp_path / "random.db"
    junk = os.urandom(8192)
    db.write_bytes(junk)
    result = fake_cli().run(*_argv(name, db, tmp_path), expect=5)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {db}: not a usable SQLite file")
    assert db.read_bytes() == junk


def test_other_programs_file_and_newer_schema_are_refused(tmp_path: Path) -> None:
    import sqlite3
    from contextlib import closing

    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:  # sqlite3's own `with` does not close
        conn.execute("CREATE TABLE invoices (id INTEGER)")
        conn.commit()
    assert "other tables (invoices)" in fake_cli().run("ls", other, expect=5).stderr
    assert "other tables (invoices)" in fake_cli().run("put", other, "q", "r", expect=5).stderr
    newer = tmp_path / "newer.db"
    fake_cli().run("migrate", newer)
    with closing(sqlite3.connect(newer)) as conn:
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
    result = fake_cli().run("stats", newer, expect=5)
    assert "newer semcache-sqlite" in result.stderr and len(result.stderr.splitlines()) == 1
    assert "Upgrade semcache-sqlite" in result.stderr and "pip install" not in result.stderr
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert "semcache migrate" in fake_cli().run("ls", empty, expect=5).stderr
    assert empty.read_bytes() == b""  # refused before WAL mode could write a header


def test_refused_files_in_rollback_journal_mode_stay_byte_identical(
    refused_files: dict[str, Path],
) -> None:
    """Every command refuses them (exit 5) before anything switches them to WAL mode."""
    before = {name: path.read_bytes() for name, path in refused_files.items()}
    commands = [
        ["stats"],
        ["ls"],
        ["show", "1"],
        ["export"],
        ["doctor"],
        ["get", "alpha"],
        ["search", "alpha"],
        ["put", "q", "r"],
        ["rm", "1"],
        ["vacuum"],
        ["migrate"],
    ]
    for name, path in refused_files.items():
        for command in commands:
            fake_cli().run(command[0], path, *command[1:], expect=5)
            assert path.read_bytes() == before[name], (name, command)
    folder = next(iter(refused_files.values())).parent
    assert sorted(p.name for p in folder.iterdir()) == ["newer.db", "other.db"]  # no -wal/-shm


def test_read_commands_work_on_a_file_that_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pre-warmed file shipped read-only: the reading commands open it as read_only=True
    does. chmod makes file and directory read-only for real unless we run as root, which
    chmod does not stop; os.access, which the writability check asks, then says so too."""
    folder = tmp_path / "shipped"
    folder.mkdir()
    db = folder / "c.db"
    cli = fake_cli()
    write_jsonl(tmp_path / "faq.jsonl", FAQ)
    cli.run("warm", db, tmp_path / "faq.jsonl")
    before = db.read_bytes()
    real_access = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if mode & os.W_OK and Path(path) in (db, folder):
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    db.chmod(0o444)
    folder.chmod(0o555)
    try:
        assert cli.json("stats", db)["entries"] == len(FAQ)
        assert cli.json("ls", db)["total"] == len(FAQ)
        assert cli.json("show", db, "1")["query"] == FAQ[0]["query"]
        assert cli.run("export", db).stdout.count("\n") == len(FAQ) + 1  # header + entries
        assert cli.json("doctor", db)["ok"] is True
        assert cli.run("get", db, FAQ[0]["query"]).stdout == FAQ[0]["response"] + "\n"
        assert cli.json("search", db, FAQ[0]["query"])["lookup"]["hit"] is True
        refused = cli.run("put", db, "new question", "new answer", expect=1)
        assert "read-only" in refused.stderr
    finally:
        folder.chmod(0o755)
        db.chmod(0o644)
    assert db.read_bytes() == before


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    cli = fake_cli()
    cli.run("put", db, "q", "r")
    assert cli.run("show", db, "not-a-number", expect=2).exit_code == 2
    assert "threshold" in cli.run("get", db, "q", "--threshold", "1.5", expect=2).stderr
    assert "empty" in cli.run("get", db, "   ", expect=2).stderr
    assert "nothing selected" in cli.run("rm", db, expect=2).stderr
    assert "duration" in cli.run("rm", db, "--older-than", "7 fortnights", expect=2).stderr
    assert "JSON object" in cli.run("put", db, "q", "r", "--metadata", "[1]", expect=2).stderr
    assert cli.run("--embedder", "local", "--embedding-model", "x", "ls", db, expect=2)
    assert (
        "only for --embedder openai"
        in cli.run("--embedder", "local", "--base-url", "u", "ls", db, expect=2).stderr
    )


# -- which embedder a command uses -----------------------------------------------------------


def test_file_of_another_model_names_the_options_to_pass(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    fake_cli().run("put", db, "how do i reset my password", "Settings")
    default = Cli()  # no injected embedder: what a user gets
    result = default.run("get", db, "reset my password", expect=6)
    assert "--embedder openai --embedding-model fake-bow-64" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert default.run("--embedder", "local", "search", db, "x", expect=6)
    # inspection commands never need the embedder
    assert default.json("ls", db)["total"] == 1
    default.run("export", db)


def test_openai_embedder_on_a_local_models_file_is_refused_before_any_request(
    tmp_path: Path,
) -> None:
    db = tmp_path / "local.db"
    local_like = FakeEmbedder(dim=LOCAL_DIM, model_id=LOCAL_MODEL_ID)
    with SemanticCache(db, embedder=local_like) as cache:
        cache.store("How do I reset my password?", None, "Settings")
    with OpenAIServer() as server:
        refused = Cli().run(
            "--embedder", "openai", "--base-url", server.base_url, "get", db, "x", expect=6
        )
        assert "--embedder local" in refused.stderr
        assert server.state.count("/embeddings") == 0


def test_openai_embedder_through_global_options(tmp_path: Path) -> None:
    db = tmp_path / "oa.db"
    with OpenAIServer() as server:
        oa = Cli()
        opts = ["--embedding-model", "text-embedding-3-small@64", "--base-url", server.base_url]
        oa.run(*opts, "put", db, "what is the refund policy", "30 days")
        assert oa.run(*opts, "get", db, "What is the refund policy?").stdout == "30 days\n"
        # the file remembers its model: --base-url alone is enough
        base = ["--base-url", server.base_url]
        assert oa.run(*base, "get", db, "refund policy what is the").stdout == "30 days\n"
        assert server.state.count("/embeddings") == 3
    wrong = Cli().run("get", db, "refund", expect=6).stderr
    assert "--embedding-model text-embedding-3-small@64" in wrong


def test_ls_and_exact_get_do_not_load_the_embedding_model(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    local_like = FakeEmbedder(dim=LOCAL_DIM, model_id=LOCAL_MODEL_ID)
    with SemanticCache(db, embedder=local_like) as cache:
        cache.store("How do I reset my password?", None, "Settings")
    script = (
        "import sys\n"
        "from semcache_sqlite.cli import cli\n"
        "for argv in (['ls', DB], ['stats', DB], ['doctor', DB], ['export', DB],\n"
        "             ['get', DB, 'how do i reset my password?']):\n"
        "    try:\n"
        "        cli.main(argv, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('LOADED' if {'onnxruntime', 'tokenizers'} & set(sys.modules) else 'NOT LOADED')\n"
    ).replace("DB", repr(str(db)))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("NOT LOADED")
    assert "Settings" in done.stdout


def test_default_local_embedder_end_to_end(tmp_path: Path) -> None:
    db = tmp_path / "local.db"
    cli = Cli()  # the real default: all-MiniLM-L6-v2 int8, offline
    faq = write_jsonl(tmp_path / "faq.jsonl", FAQ)
    cli.run("warm", db, faq)
    assert cli.json("stats", db)["embedding_model"] == LOCAL_MODEL_ID
    hit = cli.run("get", db, "How can I reset my password?")
    assert hit.stdout == "Settings > Account > Reset\n"
    assert "similarity" in hit.stderr
    miss = cli.json("get", db, "What is the capital of France?", expect=3)
    assert miss["hit"] is False and miss["closest"]["similarity"] < 0.93
    results = cli.json("search", db, "reset password", "-k", "3")["results"]
    assert results[0]["query"] == "how do i reset my password"
    assert [r["similarity"] for r in results] == sorted(
        (r["similarity"] for r in results), reverse=True
    )


def test_progress_bar_shows_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_common, "_stderr_is_tty", lambda: True)
    db = tmp_path / "c.db"
    faq = write_jsonl(tmp_path / "faq.jsonl", FAQ)
    result = fake_cli().run("warm", db, faq)
    assert "warming" in result.stderr and "5/5" in result.stderr
    assert "exporting" in fake_cli().run("export", db, "-o", tmp_path / "e.jsonl").stderr
    assert "importing" in fake_cli().run("import", tmp_path / "i.db", tmp_path / "e.jsonl").stderr
    assert "checking integrity" in fake_cli().run("doctor", db).stderr
    quiet = fake_cli().run("-q", "warm", db, faq)
    assert quiet.stderr == ""


def test_json_output_is_valid_for_listing_commands(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    cli = fake_cli()
    cli.run("warm", db, write_jsonl(tmp_path / "faq.jsonl", FAQ))
    assert cli.json("stats", db)["entries"] == 5
    assert cli.json("ls", db)["total"] == 5
    assert cli.json("show", db, 1)["query"] == FAQ[0]["query"]
    assert cli.json("search", db, "reset password")["results"]
    assert cli.json("get", db, FAQ[0]["query"])["hit"] is True
    assert cli.json("doctor", db)["ok"] is True


def test_errors_are_click_exceptions_with_codes() -> None:
    error = cli_common.CliError("two\nlines", 5)
    assert isinstance(error, click.ClickException)
    assert error.exit_code == 5 and error.message == "two lines"
