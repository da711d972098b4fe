"""The ``semcache`` command (also ``python -m semcache_sqlite``): the group, its
global options, error handling, and the ``demo`` command.

The subcommands live in topic modules (``cli_inspect``, ``cli_entries``,
``cli_io``, ``cli_maintenance``), each exporting ``COMMANDS``; shared helpers
are in ``cli_common``. To add commands (e.g. ``evaluate``/``calibrate``):
write them with ``@click.command()`` in a new ``cli_<topic>.py`` that exports
``COMMANDS``, and add that module to ``COMMAND_MODULES`` below. Every command
needs an "Example:" in its help (a test checks it), and should raise
``SemCacheError``s or ``CliError`` rather than print tracebacks: the group maps
them to one-line messages and the documented exit codes.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import click

from . import cli_entries, cli_inspect, cli_io, cli_maintenance
from ._version import __version__
from .cache import SemanticCache
from .cli_common import EXIT_CODES_HELP, EXIT_ERROR, CliError, CliState, to_cli_error
from .errors import SemCacheError
from .llms import OpenAIChat

#: Topic modules whose COMMANDS are registered on the group, in help order.
COMMAND_MODULES: tuple[ModuleType, ...] = (cli_inspect, cli_entries, cli_io, cli_maintenance)


class SemcacheGroup(click.Group):
    """Lists commands in registration order; turns library errors into one-line
    messages with the documented exit codes instead of tracebacks."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SemCacheError as exc:
            raise to_cli_error(exc) from exc
        except BrokenPipeError:
            raise
        except OSError as exc:  # unreadable input, unwritable output, disk errors
            where = f"{exc.filename}: " if exc.filename else ""
            raise CliError(f"{where}{exc.strerror or exc}", EXIT_ERROR) from exc


@click.group(
    cls=SemcacheGroup,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="semcache")
@click.option(
    "--embedder",
    "embedder_name",
    type=click.Choice(["local", "openai"]),
    default=None,
    help="Embedder for commands that embed (get, search, put, warm, import). "
    "Default: the one the file was created with if it is the local model.",
)
@click.option(
    "--embedding-model",
    default=None,
    help="OpenAI-compatible embedding model (implies --embedder openai); "
    "'name@N' asks for N dimensions. Default: the file's model.",
)
@click.option(
    "--embedding-dim",
    type=click.IntRange(1),
    default=None,
    help="Vector size of an --embedding-model the tool does not know (implies openai).",
)
@click.option(
    "--base-url",
    default=None,
    help="OpenAI-compatible server (implies --embedder openai; default: $OPENAI_BASE_URL); "
    "the key comes from $OPENAI_API_KEY.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or notes on stderr.")
@click.pass_context
def cli(
    ctx: click.Context,
    embedder_name: str | None,
    embedding_model: str | None,
    embedding_dim: int | None,
    base_url: str | None,
    quiet: bool,
) -> None:
    """A semantic cache for LLM apps in one SQLite file: inspect, manage, warm,
    export and repair cache files.

    \b
    Example:
      semcache stats cache.db
      semcache ls cache.db --match password --sort most-hit
      semcache get cache.db "How can I reset my password?" || echo "miss: $?"
      semcache --embedder openai --embedding-model text-embedding-3-small warm cache.db faq.csv
    """
    state = ctx.ensure_object(CliState)
    openai_only = [
        name
        for name, value in (
            ("--embedding-model", embedding_model),
            ("--embedding-dim", embedding_dim),
            ("--base-url", base_url),
        )
        if value is not None
    ]
    if openai_only and embedder_name == "local":
        raise click.UsageError(f"{', '.join(openai_only)}: only for --embedder openai")
    if openai_only:
        state.embedder_name = "openai"  # implied
    elif embedder_name is not None:
        state.embedder_name = embedder_name
    state.embedding_model = embedding_model or state.embedding_model
    state.embedding_dim = embedding_dim or state.embedding_dim
    state.base_url = base_url or state.base_url
    state.quiet = quiet or state.quiet


for _module in COMMAND_MODULES:
    for _command in _module.COMMANDS:
        cli.add_command(_command)


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
    # A SemCacheError goes to the group, which maps it to the exit code table (2, 5, 6).
    with SemanticCache(db_path, threshold=threshold) as cache:
        run_demo(cache, llm, echo=click.echo)


from . import cli_quality  # noqa: E402, F401  (registers `evaluate` and `calibrate`)


def main() -> None:
    # click itself exits quietly on a broken pipe (`semcache export db | head`).
    cli(prog_name="semcache")


if __name__ == "__main__":  # pragma: no cover
    main()
