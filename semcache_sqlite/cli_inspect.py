"""Read-only commands: ``stats``, ``ls``, ``show``, ``search``, ``get``.

``stats``/``ls``/``show`` open the file with ``Database``/``Admin`` only: no
embedder, no model load. ``search``/``get`` embed the query (``get`` not even
that for an exact repeat). None of them changes the file: ``get`` answers as
``SemanticCache.lookup`` would, but is not counted in the hit/miss statistics.
"""

from __future__ import annotations

from typing import Any, cast

import click

from .admin import Admin, EntryFilter, SortOrder
from .cli_common import (
    EXIT_NOT_FOUND,
    CliState,
    closing,
    console,
    emit_json,
    entry_json,
    file_size,
    format_size,
    format_time,
    info,
    json_option,
    one_line,
    open_existing,
    pass_state,
    resolve_embedder,
    scope_options,
)
from .db import Database
from .embedders import Embedder
from .migrate import latest_version
from .store import EntryRow, Scope, Store
from .validation import as_unit_vector, check_query, check_threshold, query_hash, similarity_hits


def _rate(hits: int, misses: int) -> float:
    return hits / (hits + misses) if hits + misses else 0.0


@click.command(short_help="Hit rate, time saved, size, model and schema of a file.")
@click.argument("db", metavar="DB")
@json_option
@pass_state
def stats(state: CliState, db: str, as_json: bool) -> None:
    """Hits, misses, hit rate and time saved, overall and per namespace, plus the
    file's size, embedding model and schema version.

    Time saved shows "n/a" until the file records LLM latencies.

    \b
    Example:
      semcache stats cache.db
      semcache stats cache.db --json | jq .hit_rate
    """
    with closing(open_existing(db)) as database:
        admin = Admin(database)
        facts = admin.facts()
        counters = admin.namespace_counters()
        saved = admin.time_saved()
    namespaces: dict[str, Any] = {}
    for name, (entries, hits, misses) in counters.items():
        namespaces[name] = {
            "entries": entries,
            "hits": hits,
            "misses": misses,
            "total_requests": hits + misses,
            "hit_rate": _rate(hits, misses),
            "time_saved_seconds": None if saved is None else saved.get(name, 0.0),
        }
    hits = sum(n["hits"] for n in namespaces.values())
    misses = sum(n["misses"] for n in namespaces.values())
    overall = {
        "path": db,
        "file_size": file_size(db),
        "wal_size": file_size(db + "-wal"),
        "schema_version": facts.schema_version,
        "latest_schema_version": latest_version(),
        "embedding_model": facts.embedding_model,
        "embedding_dim": facts.embedding_dim,
        "entries": sum(n["entries"] for n in namespaces.values()),
        "hits": hits,
        "misses": misses,
        "total_requests": hits + misses,
        "hit_rate": _rate(hits, misses),
        "time_saved_seconds": None if saved is None else sum(saved.values()),
        "namespaces": namespaces,
    }
    if as_json:
        emit_json(overall)
        return
    _print_stats(overall)


def _print_stats(overall: dict[str, Any]) -> None:
    from rich.table import Table

    def saved(value: float | None) -> str:
        return "n/a" if value is None else f"{value:,.1f} s"

    def rate(row: dict[str, Any]) -> str:
        return f"{row['hit_rate']:.1%}" if row["total_requests"] else "-"

    out = console()
    model = overall["embedding_model"] or "(none yet: no entry stored)"
    dim = f", {overall['embedding_dim']}-d" if overall["embedding_dim"] else ""
    out.print(f"file:    {overall['path']}")
    out.print(
        f"size:    {format_size(overall['file_size'])} (+ {format_size(overall['wal_size'])} WAL)"
    )
    out.print(f"model:   {model}{dim}")
    out.print(f"schema:  {overall['schema_version']} (latest {overall['latest_schema_version']})")
    table = Table(show_footer=True)
    table.add_column("namespace", footer="all")
    for name, key in (("entries", "entries"), ("hits", "hits"), ("misses", "misses")):
        table.add_column(name, justify="right", footer=f"{overall[key]:,}")
    table.add_column("hit rate", justify="right", footer=rate(overall))
    table.add_column("time saved", justify="right", footer=saved(overall["time_saved_seconds"]))
    for name, row in overall["namespaces"].items():
        table.add_row(
            name,
            f"{row['entries']:,}",
            f"{row['hits']:,}",
            f"{row['misses']:,}",
            rate(row),
            saved(row["time_saved_seconds"]),
        )
    out.print(table)


SORTS = ("newest", "oldest", "most-hit")


