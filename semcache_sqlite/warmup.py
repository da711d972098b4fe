"""Warm-up files (``semcache warm``): JSONL objects or CSV rows of
``query, response[, namespace, user_id]`` (JSONL may add ``metadata`` and
``context_key``), written in batches: one transaction and one embedding call
per batch. Re-running is cheap and changes nothing: a query already stored in
the same namespace, user and context with the same response is skipped without
embedding; one with another response is replaced (version + 1). No SQL here:
writes go through ``Store`` and ``Admin``.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from .admin import Admin
from .db import Database
from .embedder_calls import embed_many
from .embedders import Embedder
from .errors import InvalidFileError, InvalidInputError
from .inputs import (
    MAX_REPORTED_PROBLEMS,
    Advance,
    LineError,
    checked,
    field_metadata,
    field_str,
    json_lines,
    no_progress,
    raise_problems,
)
from .store import NewEntry, Scope, Store
from .validation import (
    FloatVector,
    check_query,
    check_response,
    check_scope_name,
    query_hash,
)

WarmFormat = Literal["jsonl", "csv"]


@dataclass(frozen=True)
class WarmRow:
    line: int
    query: str
    response: str
    namespace: str
    user_id: str
    context_key: str
    #: None: not given (an entry already stored keeps its metadata)
    metadata: dict[str, Any] | None = None


def detect_format(path: Path, given: str | None) -> WarmFormat:
    if given in ("jsonl", "csv"):
        return given  # type: ignore[return-value]
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise InvalidInputError(
        f"{path}: cannot tell the format from the extension {suffix!r}; pass --format jsonl|csv"
    )


def _warm_row(obj: Any, line: int, defaults: Scope) -> WarmRow:
    if isinstance(obj, LineError):
        raise obj
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {type(obj).__name__}")
    namespace = field_str(obj, "namespace", defaults.namespace) or defaults.namespace
    return WarmRow(
        line=line,
        query=checked(check_query, field_str(obj, "query")),
        response=checked(check_response, field_str(obj, "response")),
        namespace=checked(check_scope_name, namespace, "namespace", allow_empty=False),
        user_id=checked(
            check_scope_name,
            field_str(obj, "user_id", defaults.user_id),
            "user_id",
            allow_empty=True,
        ),
        context_key=field_str(obj, "context_key", defaults.context_key),
        metadata=field_metadata(obj) if "metadata" in obj else None,
    )


def _csv_objects(handle: TextIO) -> Iterator[tuple[int, Any]]:
    reader = csv.reader(handle)
    columns: list[str] | None = None
    for cells in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if columns is None:
            lowered = [c.strip().lower() for c in cells]
            if "query" in lowered and "response" in lowered:
                columns = lowered
                continue
            columns = ["query", "response", "namespace", "user_id"]
        if len(cells) < 2:
            yield (
                line,
                LineError(f"expected at least 2 columns (query, response), got {len(cells)}"),
            )
            continue
        row = {name: cell for name, cell in zip(columns, cells, strict=False) if name}
        for optional in ("namespace", "user_id"):  # a blank cell: the command's default
            if not row.get(optional, "").strip():
                row.pop(optional, None)
        yield line, row


def iter_warm_file(
    path: Path, fmt: WarmFormat, defaults: Scope
) -> Iterator[tuple[int, WarmRow | LineError]]:
    """(line number, row or the problem with it) for every non-blank row."""
    with path.open(encoding="utf-8-sig", newline="" if fmt == "csv" else None) as handle:
        source = _csv_objects(handle) if fmt == "csv" else json_lines(handle)
        for line, obj in source:
            try:
                yield line, _warm_row(obj, line, defaults)
            except LineError as exc:
                yield line, exc


@dataclass(frozen=True)
class WarmPlan:
    """What validating a warm file found: its rows, and the lines a later line of the
    file repeats (same query in the same namespace, user and context): only the last
    is written, so a re-run finds every row as it left it."""

    rows: int
    superseded: frozenset[int]


def validate_warm_file(path: Path, fmt: WarmFormat, defaults: Scope) -> WarmPlan:
    """Check every row; return the plan or raise InvalidFileError (nothing written)."""
    problems: list[tuple[int, str]] = []
    count = more = 0
    last_line: dict[bytes, int] = {}  # 16-byte digest of (scope, query): ~100 B per row
    superseded: set[int] = set()
    try:
        for line, item in iter_warm_file(path, fmt, defaults):
            if isinstance(item, LineError):
                if len(problems) < MAX_REPORTED_PROBLEMS:
                    problems.append((line, str(item)))
                else:
                    more += 1
            else:
                count += 1
                scoped = "\0".join(
                    (item.namespace, item.user_id, item.context_key, query_hash(item.query))
                )
                key = hashlib.blake2b(scoped.encode("utf-8"), digest_size=16).digest()
                earlier = last_line.get(key)
                if earlier is not None:
                    superseded.add(earlier)
                last_line[key] = line
    except UnicodeDecodeError as exc:
        raise InvalidFileError(
            f"{path}: not UTF-8 text ({exc.reason}); nothing was written"
        ) from exc
    except csv.Error as exc:
        raise InvalidFileError(f"{path}: not valid CSV ({exc}); nothing was written") from exc
    raise_problems(path, problems, more, "written")
    return WarmPlan(count, frozenset(superseded))


@dataclass
class WriteCounts:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    superseded: int = 0  # rows a later row of the same file repeats (warm)

    @property
    def total(self) -> int:
        return self.added + self.updated + self.unchanged + self.superseded


class EntryWriter:
    """Store (query, response) rows like ``SemanticCache.store_many``: the same
    normalised query in the same namespace, user and context is replaced, not
    duplicated, whatever the namespace's ``on_duplicate``; rows identical to what is
    stored are skipped without embedding."""

    def __init__(self, db: Database, embedder: Embedder) -> None:
        self.embedder = embedder
        self.store = Store(db)
        self.admin = Admin(db)
        self.db = db
        self._bound = False

    def write_batch(self, rows: Sequence[WarmRow]) -> tuple[list[int | None], WriteCounts]:
        """Write one batch in one transaction; return (id per row, None if skipped), counts."""
        if not self._bound and self.store.info().get("embedding_model") is not None:
            self._bind()  # a file with a model: check ours before embedding anything
        counts = WriteCounts()
        groups: dict[Scope, dict[str, int]] = {}  # scope -> query hash -> last row index
        for index, row in enumerate(rows):
            scope = Scope(row.namespace, row.user_id, row.context_key)
            groups.setdefault(scope, {})[query_hash(row.query)] = index
        ids: list[int | None] = [None] * len(rows)
        plans: list[tuple[Scope, list[int], list[NewEntry]]] = []
        to_embed: list[tuple[int, int]] = []  # (plan number, position in plan)
        for scope, by_hash in groups.items():
            stored = self.admin.existing(
                scope.namespace, scope.user_id, scope.context_key, list(by_hash)
            )
            indexes: list[int] = []
            entries: list[NewEntry] = []
            for digest, index in by_hash.items():
                row, old = rows[index], stored.get(digest)
                metadata = row.metadata
                if old is not None:
                    metadata = old.metadata if metadata is None else metadata
                    if old.response == row.response and old.metadata == metadata:
                        counts.unchanged += 1
                        ids[index] = old.id
                        continue
                    counts.updated += 1
                else:
                    counts.added += 1
                    to_embed.append((len(plans), len(entries)))
                entries.append(
                    NewEntry(
                        scope.namespace,
                        scope.user_id,
                        scope.context_key,
                        row.query,
                        digest,
                        row.response,
                        dict(metadata or {}),
                    )
                )
                indexes.append(index)
            plans.append((scope, indexes, entries))
        counts.unchanged += len(rows) - len({i for g in groups.values() for i in g.values()})
        vectors: list[list[FloatVector | None]] = [[None] * len(p[2]) for p in plans]
        if to_embed:
            embedded = self._embed([plans[p][2][i].query for p, i in to_embed])
            for (p, i), vector in zip(to_embed, embedded, strict=True):
                vectors[p][i] = vector
        model = self.embedder.model_id
        with self.db.transaction():
            if not self._bound:  # a new file takes the model with its first entries, so an
                self._bind()  # embedder that failed above leaves it unbound, for another
            for (scope, indexes, entries), given in zip(plans, vectors, strict=True):
                if not entries:
                    continue
                # "replace" whatever the namespace's on_duplicate: warm and put load the
                # answers given (and count them as updated), as their help says.
                written, missing = self.store.upsert_many(
                    scope, entries, given, model, on_duplicate="replace"
                )
                if missing:  # deleted by another writer since we looked: embed, write those
                    retry = [entries[i] for i in missing]
                    vectors_now = self._embed([e.query for e in retry])
                    again, _ = self.store.upsert_many(
                        scope, retry, list(vectors_now), model, on_duplicate="replace"
                    )
                    for i, entry_id in zip(missing, again, strict=True):
                        written[i] = entry_id
                for index, entry_id in zip(indexes, written, strict=True):
                    ids[index] = entry_id
        return ids, counts

    def _bind(self) -> None:
        self.store.bind_embedder(self.embedder.model_id, self.embedder.dim)
        self._bound = True

    def _embed(self, texts: list[str]) -> list[FloatVector]:
        return list(embed_many(self.embedder, texts))  # its failures typed as EmbedderErrors


def warm(
    db: Database,
    embedder: Embedder,
    path: Path,
    fmt: WarmFormat,
    defaults: Scope,
    *,
    batch_size: int = 256,
    advance: Advance = no_progress,
    superseded: frozenset[int] = frozenset(),
) -> WriteCounts:
    """Load a validated warm file batch by batch (each batch committed on its own);
    the ``superseded`` lines (WarmPlan) are skipped: a later line of the file wins."""
    writer = EntryWriter(db, embedder)
    totals = WriteCounts()
    batch: list[WarmRow] = []

    def flush() -> None:
        _, counts = writer.write_batch(batch)
        totals.added += counts.added
        totals.updated += counts.updated
        totals.unchanged += counts.unchanged
        advance(len(batch))
        batch.clear()

    for line, item in iter_warm_file(path, fmt, defaults):
        if isinstance(item, LineError):  # the file changed since it was validated
            raise InvalidFileError(f"{path} line {line}: {item}", problems=[(line, str(item))])
        if line in superseded:
            totals.superseded += 1
            advance(1)
            continue
        batch.append(item)
        if len(batch) >= max(1, batch_size):
            flush()
    if batch:
        flush()
    return totals
