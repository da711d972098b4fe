"""What every ``semcache`` subcommand shares: state, exit codes, errors, opening
files, choosing the embedder, output (rich tables, JSON) and progress bars.

No SQL here (that is ``store.py`` / ``admin.py``), and nothing that loads the
embedding model unless a command asks for an embedder.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from .db import Database, table_exists, writability_problem
from .embedders import LOCAL_MODEL_ID, Embedder, LocalEmbedder, OpenAIEmbedder
from .errors import (
    EmbedderMismatchError,
    EntryNotFoundError,
    InvalidInputError,
    NotACacheFileError,
    SchemaTooNewError,
    SemCacheError,
    UpgradeRequiredError,
)
from .migrate import check_openable, migrate
from .store import EntryRow, Store
from .validation import SQLITE_INT_MAX, SQLITE_INT_MIN, check_metadata

if TYPE_CHECKING:
    from rich.console import Console

# -- exit codes -----------------------------------------------------------------

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_PROBLEMS = 4
EXIT_BAD_FILE = 5
EXIT_WRONG_EMBEDDER = 6

#: Shown by ``semcache --help`` and kept in step with README "Exit codes".
EXIT_CODES_HELP = """\b
Exit codes:
  0  success (for `get`: a hit)
  1  error: storage, lock timeout, embedder or I/O failure; prompt declined
  2  usage: bad option or argument, invalid input, malformed input file
     (nothing was written)
  3  not found: `get` missed; `show`/`update`/`rm` got an unknown id
  4  `doctor` found problems
  5  cache file unusable: missing, not SQLite or corrupt, another
     program's file, or written by a newer semcache-sqlite
  6  wrong embedder: the file was built with another embedding model
     (the message names the --embedder options to pass)"""


class CliError(click.ClickException):
    """A one-line error with the exit code scripts rely on."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(" ".join(message.split()))
        # click declares exit_code as a class constant; each CliError carries its own.
        setattr(self, "exit_code", exit_code)  # noqa: B010


def exit_code_for(exc: SemCacheError) -> int:
    if isinstance(exc, InvalidInputError):
        return EXIT_USAGE
    if isinstance(exc, EntryNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, (NotACacheFileError, SchemaTooNewError, UpgradeRequiredError)):
        return EXIT_BAD_FILE
    if isinstance(exc, EmbedderMismatchError):
        return EXIT_WRONG_EMBEDDER
    return EXIT_ERROR


def to_cli_error(exc: SemCacheError) -> CliError:
    return CliError(str(exc) or type(exc).__name__, exit_code_for(exc))


# -- state shared by the group and its commands -----------------------------------


@dataclass
class CliState:
    """Global options. Tests (and programs embedding the CLI) may pass a ready
    ``embedder`` as ``obj=CliState(embedder=...)``; it is then used as given."""

    embedder_name: str | None = None  # "local" | "openai" | None (= what the file was made with)
    embedding_model: str | None = None
    embedding_dim: int | None = None
    base_url: str | None = None
    quiet: bool = False
    embedder: Embedder | None = None


pass_state = click.make_pass_decorator(CliState, ensure=True)

#: Entry ids and versions as SQLite stores them: a larger number is a usage error
#: (exit 2), not an OverflowError from the driver.
SQLITE_INT = click.IntRange(SQLITE_INT_MIN, SQLITE_INT_MAX)
#: --limit and --offset: from 0 to what SQLite takes.
SQLITE_COUNT = click.IntRange(0, SQLITE_INT_MAX)

F = TypeVar("F", bound=Callable[..., Any])


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        func
    )


def scope_options(func: F) -> F:
    """--namespace/--user/--context-key: the one scope a lookup or write uses."""
    func = click.option(
        "--context-key",
        default="",
        show_default=False,
        help="Context key of the entries (as shown by `ls`/`show`; default: none).",
    )(func)
    func = click.option(
        "--user", "-u", "user_id", default="", help="User id (default: shared entries only)."
    )(func)
    return click.option(
        "--namespace", "-n", default="default", show_default=True, help="Namespace."
    )(func)


# -- opening files ------------------------------------------------------------------


