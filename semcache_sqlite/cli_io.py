"""Bulk commands: ``warm`` (pre-populate from JSONL/CSV), ``export`` and ``import``
(JSONL round trip). The formats and the write rules are in ``transfer.py``.
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import TextIO, cast

import click

from .admin import Admin, EntryFilter
from .cli_common import (
    EXIT_ERROR,
    CliError,
    CliState,
    closing,
    entries,
    info,
    open_existing,
    open_for_write,
    open_or_create,
    pass_state,
    progress,
    resolve_embedder,
)
from .db import Database
from .embedders import Embedder
from .errors import EmbedderMismatchError
from .store import Scope
from .transfer import VectorFormat, export_entries, import_entries, validate_import_file
from .validation import check_scope_name
from .warmup import detect_format, validate_warm_file, warm

input_file = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


@click.command(name="warm", short_help="Pre-populate from a JSONL or CSV file (resumable).")
@click.argument("db", metavar="DB")
@click.argument("file", metavar="FILE", type=input_file)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv"]),
    default=None,
    help="Input format (default: from the extension: .jsonl/.ndjson/.json or .csv).",
)
@click.option(
    "--namespace", "-n", default="default", show_default=True, help="For rows without one."
)
@click.option("--user", "-u", "user_id", default="", help="User id for rows without one.")
@click.option("--context-key", default="", help="Context key of every entry (default: none).")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=256,
    show_default=True,
    help="Rows per embedding call and per committed transaction.",
)
@pass_state
def warm_command(
    state: CliState,
    db: str,
    file: Path,
    fmt: str | None,
    namespace: str,
    user_id: str,
    context_key: str,
    batch_size: int,
) -> None:
    """Pre-populate DB (created if missing) from a JSONL or CSV file of
    query, response[, namespace, user_id] rows.

    JSONL: one object a line with "query" and "response" (optional "namespace",
    "user_id", "metadata", "context_key"). CSV: a header row naming the columns
    (query,response,namespace,user_id), or those columns in that order.

    The whole file is checked first (a bad row is reported with its line
    number and nothing is written). Rows are then embedded and committed batch
    by batch. Safe to re-run, also after an interruption: rows already stored
    with the same response are skipped without embedding; the same query in
    the same scope is replaced, never duplicated.

    \b
    Example:
      semcache warm cache.db faq.jsonl
      semcache warm cache.db faq.csv --namespace support --batch-size 64
    """
    check_scope_name(namespace, "namespace", allow_empty=False)
    check_scope_name(user_id, "user_id", allow_empty=True)
    kind = detect_format(file, fmt)
    defaults = Scope(namespace, user_id, context_key)
    with progress(state, f"checking {file.name}", None):
        plan = validate_warm_file(file, kind, defaults)
    rows = plan.rows
    database, embedder = open_for_write(state, db)
    with closing(database):
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            step(n)

        try:
            with progress(state, "warming", rows) as step:
                counts = warm(
                    database,
                    embedder,
                    file,
                    kind,
                    defaults,
                    batch_size=batch_size,
                    advance=advance,
                    superseded=plan.superseded,
                )
        except KeyboardInterrupt:
            raise CliError(
                f"interrupted after {done} of {rows} rows (those are committed); "
                "re-run the same command to finish",
                EXIT_ERROR,
            ) from None
    repeated = (
        f"; {counts.superseded} repeated by a later row of the file (the later one is kept)"
        if counts.superseded
        else ""
    )
    click.echo(
        f"warmed {db} from {file}: {counts.added} added, {counts.updated} updated, "
        f"{counts.unchanged} unchanged ({rows} rows){repeated}"
    )


@click.command(name="export", short_help="Write entries (and vectors) as JSONL.")
@click.argument("db", metavar="DB")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to this file (atomically) instead of stdout.",
)
@click.option("--with-vectors", is_flag=True, help="Include each entry's vector.")
@click.option(
    "--vector-format",
    type=click.Choice(["base64", "list"]),
    default="base64",
    show_default=True,
    help="base64 of little-endian float32, or a JSON list of numbers.",
)
@click.option("--namespace", "-n", default=None, help="Only this namespace.")
@click.option("--user", "-u", "user_id", default=None, help="Only this user id.")
@pass_state
def export_command(
    state: CliState,
    db: str,
    output: Path | None,
    with_vectors: bool,
    vector_format: str,
    namespace: str | None,
    user_id: str | None,
) -> None:
    """Write the entries of DB as JSONL: a header line (format, app and schema
    version, embedding model and dimension), then one entry per line with its
    scope, query, response, times, version, hit count and metadata.

    Without --with-vectors, `import` re-embeds the entries (so an export can be
    rebuilt under another embedding model). The export is one consistent
    snapshot; with -o the file appears only once it is complete.

    \b
    Example:
      semcache export cache.db -o backup.jsonl --with-vectors
      semcache export cache.db --namespace support | gzip > support.jsonl.gz
    """
    flt = EntryFilter(namespace=namespace, user_id=user_id)
    vectors = vector_format if with_vectors else None
    with closing(open_existing(db)) as database:
        if output is None:
            count = _export(state, database, sys.stdout, flt, vectors)
        else:
            count = _export_to_file(state, database, output, flt, vectors)
    info(state, f"exported {entries(count)} from {db}" + (f" to {output}" if output else ""))


def _export(
    state: CliState, database: Database, out: TextIO, flt: EntryFilter, vectors: str | None
) -> int:
    with progress(state, "exporting", None) as step:
        return export_entries(
            database,
            out,
            flt=flt,
            vectors=cast("VectorFormat | None", vectors),
            advance=step,
            on_count=step.set_total,
        )


def _export_to_file(
    state: CliState, database: Database, output: Path, flt: EntryFilter, vectors: str | None
) -> int:
    target = output.resolve()  # through a symlink: the file it points to is replaced
    if target.exists() and not target.is_file():  # a FIFO or a device: written to as it is
        with open(target, "w", encoding="utf-8") as handle:
            return _export(state, database, handle, flt, vectors)
    directory = target.parent
    if not directory.is_dir():
        raise CliError(f"{output}: directory {directory} does not exist", EXIT_ERROR)
    # A complete file or none: written beside the target, then renamed over it.
    fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with open(fd, "w", encoding="utf-8") as handle:
            count = _export(state, database, handle, flt, vectors)
        os.chmod(temp_name, _file_mode(target))
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return count


def _file_mode(target: Path) -> int:
    """The replaced file's permissions, or a new file's (0666 less the umask), not
    mkstemp's private 0600."""
    if target.exists():
        return stat.S_IMODE(target.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@click.command(name="import", short_help="Load an export file, all or nothing.")
@click.argument("db", metavar="DB")
@click.argument("file", metavar="FILE", type=input_file)
@click.option(
    "--reembed",
    is_flag=True,
    help="Ignore the file's vectors and embed every query with DB's embedder "
    "(needed when the export was made with another embedding model).",
)
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=256, show_default=True)
@pass_state
def import_command(state: CliState, db: str, file: Path, reembed: bool, batch_size: int) -> None:
    """Load an `export` file into DB (created if missing), in one transaction.

    The whole file is validated first: a malformed line is reported with its
    line number and nothing is imported. Entries keep their times, version, hit
    count, metadata, TTL and expiry time; entries that have expired by the time
    of the import are left out (and counted). An entry with the same namespace, user, context and
    query as a stored one replaces it; ids are kept when free. Vectors in the
    file are used if they were made with DB's embedding model; entries without
    them are embedded with DB's embedder. Vectors of another model are refused
    unless --reembed.

    \b
    Example:
      semcache import restored.db backup.jsonl
      semcache --embedding-model text-embedding-3-small import new.db backup.jsonl --reembed
    """
    with progress(state, f"checking {file.name}", None):
        plan = validate_import_file(file)
    database = open_or_create(db) if Path(db).exists() else None
    try:
        file_info = Admin(database).facts().info if database is not None else {}
        if "embedding_model" in file_info:
            model, dim = file_info["embedding_model"], int(file_info["embedding_dim"])
        else:
            target = resolve_embedder(state, db, file_info)
            model, dim = target.model_id, target.dim
        header = plan.header
        same_model = header is not None and (header.embedding_model, header.embedding_dim) == (
            model,
            dim,
        )
        if plan.rows_with_vectors and not same_model and not reembed:
            made_with = (
                f"{header.embedding_model!r} ({header.embedding_dim}-d)"
                if header is not None
                else "an unnamed model (the file has no header)"
            )
            raise EmbedderMismatchError(
                f"{file} holds vectors made with {made_with}, but {db} uses {model!r} ({dim}-d): "
                "pass --reembed to embed the queries again with DB's embedder"
            )
        use_vectors = same_model and not reembed
        needs_embedding = plan.rows - (plan.rows_with_vectors if use_vectors else 0)

        def embedder() -> Embedder:
            return resolve_embedder(
                state, db, {"embedding_model": model, "embedding_dim": str(dim)}
            )

        if needs_embedding:
            embedder()  # fail early (wrong embedder options) before writing anything
        database = database or open_or_create(db)
        with progress(state, "importing", plan.rows) as step:
            result = import_entries(
                database,
                file,
                plan,
                model_id=model,
                dim=dim,
                use_vectors=use_vectors,
                embedder=embedder if needs_embedding else None,
                batch_size=batch_size,
                advance=step,
            )
    finally:
        if database is not None:
            database.close()
    how = (
        "vectors from the file"
        if result.embedded == 0
        else f"{result.embedded} embedded with {model}"
    )
    skipped = f", {result.expired} expired (not imported)" if result.expired else ""
    evicted = f"; then {result.evicted} evicted by the namespaces' limits" if result.evicted else ""
    click.echo(
        f"imported {entries(plan.rows - result.expired)} into {db}: {result.added} added, "
        f"{result.replaced} replaced{skipped} ({how}){evicted}"
    )


COMMANDS = [warm_command, export_command, import_command]
