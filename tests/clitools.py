"""Drive the ``semcache`` command in-process with click's CliRunner."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from fakes import FakeEmbedder

from semcache_sqlite.cli import cli
from semcache_sqlite.cli_common import CliState
from semcache_sqlite.embedders import Embedder


class Cli:
    """``Cli(embedder).run("ls", db)``; ``embedder=None`` uses the real default choice."""

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder
        self.runner = CliRunner()

    def run(self, *args: Any, input: str | None = None, expect: int | None = 0) -> Result:
        argv = [str(a) for a in args]
        state = CliState(embedder=self.embedder) if self.embedder is not None else None
        result = self.runner.invoke(cli, argv, obj=state, input=input)
        if expect is not None:
            assert result.exit_code == expect, (
                f"semcache {' '.join(argv)} exited {result.exit_code}, expected {expect}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}\nexception: {result.exception!r}"
            )
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"traceback instead of an error message: {result.exception!r}")
        return result

    def json(self, *args: Any, expect: int | None = 0) -> Any:
        return json.loads(self.run(*args, "--json", expect=expect).stdout)


def fake_cli() -> Cli:
    return Cli(FakeEmbedder())


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any] | str]) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


FAQ = [
    {"query": "how do i reset my password", "response": "Settings > Account > Reset"},
    {"query": "what are the pricing plans", "response": "Free, Pro, Team"},
    {"query": "how do i delete my account", "response": "Settings > Account > Delete"},
    {"query": "where is the api documentation", "response": "docs.example.com", "namespace": "dev"},
    {"query": "how do i rotate api keys", "response": "Console > Keys", "user_id": "alice"},
]