def _check_path(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CliError(f"{path}: no such cache file", EXIT_BAD_FILE)
    if not p.is_file():
        raise CliError(f"{path}: not a file", EXIT_BAD_FILE)
    return p


def open_existing(path: str, *, upgrade: bool = False) -> Database:
    """Open a cache file that must already exist (never create one).

    Refuses files that are not semcache caches or are newer than this code, before
    anything changes the file. ``upgrade=True`` (commands that write) applies pending
    migrations. Otherwise (commands that only read), a file that cannot be written here
    (a read-only file, directory or mount) is opened as ``read_only=True`` opens it.
    """
    _check_path(path)
    read_only = not upgrade and writability_problem(path) is not None
    db = Database(path, read_only=read_only, check_file=_check_existing)
    try:
        db.connection()  # the first connection runs _check_existing before any setup
        if upgrade:
            upgrade_file(db)
    except BaseException:
        db.close()
        raise
    return db


def _check_existing(conn: Any, path: str) -> None:
    if check_openable(conn, path) == 0:
        raise NotACacheFileError(
            f"{path}: an empty SQLite file, not a semcache-sqlite cache "
            "(`semcache migrate` turns it into an empty cache)"
        )


def upgrade_file(db: Database) -> None:
    """Bring a file opened for writing up to this version: its schema, then its vector
    index (whose layout needs the dimension, so no SQL migration can build it)."""
    migrate(db)
    Store(db).upgrade_vector_layout()


def open_or_create(path: str) -> Database:
    """Open a cache file for writing, creating it (and its schema) if missing; a file
    of an older version is upgraded, its vector index included."""
    parent = Path(path).parent
    if not parent.is_dir():
        raise CliError(f"{path}: directory {parent} does not exist", EXIT_ERROR)
    db = Database(path, check_file=check_openable)
    try:
        upgrade_file(db)
    except BaseException:
        db.close()
        raise
    return db


def open_for_write(state: CliState, path: str) -> tuple[Database, Embedder]:
    """Open (or create) a file for a command that embeds and writes, with its embedder.

    A missing file is created only once the embedder options are known to be
    usable, so a refused command leaves no empty file behind.
    """
    from .admin import Admin

    if not Path(path).exists():
        embedder = resolve_embedder(state, path, {})
        return open_or_create(path), embedder
    database = open_or_create(path)
    try:
        return database, resolve_embedder(state, path, Admin(database).facts().info)
    except BaseException:
        database.close()
        raise


@contextmanager
def closing(db: Database) -> Iterator[Database]:
    try:
        yield db
    finally:
        db.close()


# -- choosing the embedder -----------------------------------------------------------


def embedder_options_for(model_id: str) -> str:
    """The global options that select the embedder a file was built with."""
    if model_id == LOCAL_MODEL_ID:
        return "--embedder local (the default)"
    return f"--embedder openai --embedding-model {model_id} (and --base-url URL if needed)"


def split_openai_model(model_id: str) -> tuple[str, int | None]:
    """``text-embedding-3-small@256`` -> ("text-embedding-3-small", 256)."""
    name, sep, dims = model_id.rpartition("@")
    if sep and name and dims.isdigit():
        return name, int(dims)
    return model_id, None


def resolve_embedder(state: CliState, path: str, info: dict[str, str]) -> Embedder:
    """The embedder for a file whose ``cache_info`` is ``info`` (empty for a new file).

    Without --embedder: the file's own model if it is the local one (or the file
    is new); any other model is refused with the options to pass. The embedder
    is only constructed here; a local model loads on its first embed() call.
    """
    file_model = info.get("embedding_model")
    file_dim = int(info["embedding_dim"]) if "embedding_dim" in info else None
    name = state.embedder_name
    if state.embedder is not None:
        embedder = state.embedder
    elif name is None and (file_model is None or file_model == LOCAL_MODEL_ID):
        embedder = LocalEmbedder()
    elif name is None:
        raise EmbedderMismatchError(
            f"{path} was created with embedding model {file_model!r} ({file_dim}-d), not the "
            f"default local one: pass {embedder_options_for(str(file_model))}"
        )
    elif name == "local":
        embedder = LocalEmbedder()
    else:
        # The local model's file is not an OpenAI model's: asking the service for it
        # would fail after a network round trip; the mismatch below names the way out.
        known = file_model if file_model != LOCAL_MODEL_ID else None
        requested = state.embedding_model or known or "text-embedding-3-small"
        model, dimensions = split_openai_model(requested)
        dim = state.embedding_dim
        if dim is None and requested == file_model:
            dim = file_dim
        embedder = OpenAIEmbedder(model, dim=dim, dimensions=dimensions, base_url=state.base_url)
    if file_model is not None and (embedder.model_id != file_model or embedder.dim != file_dim):
        raise EmbedderMismatchError(
            f"{path} was created with embedding model {file_model!r} ({file_dim}-d), but this "
            f"command would use {embedder.model_id!r} ({embedder.dim}-d): pass "
            f"{embedder_options_for(file_model)}, or move the entries into a new file with "
            "`semcache export` and `semcache import` (which re-embeds them)"
        )
    return embedder


# -- parsing --------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhms]?)", re.IGNORECASE)
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}


def parse_duration(text: str) -> float:
    """'7d', '12h', '30m', '45s', '1h30m' or plain seconds ('90') -> seconds."""
    compact = text.strip().replace(" ", "")
    parts = _DURATION_PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts).lower() != compact.lower():
        raise click.BadParameter(f"{text!r} is not a duration like 7d, 12h, 30m, 45s or 3600")
    seconds = sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in parts)
    if not math.isfinite(seconds):
        raise click.BadParameter(f"{text!r} is too long a duration")
    return seconds