@click.command(name="ls", short_help="List entries, filtered and paged.")
@click.argument("db", metavar="DB")
@click.option("--namespace", "-n", default=None, help="Only this namespace.")
@click.option(
    "--user", "-u", "user_id", default=None, help='Only this user id (--user "" = shared entries).'
)
@click.option(
    "--match", "-m", default=None, help="Case-insensitive substring of the query or response."
)
@click.option("--sort", type=click.Choice(SORTS), default="newest", show_default=True)
@click.option("--limit", type=click.IntRange(0), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@json_option
@pass_state
def ls_command(
    state: CliState,
    db: str,
    namespace: str | None,
    user_id: str | None,
    match: str | None,
    sort: str,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List entries, filtered and paged.

    \b
    Example:
      semcache ls cache.db --namespace support --match "password" --sort most-hit
      semcache ls cache.db --limit 100 --offset 100 --json
    """
    flt = EntryFilter(namespace=namespace, user_id=user_id, match=match)
    with closing(open_existing(db)) as database:
        admin = Admin(database)
        total = admin.count(flt)
        rows = admin.list_entries(flt, cast(SortOrder, sort), limit, offset)
    if as_json:
        emit_json(
            {
                "total": total,
                "offset": offset,
                "limit": limit,
                "entries": [entry_json(r) for r in rows],
            }
        )
        return
    from rich.table import Table

    shown = f"{offset + 1}-{offset + len(rows)}" if rows else "none"
    caption = f"entries {shown} of {total:,}"
    if offset + len(rows) < total:
        caption += f" (next page: --offset {offset + len(rows)})"
    table = Table(caption=caption, caption_justify="left")
    cells = [
        [
            str(row.id),
            row.namespace,
            row.user_id or "-",
            format_time(row.created_at),
            str(row.hit_count),
            str(row.version),
            one_line(row.query, 200),
            one_line(row.response, 200),
        ]
        for row in rows
    ]
    headers = ["id", "namespace", "user", "created (UTC)", "hits", "ver", "query", "response"]
    _print_rows(table, headers, {"id", "hits", "ver"}, cells)


def _print_rows(table: Any, headers: list[str], right: set[str], rows: list[list[str]]) -> None:
    """Short columns keep their full width (at most 24); the last two (query and
    response) share what is left of the console's width, one line each, cut with
    an ellipsis. (Rich would squeeze the short columns away on narrow terminals.)"""
    out = console()
    fixed = [min(24, max([len(h), *(len(r[i]) for r in rows)])) for i, h in enumerate(headers[:-2])]
    for name, width in zip(headers[:-2], fixed, strict=False):
        justify = "right" if name in right else "left"
        table.add_column(name, justify=justify, no_wrap=True, width=width, overflow="ellipsis")
    room = out.width - sum(fixed) - 3 * len(headers) - 1  # borders and padding
    wanted = [
        max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers) if i >= len(fixed)
    ]
    query = max(10, min(wanted[0], room * 2 // 5 if wanted[1] > room - wanted[0] else wanted[0]))
    response = max(10, min(wanted[1], room - query))
    for name, width in zip(headers[-2:], (query, response), strict=True):
        table.add_column(name, no_wrap=True, width=width, overflow="ellipsis")
    for row in rows:
        table.add_row(*row)
    out.print(table)


@click.command(short_help="Show one entry in full.")
@click.argument("db", metavar="DB")
@click.argument("entry_id", metavar="ID", type=int)
@json_option
@pass_state
def show(state: CliState, db: str, entry_id: int, as_json: bool) -> None:
    """Show one entry in full: query, response, scope, times, counters, metadata.

    Exits with 3 if there is no entry with that id.

    \b
    Example:
      semcache show cache.db 42
      semcache show cache.db 42 --json | jq -r .response
    """
    with closing(open_existing(db)) as database:
        admin = Admin(database)
        row = admin.store.get(entry_id)  # EntryNotFoundError -> exit 3
        has_vector = bool(admin.vectors([entry_id]))
    record = entry_json(row)
    record["has_vector"] = has_vector
    if as_json:
        emit_json(record)
        return
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in record.items():
        if key in ("created_at", "updated_at", "last_hit_at"):
            value = format_time(value)
        elif key == "metadata":
            value = _compact_json(value)
        elif key in ("user_id", "context_key") and not value:
            value = "(none)"
        table.add_row(key, str(value))
    console().print(table)


def _compact_json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, sort_keys=True)


# -- lookups without side effects ---------------------------------------------------------


def _lookup_tools(state: CliState, db: str, database: Database) -> tuple[Store, Embedder, bool]:
    admin = Admin(database)
    facts = admin.facts()
    embedder = resolve_embedder(state, db, facts.info)  # refuses another model up front
    return admin.store, embedder, facts.has_vector_table


def _nearest(
    store: Store, embedder: Embedder, scope: Scope, query: str, k: int
) -> list[tuple[EntryRow, float]]:
    vector = as_unit_vector(embedder.embed([query])[0], embedder.dim)
    return [(row, min(1.0, 1.0 - distance)) for row, distance in store.nearest(scope, vector, k)]


def _threshold(value: float | None, embedder: Embedder) -> float:
    return check_threshold(embedder.default_threshold if value is None else value)


def _result_json(row: EntryRow, similarity: float, threshold: float) -> dict[str, Any]:
    return {
        "similarity": round(similarity, 6),
        "would_hit": similarity_hits(similarity, threshold),
        **entry_json(row),
    }


threshold_option = click.option(
    "--threshold",
    "-t",
    type=float,
    default=None,
    help="Cosine similarity in [0, 1] at or above which a lookup hits "
    "(default: the file's stored calibration, else the embedder's default).",
)


@click.command(short_help="Nearest cached queries with similarity and would-hit marks.")
@click.argument("db", metavar="DB")
@click.argument("query", metavar="TEXT")
@scope_options
@click.option("-k", "k", type=click.IntRange(1, 4096), default=5, show_default=True)
@threshold_option
@json_option
@pass_state
def search(
    state: CliState,
    db: str,
    query: str,
    namespace: str,
    user_id: str,
    context_key: str,
    k: int,
    threshold: float | None,
    as_json: bool,
) -> None:
    """The k nearest cached queries in one scope with their similarity, marking
    those a lookup would hit at the threshold. Not counted in the statistics.

    \b
    Example:
      semcache search cache.db "How can I reset my password?" -k 10 --threshold 0.85
    """
    check_query(query)
    with closing(open_existing(db)) as database:
        store, embedder, has_vectors = _lookup_tools(state, db, database)
        limit = _threshold(threshold, embedder)
        scope = Scope(namespace, user_id, context_key)
        found = _nearest(store, embedder, scope, query, k) if has_vectors else []
    results = [_result_json(row, sim, limit) for row, sim in found]
    if as_json:
        emit_json({"query": query, "threshold": limit, "results": results})
        return
    from rich.table import Table

    table = Table(caption=f"threshold {limit:.3f}; * = would hit", caption_justify="left")
    cells = [
        [
            str(rank),
            str(result["id"]),
            f"{result['similarity']:.4f}",
            "*" if result["would_hit"] else "",
            result["user_id"] or "-",
            one_line(result["query"], 200),
            one_line(result["response"], 200),
        ]
        for rank, result in enumerate(results, start=1)
    ]
    headers = ["#", "id", "similarity", "hit", "user", "query", "response"]
    _print_rows(table, headers, {"#", "id", "similarity"}, cells)
    if not results:
        info(state, "no entries in this scope")


@click.command(short_help="What the cache would answer (exit 0 hit, 3 miss).")
@click.argument("db", metavar="DB")
@click.argument("query", metavar="TEXT")
@scope_options
@threshold_option
@json_option
@pass_state
def get(
    state: CliState,
    db: str,
    query: str,
    namespace: str,
    user_id: str,
    context_key: str,
    threshold: float | None,
    as_json: bool,
) -> None:
    """What the cache would answer for TEXT, without calling an LLM.

    On a hit prints the cached response and exits 0; on a miss prints nothing on
    stdout and exits 3. Same rules as the library's lookup() (exact repeat first,
    then the nearest entry at or above the threshold), but not counted in the
    statistics. --json prints {hit, exact, threshold, similarity, entry} on a
    hit and {..., closest} (the nearest entry, or null) on a miss.

    \b
    Example:
      answer=$(semcache get cache.db "How can I reset my password?") || echo "miss"
      semcache get cache.db "reset password" --user alice --json
    """
    check_query(query)
    with closing(open_existing(db)) as database:
        store, embedder, has_vectors = _lookup_tools(state, db, database)
        limit = _threshold(threshold, embedder)
        scope = Scope(namespace, user_id, context_key)
        exact = store.find_exact(scope, query_hash(query))
        found: list[tuple[EntryRow, float]] = []
        if exact is not None:
            found = [(exact, 1.0)]
        elif has_vectors:
            found = _nearest(store, embedder, scope, query, 1)
    hit = bool(found) and similarity_hits(found[0][1], limit)
    if as_json:
        best = _result_json(*found[0], limit) if found else None
        emit_json(
            {
                "hit": hit,
                "exact": exact is not None,
                "threshold": limit,
                "similarity": best["similarity"] if best else None,
                "entry" if hit else "closest": best,
            }
        )
    elif hit:
        row, similarity = found[0]
        click.echo(row.response)
        how = "exact repeat" if exact is not None else f"similarity {similarity:.4f}"
        info(state, f"hit: entry {row.id} ({how}, threshold {limit:.3f})")
    elif found:
        row, similarity = found[0]
        info(
            state,
            f"miss: the closest entry ({row.id}) has similarity {similarity:.4f} "
            f"< threshold {limit:.3f}",
        )
    else:
        info(state, "miss: no entries in this scope")
    if not hit:
        raise click.exceptions.Exit(EXIT_NOT_FOUND)


COMMANDS = [stats, ls_command, show, search, get]
