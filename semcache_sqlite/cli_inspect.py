"""Read-only commands: ``stats``, ``ls``, ``show``, ``search``, ``get``.

``stats``/``ls``/``show`` open the file with ``Database``/``Admin`` only: no
embedder, no model load. ``search``/``get`` embed the query (``get`` not even
that for an exact repeat). None of them changes the file: ``get`` answers as
``SemanticCache.lookup`` would (the same decision code, decision.py, and the same
threshold precedence and guards), but is not counted in the hit/miss statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import click

from .admin import Admin, EntryFilter, SortOrder
from .cli_common import (
    EXIT_NOT_FOUND,
    SQLITE_COUNT,
    SQLITE_INT,
    CliState,
    closing,
    console,
    describe_policy,
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
    policy_json,
    resolve_embedder,
    scope_options,
)
from .db import Database, sidecar
from .decision import Judgement, judge
from .embedder_calls import embed_one
from .embedders import Embedder
from .migrate import latest_version
from .quality import GuardConfig
from .quality_store import FILE_WIDE, QUALITY_SCHEMA_VERSION, QualityStore, resolve_rule
from .store import EntryRow, Scope, Store
from .validation import FloatVector, check_query, query_hash


def _rate(hits: int, misses: int) -> float:
    return hits / (hits + misses) if hits + misses else 0.0


@click.command(short_help="Hit rate, time saved, size, model and schema of a file.")
@click.argument("db", metavar="DB")
@json_option
@pass_state
def stats(state: CliState, db: str, as_json: bool) -> None:
    """Hits, misses, hit rate and time saved, overall and per namespace, plus the
    file's size, embedding model and schema version.

    Time saved is hits x (mean LLM latency - mean hit latency), as the library's
    stats() computes it; "n/a" for a namespace whose cache never timed an LLM call.
    The lifecycle column is what the file itself says about each namespace (its
    `semcache config` overrides over the defaults); an application's
    constructor arguments (ttl=, max_entries=, ...) are not stored in the file.

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
        policies = {name: policy_json(admin.store, name) for name in counters}
    namespaces: dict[str, Any] = {}
    for name, (entries, hits, misses) in counters.items():
        namespaces[name] = {
            "policy": policies[name],
            "entries": entries,
            "hits": hits,
            "misses": misses,
            "total_requests": hits + misses,
            "hit_rate": _rate(hits, misses),
            "time_saved_seconds": None if saved is None else saved.get(name),
        }
    hits = sum(n["hits"] for n in namespaces.values())
    misses = sum(n["misses"] for n in namespaces.values())
    overall = {
        "path": db,
        "file_size": file_size(db),
        "wal_size": file_size(sidecar(db, "-wal")),
        "schema_version": facts.schema_version,
        "latest_schema_version": latest_version(),
        "embedding_model": facts.embedding_model,
        "embedding_dim": facts.embedding_dim,
        "entries": sum(n["entries"] for n in namespaces.values()),
        "hits": hits,
        "misses": misses,
        "total_requests": hits + misses,
        "hit_rate": _rate(hits, misses),
        "time_saved_seconds": _total_saved(saved),
        "namespaces": namespaces,
    }
    if as_json:
        emit_json(overall)
        return
    _print_stats(overall)


