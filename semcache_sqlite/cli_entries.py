"""Commands that change entries: ``put``, ``update``, ``rm``.

``put`` embeds (and may create the file); ``update`` and ``rm`` never load the
embedding model and refuse a missing file.
"""

from __future__ import annotations

import time
from typing import Any

import click

from .admin import Admin, EntryFilter
from .cli_common import (
    EXIT_NOT_FOUND,
    SQLITE_INT,
    CliError,
    CliState,
    closing,
    emit_json,
    entries,
    json_option,
    open_existing,
    open_for_write,
    parse_duration,
    parse_metadata,
    pass_state,
    scope_options,
    text_argument,
)
from .store import Store
from .validation import check_query, check_response, check_scope_name
from .warmup import EntryWriter, WarmRow


@click.command(short_help="Store a response for a query.")
@click.argument("db", metavar="DB")
@click.argument("query", metavar="QUERY")
@click.argument("response", metavar="RESPONSE")
@scope_options
@click.option(
    "--metadata",
    default=None,
    help="JSON object stored with the entry (when replacing, default: keep the old).",
)
@json_option
@pass_state
def put(
    state: CliState,
    db: str,
    query: str,
    response: str,
    namespace: str,
    user_id: str,
    context_key: str,
    metadata: str | None,
    as_json: bool,
) -> None:
    """Store RESPONSE for QUERY (creates DB if missing). RESPONSE "-" reads stdin.

    Storing the same query again in the same namespace, user and context
    replaces the response (version + 1) instead of adding a duplicate.

    \b
    Example:
      semcache put cache.db "How do I reset my password?" "Settings > Account > Reset."
      generate-answer | semcache put cache.db "What is our refund policy?" - -n support
    """
    response = text_argument(response)
    row = WarmRow(
        line=0,
        query=check_query(query),
        response=check_response(response),
        namespace=check_scope_name(namespace, "namespace", allow_empty=False),
        user_id=check_scope_name(user_id, "user_id", allow_empty=True),
        context_key=context_key,
        metadata=parse_metadata(metadata),
    )
    database, embedder = open_for_write(state, db)
    with closing(database):
        ids, counts = EntryWriter(database, embedder).write_batch([row])
        entry = Store(database).get(int(ids[0] or 0))
    status = "added" if counts.added else "updated" if counts.updated else "unchanged"
    if as_json:
        emit_json({"id": entry.id, "status": status, "version": entry.version})
    else:
        click.echo(f"{status} entry {entry.id} (version {entry.version})")


@click.command(short_help="Change an entry's response or metadata.")
@click.argument("db", metavar="DB")
@click.argument("entry_id", metavar="ID", type=SQLITE_INT)
@click.option("--response", "-r", default=None, help='New response ("-" reads stdin).')
@click.option("--metadata", default=None, help="New metadata (a JSON object; replaces the old).")
@click.option(
    "--if-version",
    type=SQLITE_INT,
    default=None,
    help="Only update if the entry is still at this version (optimistic locking).",
)
@pass_state
def update(
    state: CliState,
    db: str,
    entry_id: int,
    response: str | None,
    metadata: str | None,
    if_version: int | None,
) -> None:
    """Change an entry's response and/or metadata in place (version + 1).

    The query and its vector stay as they are, so no embedding model is loaded.
    Exits with 3 if there is no entry with that id.

    \b
    Example:
      semcache update cache.db 42 --response "Settings > Security > Reset password."
      semcache update cache.db 42 --metadata '{"reviewed": true}' --if-version 3
    """
    if response is None and metadata is None:
        raise click.UsageError("nothing to change: give --response and/or --metadata")
    new_response = None if response is None else check_response(text_argument(response))
    new_metadata = parse_metadata(metadata)
    with closing(open_existing(db, upgrade=True)) as database:
        row = Store(database).replace(
            entry_id, response=new_response, metadata=new_metadata, expected_version=if_version
        )
    click.echo(f"updated entry {row.id} (version {row.version})")