def parse_metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--metadata") from exc
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--metadata")
    try:
        return check_metadata(value)  # json.loads accepts NaN and Infinity
    except InvalidInputError as exc:
        raise click.BadParameter(str(exc), param_hint="--metadata") from exc


def text_argument(value: str) -> str:
    """An argument where '-' means: read the text from standard input."""
    if value == "-":
        return sys.stdin.read().rstrip("\n")
    return value


# -- output ---------------------------------------------------------------------------


def console(*, stderr: bool = False, terminal: bool | None = None) -> Console:
    """A rich console on stdout (or stderr); user text is never parsed as markup.

    Off a terminal, tables are laid out 160 columns wide (or $COLUMNS).
    """
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not (terminal or stream.isatty()):
        width = int(os.environ.get("COLUMNS", "0") or 0) or 160
    return Console(
        file=stream,
        width=width,
        force_terminal=terminal,
        markup=False,
        emoji=False,
        highlight=False,
        soft_wrap=False,
    )


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, indent=2))


def info(state: CliState, message: str) -> None:
    """A progress/summary note on stderr (silenced by --quiet)."""
    if not state.quiet:
        click.echo(message, err=True)


def format_time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def format_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def file_size(path: str | Path) -> int:
    p = Path(path)
    return p.stat().st_size if p.exists() else 0


def entries(count: int) -> str:
    """'1 entry', '2 entries'."""
    return f"{count} entry" if count == 1 else f"{count} entries"


def one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


def entry_json(row: EntryRow) -> dict[str, Any]:
    """An entry as JSON (times are unix seconds, UTC, as stored)."""
    return {
        "id": row.id,
        "namespace": row.namespace,
        "user_id": row.user_id,
        "context_key": row.context_key,
        "query": row.query,
        "response": row.response,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "embedding_model": row.embedding_model,
        "embedding_dim": row.embedding_dim,
        "version": row.version,
        "hit_count": row.hit_count,
        "last_hit_at": row.last_hit_at,
        "expires_at": row.expires_at,
        "metadata": row.metadata,
    }


def policy_json(store: Store, namespace: str) -> dict[str, Any] | None:
    """The lifecycle rules the file holds for ``namespace``: its ``configure_namespace``
    overrides over the library's defaults (an application's constructor arguments are
    not in the file). None for a file older than the lifecycle schema."""
    with store.db.reading() as conn:
        configured = table_exists(conn, "namespace_config")
    if not configured:
        return None
    policy = store.namespace_policy(namespace)
    return {
        "ttl": policy.ttl,
        "sliding_ttl": policy.sliding_ttl,
        "max_entries": policy.max_entries,
        "eviction": policy.eviction,
        "on_duplicate": policy.on_duplicate,
        "overrides": store.namespace_overrides(namespace),
    }


def describe_policy(policy: dict[str, Any] | None) -> str:
    """'ttl 1h, max 2,000 (lru)' for a table cell."""
    if policy is None:
        return "-"
    ttl = policy["ttl"]
    parts = ["ttl never" if ttl is None else f"ttl {format_duration(ttl)}"]
    if policy["sliding_ttl"]:
        parts[0] += " (sliding)"
    limit = policy["max_entries"]
    parts.append(f"max {'none' if limit is None else f'{limit:,}'} ({policy['eviction']})")
    if policy["on_duplicate"] != "replace":
        parts.append(f"on duplicate {policy['on_duplicate']}")
    return ", ".join(parts)


def format_duration(seconds: float) -> str:
    """3600 -> '1h', 90 -> '1m30s', 0.5 -> '0.5s'."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest, out = int(seconds), ""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out or "0s"


def fail(message: str, exit_code: int) -> NoReturn:
    raise CliError(message, exit_code)


# -- progress ---------------------------------------------------------------------------


def _stderr_is_tty() -> bool:
    return sys.stderr.isatty()


class ProgressBar:
    """What ``progress()`` yields: call it with the rows just done; ``set_total``
    once the total is known (until then the bar pulses)."""

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self._bar, self._task = bar, task

    def __call__(self, done: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, done)

    def set_total(self, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def set_done(self, done: int, total: int) -> None:
        """Absolute progress (for loops that report ``(done, total)``)."""
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)


@contextmanager
def progress(state: CliState, description: str, total: int | None) -> Iterator[ProgressBar]:
    """A rich progress bar on stderr (``total=None``: a pulsing bar).

    Disabled (a no-op) with --quiet or when stderr is not a terminal, so pipes
    and logs stay clean.
    """
    if state.quiet or not _stderr_is_tty():
        yield ProgressBar()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console(stderr=True, terminal=True), transient=True) as bar:
        yield ProgressBar(bar, bar.add_task(description, total=total))
