"""The ``semcache`` command (also ``python -m semcache_sqlite``)."""

from __future__ import annotations

import os
import sys

import click

from ._version import __version__
from .cache import SemanticCache
from .errors import SemCacheError
from .llms import OpenAIChat


@click.group()
@click.version_option(__version__, prog_name="semcache")
def cli() -> None:
    """A semantic cache for LLM apps in one SQLite file."""


@cli.command()
@click.option(
    "--db",
    "db_path",
    default="semcache-demo.db",
    show_default=True,
    help="Cache file to use (created if missing).",
)
@click.option(
    "--model", default=None, help="Chat model for misses (default: $OPENAI_MODEL or gpt-4o)."
)
@click.option(
    "--base-url", default=None, help="OpenAI-compatible server URL (default: $OPENAI_BASE_URL)."
)
@click.option("--api-key", default=None, help="API key (default: $OPENAI_API_KEY).")
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="Cosine-similarity threshold in [0, 1] (default: the embedder's).",
)
def demo(
    db_path: str,
    model: str | None,
    base_url: str | None,
    api_key: str | None,
    threshold: float | None,
) -> None:
    """Run the tutorial session offline against a .db file.

    Example: semcache demo --db demo.db   (run it twice: the second run is served from the file)
    """
    from .demo import run_demo

    base_url = base_url or os.environ.get("OPENAI_BASE_URL")
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    llm = None
    if base_url or api_key or model:
        llm = OpenAIChat(model, api_key=api_key, base_url=base_url)
    try:
        with SemanticCache(db_path, threshold=threshold) as cache:
            run_demo(cache, llm, echo=click.echo)
    except SemCacheError as exc:
        raise click.ClickException(str(exc)) from exc


from . import cli_quality  # noqa: E402, F401  (registers `evaluate` and `calibrate`)


def main() -> None:
    cli(prog_name="semcache")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
