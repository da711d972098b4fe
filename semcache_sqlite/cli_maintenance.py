"""Maintenance commands: ``doctor``, ``migrate``, ``vacuum``, ``purge``, ``reembed``,
``config``, ``shell``.

Only ``reembed`` loads an embedding model (the one converted to). Only
``migrate`` may create a file. The lifecycle work (purge, vacuum, re-embed) is
the library's own code (``store_lifecycle.py``, ``reembed.py``), run on a
``Store`` without a ``SemanticCache`` so the file's current model is not loaded.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import click

from . import vector_cells
from .admin import Admin, EntryFilter
from .cli_common import (
    EXIT_BAD_FILE,
    EXIT_ERROR,
    EXIT_PROBLEMS,
    CliError,
    CliState,
    closing,
    describe_policy,
    embedder_options_for,
    emit_json,
    entries,
    file_size,
    format_size,
    info,
    json_option,
    open_existing,
    open_or_create,
    parse_duration,
    pass_state,
    policy_json,
    progress,
    split_openai_model,
)
from .db import Database, sidecar
from .embedders import Embedder, LocalEmbedder, OpenAIEmbedder
from .lifecycle import EVICTION_POLICIES, ON_DUPLICATE_CHOICES, UNSET, Unset
from .migrate import APPLICATION_ID, check_openable, latest_version, schema_version
from .quality_store import QUALITY_SCHEMA_VERSION, QualityStore, describe_calibrations
from .reembed import run_reembed
from .store import Store
from .validation import check_scope_name
from .vector_index import bit_width, index_up_to_date, sign_bit_information

Status = Literal["ok", "info", "warn", "problem"]

#: A WAL bigger than this means checkpoints are not keeping up (a reader held open?).
LARGE_WAL_BYTES = 64 * 1024 * 1024

#: The index-bits check samples this many stored vectors, and judges from 100 or more.
INDEX_SAMPLE = 2000
INDEX_SAMPLE_MIN = 100
#: Fewer bits of information than this (or half the dimension) draw a warning: 256
#: bits already lose the nearest entry among 16 candidates more often than the local
#: model's 384 (benchmarks/bit_recall.py).
INDEX_BITS_WANTED = 192


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


def run_checks(state: CliState, db: str, database: Database) -> list[Check]:
    """Every doctor check, in report order. No check writes to the file."""
    admin = Admin(database)
    checks: list[Check] = []
    add = checks.append
    driver = database.driver_info()
    add(Check("sqlite driver", "info", f"{driver.driver} (SQLite {driver.sqlite_version})"))
    add(Check("sqlite-vec", "info", driver.sqlite_vec_version))
    facts = admin.facts()
    latest = latest_version()
    if facts.schema_version < latest:
        add(
            Check(
                "schema version",
                "warn",
                f"{facts.schema_version}, latest is {latest}: `semcache migrate` (or any write) "
                "upgrades it",
            )
        )
    else:
        add(Check("schema version", "ok", f"{facts.schema_version} (latest)"))
    if facts.application_id != APPLICATION_ID:
        add(Check("application id", "warn", f"{facts.application_id:#x}, expected SEMC"))
    with progress(state, "checking integrity", None):
        problems = admin.integrity_problems()
    if problems:
        add(Check("integrity", "problem", "; ".join(problems[:5])))
    else:
        add(Check("integrity", "ok", "PRAGMA integrity_check: ok"))
    entries = admin.count(EntryFilter())
    model, dim = facts.embedding_model, facts.embedding_dim
    if model is None:
        status: Status = "problem" if entries else "ok"
        add(Check("embedding model", status, f"none recorded ({entries} entries)"))
    else:
        add(
            Check(
                "embedding model",
                "info",
                f"{model} ({dim}-d); open with {embedder_options_for(model)}",
            )
        )
        wrong = admin.model_mismatches(model, int(dim or 0))
        if wrong:
            add(
                Check("entry models", "problem", f"{wrong} entries recorded with another model/dim")
            )
        if facts.schema_version >= QUALITY_SCHEMA_VERSION:
            stale = QualityStore(database).calibrations_not_for(model)
            if stale:
                detail = (
                    f"{describe_calibrations(stale)}: measured with another model, ignored "
                    "by lookups; run `semcache calibrate` again"
                )
                add(Check("calibrations", "warn", detail))
    if model is not None and not facts.has_vector_table:
        add(Check("vector table", "problem", "entry_vectors is missing"))
    elif facts.has_vector_table and not facts.vector_layout_current:
        add(
            Check(
                "vector table",
                "problem",
                "entry_vectors has the layout of an older version: run `semcache migrate`",
            )
        )
    elif facts.has_vector_table and facts.vector_table_dim != bit_width(int(dim or 0)):
        add(
            Check(
                "vector table",
                "problem",
                f"entry_vectors holds {facts.vector_table_dim}-bit vectors, the file says {dim}-d",
            )
        )
    if model is not None and entries:
        add(index_bits_check(admin, int(dim or 0)))
        cells = index_cells_check(admin)
        if cells is not None:
            add(cells)
        split = admin.split_namespaces()
        if split:
            shown = ", ".join(f"{n!r} ({rows} rows)" for n, rows in split[:3])
            detail = (
                f"{shown} in both vec0 tables: lookups never find the rows in "
                "entry_vectors_small; `semcache vacuum` rebuilds the index"
            )
            add(Check("vector table", "warn", detail))
    no_vector, no_entry = admin.orphan_counts()
    if no_vector or no_entry:
        add(
            Check(
                "entries/vectors",
                "problem",
                f"{no_vector} entries without a vector, {no_entry} vectors without an entry",
            )
        )
    else:
        add(Check("entries/vectors", "ok", f"{entries} entries, each with its vector"))
    miscounted = admin.miscounted_namespaces()
    if miscounted:
        shown = ", ".join(f"{n!r} counted {c}, holds {e}" for n, c, e in miscounted[:3])
        detail = f"{shown}: limits are checked against these counts; `semcache vacuum` recounts"
        add(Check("entry counts", "warn", detail))
    if facts.has_vector_table and facts.vector_layout_current and not facts.index_complete:
        detail = (
            "written by an earlier version: no table for small namespaces or sqlite-vec's "
            "chunks not indexed by partition (slower lookups): `semcache migrate` adds them"
        )
        add(Check("vector table", "warn", detail))
    wal = file_size(sidecar(db, "-wal"))
    if facts.journal_mode != "wal":
        add(Check("journal mode", "warn", f"{facts.journal_mode} (expected wal)"))
    else:
        add(Check("journal mode", "ok", "wal"))
    wal_status: Status = "warn" if wal > LARGE_WAL_BYTES else "info"
    hint = (
        "; a long-lived reader may block checkpoints: `semcache vacuum`"
        if wal_status == "warn"
        else ""
    )
    add(Check("wal file", wal_status, f"{format_size(wal)}{hint}"))
    free = facts.freelist_count * facts.page_size
    share = facts.freelist_count / facts.page_count if facts.page_count else 0.0
    add(
        Check(
            "free space",
            "info",
            f"{format_size(free)} in free pages ({share:.0%} of {format_size(file_size(db))})"
            + ("; `semcache vacuum` reclaims it" if share > 0.25 and free > 1 << 20 else ""),
        )
    )
    return checks


def index_bits_check(admin: Admin, dim: int) -> Check:
    """Whether the sign bits of the stored vectors can tell entries apart: a lookup
    re-scores only the 16 entries whose bits are nearest. Warns (a heuristic) below
    half the dimension, or 192 bits, of information per vector."""
    sample = admin.sample_vectors(INDEX_SAMPLE)
    if len(sample) < INDEX_SAMPLE_MIN:
        return Check("index bits", "info", f"not judged: {len(sample)} vectors sampled")
    bits = sign_bit_information(sample)
    detail = f"sign bits carry ~{bits:.0f} of {dim} bits per vector ({len(sample)} sampled)"
    if bits < min(INDEX_BITS_WANTED, dim / 2):
        return Check(
            "index bits",
            "warn",
            f"{detail}: this embedder's signs barely vary, so lookups may miss near "
            "neighbours; open the cache with exact_search=True",
        )
    return Check("index bits", "ok", detail)


def index_cells_check(admin: Admin) -> Check | None:
    """The cells of large namespaces (vector_cells.py); None when no namespace is
    large enough to have them. Warns when a lookup would scan many entries outside
    any cell, or a large namespace has no cells: a rebuild sorts that out."""
    found = admin.namespace_cells()
    if not found:
        return None
    parts, stray = [], []
    for n in found:
        if not n.cells:
            stray.append(f"{n.namespace!r} has {n.entries} entries and no cells")
            continue
        part = f"{n.namespace!r}: {n.cells} cells trained on {n.trained_on} of {n.entries} entries"
        if n.unclustered is not None:
            part += f", {n.unclustered} outside any cell"
            if n.unclustered > 2 * vector_cells.CLUSTER_AT:
                stray.append(f"{n.namespace!r} has {n.unclustered} entries outside any cell")
        parts.append(part)
    if stray:
        return Check(
            "index cells",
            "warn",
            "; ".join(stray) + ": each lookup scans them all; `semcache vacuum` sorts them "
            "into cells",
        )
    return Check("index cells", "info", "; ".join(parts))


@click.command(short_help="Check integrity, orphans, schema, WAL (exit 4 on problems).")
@click.argument("db", metavar="DB")
@json_option
@pass_state
def doctor(state: CliState, db: str, as_json: bool) -> None:
    """Check a cache file: SQLite driver and sqlite-vec versions, schema version,
    PRAGMA integrity_check, embedding model, whether the sign bits of a sample of
    vectors tell entries apart (the fast path's index; a warning suggests
    exact_search), entries and vectors in step (no orphans either way), stored
    calibrations measured with another model (ignored since a re-embed), WAL state
    and free space.

    Exits with 4 if a problem is found (5 if the file cannot be opened at all).

    \b
    Example:
      semcache doctor cache.db
      semcache doctor cache.db --json || alert "cache.db needs attention"
    """
    with closing(open_existing(db)) as database:
        checks = run_checks(state, db, database)
    failed = [c for c in checks if c.status == "problem"]
    if as_json:
        emit_json({"path": db, "ok": not failed, "checks": [asdict(c) for c in checks]})
    else:
        from rich.table import Table

        from .cli_common import console

        table = Table(show_header=False, box=None)
        table.add_column("status")
        table.add_column("check")
        table.add_column("detail", overflow="fold")
        marks = {"ok": "ok", "info": "  ", "warn": "WARN", "problem": "FAIL"}
        for check in checks:
            table.add_row(marks[check.status], check.name, check.detail)
        out = console()
        out.print(table)
        out.print(f"{len(failed)} problem(s) found" if failed else "no problems found")
    if failed:
        raise click.exceptions.Exit(EXIT_PROBLEMS)


@click.command(short_help="Apply pending schema migrations.")
@click.argument("db", metavar="DB")
@pass_state
def migrate(state: CliState, db: str) -> None:
    """Apply pending schema migrations (creates DB, empty, if it is missing).

    Any write also upgrades a file; this does it explicitly, e.g. before
    deploying a new version. A file newer than this version is refused (exit 5).

    \b
    Example:
      semcache migrate cache.db
    """
    existed = Path(db).exists()
    before, index_was_current = 0, True
    if existed:
        probe = Database(db, check_file=check_openable)  # refused before WAL mode
        try:
            with probe.reading() as conn:
                before = schema_version(conn)
                index_was_current = index_up_to_date(conn)
        finally:
            probe.close()
    with closing(open_or_create(db)) as database, database.reading() as conn:
        after = schema_version(conn)
        index_upgraded = not index_was_current and index_up_to_date(conn)
    if not existed:
        click.echo(f"{db}: created at schema version {after}")
    elif after == before and not index_upgraded:
        click.echo(f"{db}: already at schema version {after} (latest)")
    elif after == before:  # the schema was current, the vector index was not
        click.echo(f"{db}: at schema version {after} (latest); vector index upgraded")
    else:
        click.echo(f"{db}: migrated from schema version {before} to {after}")


@click.command(short_help="Purge expired entries, repack vectors, reclaim free space.")
@click.argument("db", metavar="DB")
@click.option(
    "--no-compact-vectors",
    "compact_vectors",
    flag_value=False,
    default=True,
    help="Skip rebuilding the vector table (faster; leaves sqlite-vec chunk holes).",
)
@json_option
@pass_state
def vacuum(state: CliState, db: str, compact_vectors: bool, as_json: bool) -> None:
    """Reclaim unused space, as SemanticCache.vacuum() does: delete expired
    entries, rebuild the vector table packed (sqlite-vec reuses a deleted
    row's space only once its whole 1024-row chunk is empty), VACUUM, and
    truncate the WAL. Does not load the embedding model.

    Needs about as much free disk as the file's size, and the write lock for
    the duration.

    \b
    Example:
      semcache vacuum cache.db
      semcache vacuum cache.db --json
    """
    with closing(open_existing(db, upgrade=True)) as database:
        store = Store(database)
        with progress(state, "vacuuming", None):
            purged = store.purge_expired()
            report = store.vacuum(compact_vectors)
    if as_json:
        emit_json({"path": db, **report._asdict(), "expired_purged": purged})
        return
    before, after = report.bytes_before, report.bytes_after
    click.echo(
        f"{db}: {format_size(before)} -> {format_size(after)} "
        f"({format_size(max(0, before - after))} reclaimed; {entries(purged)} expired purged, "
        f"{report.vectors_rebuilt} vectors repacked)"
    )
    if not report.wal_truncated:
        click.echo(
            f"{db}: another process is using the file, so its -wal file could not be emptied "
            "(the sizes above include it; a reader from before the vacuum also keeps the "
            "compacted pages there until it is done); run `semcache vacuum` again later to "
            "give the space back."
        )


@click.command(short_help="Delete expired entries now.")
@click.argument("db", metavar="DB")
@click.option("--namespace", "-n", default=None, help="Only this namespace (default: all).")
@click.option("--dry-run", is_flag=True, help="Only count the expired entries; delete nothing.")
@json_option
@pass_state
def purge(state: CliState, db: str, namespace: str | None, dry_run: bool, as_json: bool) -> None:
    """Delete every entry whose TTL has run out (of one namespace, or all).

    Expired entries are never served and writes remove a few in passing; this
    removes them all at once (then `semcache vacuum` gives the space back).
    Does not load the embedding model. Exits 2 on a bad namespace name, 5 if DB
    is missing or unusable.

    \b
    Example:
      semcache purge cache.db
      semcache purge cache.db --namespace support --dry-run
    """
    if namespace is not None:
        check_scope_name(namespace, "namespace", allow_empty=False)
    with closing(open_existing(db, upgrade=not dry_run)) as database:
        if dry_run:
            count = Admin(database).expired_count(time.time(), namespace)
        else:
            count = Store(database).purge_expired(namespace)
    where = f" in namespace {namespace!r}" if namespace is not None else ""
    if as_json:
        emit_json({"path": db, "namespace": namespace, "dry_run": dry_run, "expired": count})
    elif dry_run:
        click.echo(f"{db}: {entries(count)} expired{where} (dry run: nothing deleted)")
    else:
        click.echo(f"{db}: purged {entries(count)} expired{where}")


def _ttl_value(text: str | None) -> float | Unset | None:
    if text is None:
        return UNSET
    if text.strip().lower() in ("none", "never"):
        return None
    try:
        seconds = parse_duration(text)
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, param_hint="--ttl") from exc
    if seconds <= 0:
        raise click.BadParameter("must be a positive duration, or none", param_hint="--ttl")
    return seconds


def _limit_value(text: str | None) -> int | Unset | None:
    if text is None:
        return UNSET
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise click.BadParameter(
            f"{text!r} is not a positive integer or none", param_hint="--max-entries"
        )
    return value


@click.command(name="config", short_help="Show or set a namespace's TTL, limit and eviction.")
@click.argument("db", metavar="DB")
@click.option("--namespace", "-n", default=None, help="The namespace to show or change.")
@click.option("--ttl", default=None, help="Time to live of new entries (7d, 12h, 3600) or none.")
@click.option(
    "--sliding-ttl/--no-sliding-ttl", default=None, help="Whether a hit restarts the TTL."
)
@click.option("--max-entries", default=None, help="Entry limit of the namespace, or none.")
@click.option("--eviction", type=click.Choice(EVICTION_POLICIES), default=None)
@click.option("--on-duplicate", type=click.Choice(ON_DUPLICATE_CHOICES), default=None)
@click.option("--reset", is_flag=True, help="Drop the namespace's overrides first.")
@json_option
@pass_state
def config_command(
    state: CliState,
    db: str,
    namespace: str | None,
    ttl: str | None,
    sliding_ttl: bool | None,
    max_entries: str | None,
    eviction: str | None,
    on_duplicate: str | None,
    reset: bool,
    as_json: bool,
) -> None:
    """Show or change the lifecycle overrides stored in DB for a namespace, as
    SemanticCache.configure_namespace() does: every process using the file sees
    them. Without settings, shows the rules (all namespaces without --namespace).
    A lower --max-entries evicts at once. Settings left out keep their value;
    `none` means never expires / no limit. Does not load the embedding model.

    Shown values are the file's overrides over the library's defaults; an
    application's constructor arguments (ttl=, max_entries=, ...) are not in the file.
    Exits 2 on a bad value (or settings without --namespace), 5 if DB is
    missing or unusable.

    \b
    Example:
      semcache config cache.db
      semcache config cache.db --namespace news --ttl 10m --max-entries 2000 --eviction lru
      semcache config cache.db --namespace news --ttl none --reset
    """
    changes: dict[str, Any] = {
        key: value
        for key, value in (
            ("ttl", _ttl_value(ttl)),
            ("sliding_ttl", UNSET if sliding_ttl is None else sliding_ttl),
            ("max_entries", _limit_value(max_entries)),
            ("eviction", UNSET if eviction is None else eviction),
            ("on_duplicate", UNSET if on_duplicate is None else on_duplicate),
        )
        if not isinstance(value, Unset)
    }
    writing = bool(changes) or reset
    if writing and namespace is None:
        raise click.UsageError("--namespace is needed to change settings")
    if namespace is not None:
        check_scope_name(namespace, "namespace", allow_empty=False)
    evicted = 0
    with closing(open_existing(db, upgrade=writing)) as database:
        store, admin = Store(database), Admin(database)
        if writing:
            assert namespace is not None
            before = admin.count(EntryFilter(namespace=namespace))
            store.update_namespace_overrides(namespace, changes, reset=reset)
            evicted = max(0, before - admin.count(EntryFilter(namespace=namespace)))
        names = [namespace] if namespace is not None else admin.namespaces()
        policies = {name: policy_json(store, name) for name in names}
    if as_json:
        emit_json({"path": db, "namespaces": policies, **({"evicted": evicted} if writing else {})})
        return
    if writing:
        click.echo(
            f"{db}: namespace {namespace!r} updated"
            + (f"; {entries(evicted)} evicted" if evicted else "")
        )
    if not policies:
        click.echo(f"{db}: no namespaces yet")
    for name, policy in policies.items():
        overrides = policy["overrides"] if policy else {}
        stored = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "none"
        click.echo(f"{name}: {describe_policy(policy)}  [overrides: {stored}]")


def target_embedder(
    name: str, model: str | None, dim: int | None, base_url: str | None
) -> Embedder:
    """The embedder `reembed --to-embedder NAME` converts to (tests replace this)."""
    if name == "local":
        return LocalEmbedder()
    requested = model or "text-embedding-3-small"
    base, dimensions = split_openai_model(requested)
    return OpenAIEmbedder(base, dim=dim, dimensions=dimensions, base_url=base_url)


@click.command(short_help="Re-embed every entry with another embedding model (resumable).")
@click.argument("db", metavar="DB")
@click.option(
    "--to-embedder",
    "to_embedder",
    type=click.Choice(["local", "openai"]),
    required=True,
    help="The embedder to convert the file to.",
)
@click.option(
    "--embedding-model",
    "to_model",
    default=None,
    help="OpenAI-compatible model to convert to (with --to-embedder openai; default "
    "text-embedding-3-small); 'name@N' asks for N dimensions.",
)
@click.option(
    "--embedding-dim",
    "to_dim",
    type=click.IntRange(1),
    default=None,
    help="Vector size of an --embedding-model the tool does not know.",
)
@click.option(
    "--base-url",
    "to_base_url",
    default=None,
    help="OpenAI-compatible server (default: $OPENAI_BASE_URL); key from $OPENAI_API_KEY.",
)
@click.option("--batch-size", type=click.IntRange(1, 10_000), default=256, show_default=True)
@pass_state
def reembed(
    state: CliState,
    db: str,
    to_embedder: str,
    to_model: str | None,
    to_dim: int | None,
    to_base_url: str | None,
    batch_size: int,
) -> None:
    """Convert DB to another embedding model: every entry's query is embedded
    again, batch by batch, beside the live vectors (lookups keep working with
    the current model), then the file switches to the new model in one
    transaction. Expired entries are purged first.

    Resumable: if it stops (Ctrl-C, crash, API error), running the same command
    again continues where it stopped. Afterwards open the file with the new
    embedder's options (the old ones exit 6).

    Exits 1 if embedding fails (the file still works with its old model; re-run
    to continue), 2 on bad options, 5 if DB is missing or unusable.

    \b
    Example:
      semcache reembed cache.db --to-embedder openai --embedding-model text-embedding-3-small
      semcache reembed cache.db --to-embedder local --batch-size 64
    """
    if to_embedder == "local" and (to_model or to_dim or to_base_url):
        raise click.UsageError(
            "--embedding-model, --embedding-dim, --base-url: only for --to-embedder openai"
        )
    with closing(open_existing(db, upgrade=True)) as database:
        new = target_embedder(to_embedder, to_model, to_dim, to_base_url)
        store = Store(database)
        file_info = store.info()
        old_model = file_info.get("embedding_model")
        old = f"{old_model} ({file_info.get('embedding_dim')}-d)" if old_model else "no model"
        target = f"{new.model_id} ({new.dim}-d)"
        if (old_model, file_info.get("embedding_dim")) == (new.model_id, str(new.dim)):
            store.reembed_cancel()  # a stale staging towards the current model
            click.echo(f"{db}: already uses {target}; nothing to do")
            return
        pending = store.reembed_state()
        if pending is not None and (pending.model_id, pending.dim) == (new.model_id, new.dim):
            info(state, f"resuming: {pending.done} of {pending.total} entries already re-embedded")
        elif pending is not None:
            info(
                state,
                f"discarding an unfinished re-embed towards {pending.model_id} ({pending.dim}-d)",
            )
        with progress(state, f"re-embedding with {new.model_id}", None) as bar:
            converted = run_reembed(store, new, batch_size=batch_size, progress=bar.set_done)
    click.echo(
        f"{db}: re-embedded {entries(converted)}: {old} -> {target}; "
        f"open it with {embedder_options_for(new.model_id)}"
    )


def shell_command(db: str, sqlite3: str, sql: tuple[str, ...]) -> list[str]:
    """The sqlite3 command line that opens DB with sqlite-vec loaded."""
    import sqlite_vec

    extension = str(sqlite_vec.loadable_path())
    for suffix in (".so", ".dylib", ".dll"):  # the shell adds the platform's suffix itself
        if extension.endswith(suffix):
            extension = extension[: -len(suffix)]
    load = f'.load "{extension}"' if " " in extension else f".load {extension}"
    return [sqlite3, "-cmd", load, db, *sql]


@click.command(short_help="Open the sqlite3 shell with sqlite-vec loaded.")
@click.argument("db", metavar="DB")
@click.argument("sql", metavar="[SQL]...", nargs=-1)
@click.option(
    "--print", "print_only", is_flag=True, help="Print the sqlite3 command, do not run it."
)
@click.option(
    "--sqlite3",
    "sqlite3_path",
    default=None,
    help="The sqlite3 shell to run (default: sqlite3 on PATH).",
)
@pass_state
def shell(
    state: CliState, db: str, sql: tuple[str, ...], print_only: bool, sqlite3_path: str | None
) -> None:
    """Open DB in the sqlite3 shell with sqlite-vec loaded, so the vector table
    entry_vectors can be queried too. SQL arguments are run instead of an
    interactive session. Without a sqlite3 shell, prints the command to run.

    \b
    Example:
      semcache shell cache.db
      semcache shell cache.db "select id, query, hit_count from entries limit 5"
      semcache shell cache.db --print
    """
    if not Path(db).is_file():
        raise CliError(f"{db}: no such cache file", EXIT_BAD_FILE)
    found = shutil.which(sqlite3_path or "sqlite3")
    command = shell_command(db, found or sqlite3_path or "sqlite3", sql)
    if print_only:
        click.echo(shlex.join(command))
        return
    if found is None:
        click.echo(shlex.join(command))
        raise CliError(
            f"no sqlite3 shell found ({sqlite3_path or 'sqlite3 on PATH'}): install it (e.g. "
            "apt install sqlite3, brew install sqlite) and run the command above",
            EXIT_ERROR,
        )
    sys.stdout.flush()
    code = subprocess.call(command)
    if code:
        raise click.exceptions.Exit(code)


COMMANDS = [doctor, migrate, vacuum, purge, reembed, config_command, shell]