@click.command(short_help="Delete entries by id, namespace, user or age.")
@click.argument("db", metavar="DB")
@click.argument("ids", metavar="[ID]...", nargs=-1, type=SQLITE_INT)
@click.option("--namespace", "-n", default=None, help="Delete the entries of this namespace.")
@click.option(
    "--user", "-u", "user_id", default=None, help='Delete the entries of this user ("" = shared).'
)
@click.option(
    "--older-than",
    default=None,
    metavar="AGE",
    help="Delete entries last written longer ago than AGE: 7d, 12h, 30m, 45s or seconds.",
)
@click.option("--all", "everything", is_flag=True, help="Delete every entry.")
@click.option("--dry-run", is_flag=True, help="Only show how many entries would be deleted.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def rm(
    state: CliState,
    db: str,
    ids: tuple[int, ...],
    namespace: str | None,
    user_id: str | None,
    older_than: str | None,
    everything: bool,
    dry_run: bool,
    yes: bool,
) -> None:
    """Delete entries (and their vectors): by id, or in bulk by --namespace,
    --user and/or --older-than (combined with AND), or --all.

    Bulk deletes ask for confirmation unless --yes; --dry-run only counts.
    Hit/miss counters are kept. Exits with 3 if an id does not exist (the
    others are still deleted).

    \b
    Example:
      semcache rm cache.db 17 42
      semcache rm cache.db --namespace staging --older-than 7d --dry-run
      semcache rm cache.db --user alice --yes
    """
    filters = namespace is not None or user_id is not None or older_than is not None
    if ids and (filters or everything):
        raise click.UsageError("give entry ids or filters (--namespace/--user/--older-than/--all)")
    if not ids and not filters and not everything:
        raise click.UsageError(
            "nothing selected: give entry ids, --namespace, --user, --older-than or --all"
        )
    if everything and filters:
        raise click.UsageError("--all cannot be combined with filters")
    cutoff = None if older_than is None else time.time() - parse_duration(older_than)
    with closing(open_existing(db, upgrade=not dry_run)) as database:
        admin = Admin(database)
        if ids:
            _rm_ids(state, admin, ids, dry_run)
            return
        flt = EntryFilter(namespace=namespace, user_id=user_id, updated_before=cutoff)
        count = admin.count(flt)
        what = _describe(namespace, user_id, older_than)
        if dry_run:
            click.echo(f"would delete {entries(count)}{what}")
            return
        if count == 0:
            click.echo(f"nothing to delete{what}")
            return
        if not yes:
            click.confirm(f"Delete {entries(count)}{what} from {db}?", abort=True, err=True)
        deleted = admin.delete(flt)
    click.echo(f"deleted {entries(deleted)}{what}")


def _rm_ids(state: CliState, admin: Admin, ids: tuple[int, ...], dry_run: bool) -> None:
    found = admin.existing_ids(ids)
    missing = [i for i in dict.fromkeys(ids) if i not in found]
    if dry_run:
        click.echo(f"would delete {entries(len(found))}")
    elif found:
        deleted = admin.delete(EntryFilter(ids=tuple(sorted(found))))
        click.echo(f"deleted {entries(deleted)}")
    if missing:
        listed = ", ".join(str(i) for i in missing)
        raise CliError(f"no cache entry with id {listed}", EXIT_NOT_FOUND)


def _describe(namespace: str | None, user_id: str | None, older_than: str | None) -> str:
    parts: list[Any] = []
    if namespace is not None:
        parts.append(f"namespace {namespace!r}")
    if user_id is not None:
        parts.append(f"user {user_id!r}" if user_id else "shared (no user)")
    if older_than is not None:
        parts.append(f"older than {older_than}")
    return f" ({', '.join(parts)})" if parts else ""


COMMANDS = [put, update, rm]