def _total_saved(saved: dict[str, float | None] | None) -> float | None:
    """Sum over the namespaces that timed an LLM call; None when none did."""
    known = [s for s in (saved or {}).values() if s is not None]
    return sum(known) if known else None


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
    table.add_column("lifecycle (file's overrides)", footer="")
    for name, row in overall["namespaces"].items():
        table.add_row(
            name,
            f"{row['entries']:,}",
            f"{row['hits']:,}",
            f"{row['misses']:,}",
            rate(row),
            saved(row["time_saved_seconds"]),
            describe_policy(row["policy"]),
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
@click.option("--limit", type=SQLITE_COUNT, default=50, show_default=True)
@click.option("--offset", type=SQLITE_COUNT, default=0, show_default=True)
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
    if rows and offset + len(rows) < total:  # --limit 0 has no next page to point to
        caption += f" (next page: --offset {offset + len(rows)})"
    table = Table(caption=caption, caption_justify="left")
    cells = [
        [
            str(row.id),
            row.namespace,
            row.user_id or "-",
            format_time(row.created_at),
            "never" if row.expires_at is None else format_time(row.expires_at),
            str(row.hit_count),
            str(row.version),
            one_line(row.query, 200),
            one_line(row.response, 200),
        ]
        for row in rows
    ]
    headers = [
        "id",
        "namespace",
        "user",
        "created (UTC)",
        "expires (UTC)",
        "hits",
        "ver",
        "query",
        "response",
    ]
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
@click.argument("entry_id", metavar="ID", type=SQLITE_INT)
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
        elif key == "expires_at":
            value = "never" if value is None else format_time(value)
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
#
# `get` and `search` decide hit or miss with decision.judge and quality_store.resolve_rule,
# the code SemanticCache.lookup() runs, so the command answers as the library would. They
# read the file through Store/QualityStore only: no migration, no counters, no writes, and
# no model load when the exact-match path answers.


@dataclass(frozen=True)
class _Rule:
    """How a lookup in one namespace of this file is judged, and where the threshold came from."""

    threshold: float
    guards: GuardConfig
    source: str  # for humans: "--threshold", "the calibration of namespace 'faq'", ...


@dataclass(frozen=True)
class _Peek:
    store: Store
    embedder: Embedder
    has_vectors: bool
    rule: _Rule


def _peek_tools(
    state: CliState,
    db: str,
    database: Database,
    namespace: str,
    threshold: float | None,
    guards: bool,
) -> _Peek:
    admin = Admin(database)
    facts = admin.facts()
    embedder = resolve_embedder(state, db, facts.info)  # refuses another model up front
    stored = None
    if facts.schema_version >= QUALITY_SCHEMA_VERSION:  # never migrated here: older = none
        stored = QualityStore(database).calibration_for(namespace, embedder.model_id)
    config = GuardConfig() if guards else GuardConfig.off()
    limit, config = resolve_rule(stored, threshold, None, config, embedder)
    if threshold is not None:
        source = "--threshold"
    elif stored is not None and stored.namespace != FILE_WIDE:
        source = f"the calibration of namespace {stored.namespace!r}"
    elif stored is not None:
        source = "the file's calibration"
    else:
        source = "the embedder's default" + ("" if guards else " for plain cosine")
    return _Peek(admin.store, embedder, facts.has_vector_table, _Rule(limit, config, source))


def _decide(peek: _Peek, scope: Scope, query: str, vector: FloatVector | None = None) -> Judgement:
    """What lookup() would do: the exact-match path first (no embedding), then judge."""
    exact = peek.store.find_exact(scope, query_hash(query))
    if exact is not None:
        return Judgement.exact_match(exact, peek.rule.threshold)
    if not peek.has_vectors:  # nothing was ever embedded into this file
        return Judgement(peek.rule.threshold)
    if vector is None:
        vector = embed_one(peek.embedder, query)
    unseen = getattr(peek.embedder, "unseen_text", None)
    return judge(
        peek.store, scope, vector, query, peek.rule.threshold, peek.rule.guards, unseen=unseen
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _result_json(
    row: EntryRow, similarity: float, verdict: Judgement | None = None
) -> dict[str, Any]:
    """An entry with its similarity, and its score if it is the entry lookup() judged."""
    score, hit = None, False
    if verdict is not None and verdict.row is not None and verdict.row.id == row.id:
        score, hit = verdict.score, verdict.hit
    return {
        "similarity": round(similarity, 6),
        "score": _round(score),
        "would_hit": hit,
        **entry_json(row),
    }


threshold_option = click.option(
    "--threshold",
    "-t",
    type=float,
    default=None,
    help="Score in [0, 1] at or above which a lookup hits, as lookup(threshold=...) "
    "(default, as the library: the namespace's stored calibration, else the file's, "
    "else the embedder's default for the guard setting).",
)

guards_option = click.option(
    "--guards/--no-guards",
    default=True,
    show_default=True,
    help="Judge with the default guards, or plain cosine as SemanticCache(guards=False).",
)


@click.command(short_help="Nearest cached queries with similarity and the would-hit mark.")
@click.argument("db", metavar="DB")
@click.argument("query", metavar="TEXT")
@scope_options
@click.option("-k", "k", type=click.IntRange(1, 4096), default=5, show_default=True)
@threshold_option
@guards_option
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
    guards: bool,
    as_json: bool,
) -> None:
    """The k nearest cached queries in one scope with their similarity, marking
    with * the entry a lookup would serve (same rule as lookup(): exact repeat,
    threshold, guards). The guards judge the nearest entry only, so only it has
    a score. Not counted in the statistics.

    \b
    Example:
      semcache search cache.db "How can I reset my password?" -k 10 --threshold 0.85
    """
    check_query(query)
    with closing(open_existing(db)) as database:
        peek = _peek_tools(state, db, database, namespace, threshold, guards)
        scope = Scope(namespace, user_id, context_key)
        found: list[tuple[EntryRow, float]] = []
        verdict = Judgement(peek.rule.threshold)
        if peek.has_vectors:
            vector = embed_one(peek.embedder, query)
            found = [(r, min(1.0, 1.0 - d)) for r, d in peek.store.nearest(scope, vector, k)]
            verdict = _decide(peek, scope, query, vector)
    results = [_result_json(row, sim, verdict) for row, sim in found]
    served = verdict.row.id if verdict.hit and verdict.row is not None else None
    if as_json:
        emit_json(
            {
                "query": query,
                "threshold": peek.rule.threshold,
                "threshold_source": peek.rule.source,
                "guards": list(peek.rule.guards.enabled),
                "lookup": {
                    "hit": verdict.hit,
                    "exact": verdict.exact,
                    "entry_id": served,
                    "similarity": _round(verdict.similarity),
                    "score": _round(verdict.score),
                },
                "results": results,
            }
        )
        return
    from rich.table import Table

    caption = (
        f"threshold {peek.rule.threshold:.3f} from {peek.rule.source}, guards "
        f"{'on' if peek.rule.guards.enabled else 'off'}; * = the entry lookup() would serve "
        "(the guards judge the nearest entry only)"
    )
    table = Table(caption=caption, caption_justify="left")
    cells = [
        [
            str(rank),
            str(result["id"]),
            f"{result['similarity']:.4f}",
            "" if result["score"] is None else f"{result['score']:.4f}",
            "*" if result["would_hit"] else "",
            result["user_id"] or "-",
            one_line(result["query"], 200),
            one_line(result["response"], 200),
        ]
        for rank, result in enumerate(results, start=1)
    ]
    headers = ["#", "id", "similarity", "score", "hit", "user", "query", "response"]
    _print_rows(table, headers, {"#", "id", "similarity", "score"}, cells)
    if not results:
        info(state, "no entries in this scope")
    elif served is not None and not any(r["would_hit"] for r in results):
        info(state, f"lookup() would serve entry {served} (exact repeat), not among these")


@click.command(short_help="What the cache would answer (exit 0 hit, 3 miss).")
@click.argument("db", metavar="DB")
@click.argument("query", metavar="TEXT")
@scope_options
@threshold_option
@guards_option
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
    guards: bool,
    as_json: bool,
) -> None:
    """What the cache would answer for TEXT, without calling an LLM.

    On a hit prints the cached response and exits 0; on a miss prints nothing on
    stdout and exits 3. The same decision as the library's lookup() (exact
    repeat first, then the nearest entry's score - its similarity minus the
    guards' penalties - against the threshold, stored calibrations included),
    but not counted in the statistics and nothing is written. An application's
    verify= hook is not run. --json prints {hit, exact, threshold, similarity,
    score, penalties, entry} on a hit and {..., closest} (the nearest entry, or
    null) on a miss.

    \b
    Example:
      answer=$(semcache get cache.db "How can I reset my password?") || echo "miss"
      semcache get cache.db "reset password" --user alice --json
    """
    check_query(query)
    with closing(open_existing(db)) as database:
        peek = _peek_tools(state, db, database, namespace, threshold, guards)
        verdict = _decide(peek, Scope(namespace, user_id, context_key), query)
    rule, row = peek.rule, verdict.row
    if as_json:
        best = None if row is None else _result_json(row, verdict.similarity or 0.0, verdict)
        emit_json(
            {
                "hit": verdict.hit,
                "exact": verdict.exact,
                "threshold": rule.threshold,
                "threshold_source": rule.source,
                "guards": list(rule.guards.enabled),
                "similarity": _round(verdict.similarity),
                "score": _round(verdict.score),
                "penalties": {k: round(v, 6) for k, v in verdict.penalties.items()},
                "entry" if verdict.hit else "closest": best,
            }
        )
    elif row is None:
        info(state, "miss: no entries in this scope")
    else:
        if verdict.hit:
            click.echo(row.response)
        info(state, _explain(verdict, row, rule))
    if not verdict.hit:
        raise click.exceptions.Exit(EXIT_NOT_FOUND)


def _explain(verdict: Judgement, row: EntryRow, rule: _Rule) -> str:
    """One line on stderr: why the lookup hits or misses, with the threshold it used."""
    limit = f"threshold {rule.threshold:.3f} from {rule.source}"
    if verdict.exact:
        return f"hit: entry {row.id} (exact repeat: no embedding, no threshold)"
    similarity, score = verdict.similarity or 0.0, verdict.score or 0.0
    if verdict.hit:
        return f"hit: entry {row.id} (similarity {similarity:.4f}, score {score:.4f} >= {limit})"
    if verdict.lowered_by_guards:
        charged = ", ".join(f"{k} -{v:.3f}" for k, v in verdict.penalties.items())
        return (
            f"miss: the closest entry ({row.id}) has similarity {similarity:.4f} but the guards "
            f"({charged}) lowered the score to {score:.4f} < {limit}"
        )
    return f"miss: the closest entry ({row.id}) has similarity {similarity:.4f} < {limit}"


COMMANDS = [stats, ls_command, show, search, get]
