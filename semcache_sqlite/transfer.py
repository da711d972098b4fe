"""Moving a cache in and out of JSONL: ``semcache export`` and ``semcache import``.

- **Exports**: a header object, then one entry per line with everything needed
  to rebuild it (times, version, hit count, metadata) and optionally its vector
  (base64 of little-endian float32, or a list of numbers), from one snapshot.
- **Imports**: the whole file is validated before anything is written, then
  written in ONE transaction, so a bad line or a failure half way leaves the
  target file as it was.

Files are read twice (validate, then write) rather than held in memory.
No SQL here: writes go through ``Store`` and ``Admin``.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np

from ._version import __version__
from .admin import Admin, EntryFilter, ImportRow
from .db import Database
from .embedder_calls import embed_many
from .embedders import Embedder
from .errors import EmbedderMismatchError, InvalidFileError, InvalidInputError, SemCacheError
from .inputs import (
    MAX_REPORTED_PROBLEMS,
    Advance,
    LineError,
    checked,
    field_int,
    field_metadata,
    field_number,
    field_str,
    json_lines,
    no_progress,
    raise_problems,
)
from .lifecycle import check_ttl
from .store import Store
from .validation import (
    SQLITE_INT_MIN,
    FloatVector,
    as_unit_vector,
    check_query,
    check_scope_name,
    check_text,
    query_hash,
)

#: Version of the export file format (the header's ``semcache_export`` value).
EXPORT_FORMAT = 1

VectorFormat = Literal["base64", "list"]


def encode_vector(blob: bytes, fmt: VectorFormat) -> str | list[float]:
    if fmt == "base64":
        return base64.b64encode(blob).decode("ascii")
    return [float(x) for x in np.frombuffer(blob, dtype="<f4")]


def export_entries(
    db: Database,
    out: TextIO,
    *,
    flt: EntryFilter | None = None,
    vectors: VectorFormat | None = None,
    advance: Advance = no_progress,
    on_count: Callable[[int], None] | None = None,
) -> int:
    """Write a header line and one line per entry, from one consistent snapshot."""
    admin = Admin(db)
    flt = flt or EntryFilter()
    with admin.snapshot():
        facts = admin.facts()
        total = admin.count(flt)
        if on_count is not None:
            on_count(total)
        header = {
            "semcache_export": EXPORT_FORMAT,
            "app_version": __version__,
            "schema_version": facts.schema_version,
            "embedding_model": facts.embedding_model,
            "embedding_dim": facts.embedding_dim,
            "vectors": vectors,
            "entries": total,
            "exported_at": time.time(),
        }
        out.write(json.dumps(header, ensure_ascii=False) + "\n")
        written = 0
        batch: list[Any] = []

        def flush() -> None:
            blobs = admin.vectors([row.id for row in batch]) if vectors else {}
            ttls = admin.ttls([row.id for row in batch])
            for row in batch:
                record: dict[str, Any] = {
                    "id": row.id,
                    "namespace": row.namespace,
                    "user_id": row.user_id,
                    "context_key": row.context_key,
                    "query": row.query,
                    "response": row.response,
                    "created_at": row.created_at,
                    "updated_at": row.updated_at,
                    "version": row.version,
                    "hit_count": row.hit_count,
                    "last_hit_at": row.last_hit_at,
                    "metadata": row.metadata,
                    "ttl": ttls.get(row.id),
                    "expires_at": row.expires_at,
                }
                if vectors and row.id in blobs:
                    record["vector"] = encode_vector(blobs[row.id], vectors)
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            advance(len(batch))
            batch.clear()

        for row in admin.iter_entries(flt):
            batch.append(row)
            written += 1
            if len(batch) >= 500:
                flush()
        if batch:
            flush()
    return written


# -- import ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportHeader:
    format: int
    app_version: str | None
    schema_version: int | None
    embedding_model: str | None
    embedding_dim: int | None
    vectors: str | None


@dataclass(frozen=True)
class ImportResult:
    """What ``import_entries`` wrote: entries added, replaced, and left out because
    they had expired (``expires_at`` at or before the import); entries the
    namespaces' limits then evicted (imported ones or not) or purged as expired; and
    how many of the written entries were embedded (the others kept the file's vectors)."""

    added: int
    replaced: int
    expired: int
    evicted: int = 0
    embedded: int = 0


@dataclass(frozen=True)
class ImportPlan:
    """What validation learnt about an import file."""

    header: ExportHeader | None
    rows: int
    rows_with_vectors: int


def _parse_header(obj: dict[str, Any]) -> ExportHeader:
    version = obj.get("semcache_export")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise LineError(f"header: 'semcache_export' must be a format number, got {version!r}")
    if version > EXPORT_FORMAT:
        raise LineError(
            f"header: export format {version} is newer than this semcache-sqlite understands "
            f"({EXPORT_FORMAT}); upgrade semcache-sqlite to import it"
        )
    model, dim = obj.get("embedding_model"), obj.get("embedding_dim")
    if model is not None and not isinstance(model, str):
        raise LineError("header: 'embedding_model' must be a string")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
        raise LineError("header: 'embedding_dim' must be a positive integer")
    schema = obj.get("schema_version")
    return ExportHeader(
        format=version,
        app_version=str(obj["app_version"]) if obj.get("app_version") is not None else None,
        schema_version=schema if isinstance(schema, int) else None,
        embedding_model=model,
        embedding_dim=dim,
        vectors=str(obj["vectors"]) if obj.get("vectors") else None,
    )


def decode_vector(value: Any, dim: int | None) -> FloatVector:
    if isinstance(value, str):
        try:
            blob = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise LineError(f"'vector' is not valid base64 ({exc})") from exc
        if len(blob) % 4:
            raise LineError(f"'vector' decodes to {len(blob)} bytes, not whole float32 values")
        array: Any = np.frombuffer(blob, dtype="<f4")
    elif isinstance(value, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
    ):
        array = np.asarray(value, dtype=np.float64)
    else:
        raise LineError("'vector' must be base64 float32 text or a list of numbers")
    try:
        return as_unit_vector(array, dim if dim is not None else len(array))
    except InvalidInputError as exc:
        raise LineError(f"'vector': {exc}") from exc


def _import_row(
    obj: Any, header: ExportHeader | None, now: float
) -> tuple[ImportRow, FloatVector | None]:
    if isinstance(obj, LineError):
        raise obj
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {type(obj).__name__}")
    if "semcache_export" in obj:
        raise LineError("a header object is only allowed on the first line")
    query = checked(check_query, field_str(obj, "query"))
    created = field_number(obj, "created_at", now)
    updated = field_number(obj, "updated_at", created)
    given_id = obj.get("id")  # an int is kept when free (>= 1); anything else is ignored
    preferred = (
        field_int(obj, "id", 1, SQLITE_INT_MIN)
        if isinstance(given_id, int) and not isinstance(given_id, bool)
        else None
    )
    row = ImportRow(
        namespace=checked(
            check_scope_name,
            field_str(obj, "namespace", "default"),
            "namespace",
            allow_empty=False,
        ),
        user_id=checked(
            check_scope_name, field_str(obj, "user_id", ""), "user_id", allow_empty=True
        ),
        context_key=field_str(obj, "context_key", ""),
        query=query,
        query_hash=query_hash(query),
        # As export wrote it: files of earlier versions may hold empty responses.
        response=checked(check_text, field_str(obj, "response"), "response"),
        created_at=float(created if created is not None else now),
        updated_at=float(updated if updated is not None else now),
        version=field_int(obj, "version", 1, 1),
        hit_count=field_int(obj, "hit_count", 0, 0),
        last_hit_at=field_number(obj, "last_hit_at", None),
        metadata=field_metadata(obj),
        preferred_id=preferred,
        ttl=checked(check_ttl, obj.get("ttl")),
        expires_at=field_number(obj, "expires_at", None),
    )
    vector = obj.get("vector")
    dim = header.embedding_dim if header is not None else None
    return row, None if vector is None else decode_vector(vector, dim)


def _iter_import(path: Path) -> Iterator[tuple[int, ExportHeader | None, Any]]:
    """(line, header so far, parsed row or LineError) for each entry line."""
    header: ExportHeader | None = None
    first = True
    now = time.time()
    with path.open(encoding="utf-8-sig") as handle:
        for line, obj in json_lines(handle):
            if first and isinstance(obj, dict) and "semcache_export" in obj:
                first = False
                try:
                    header = _parse_header(obj)
                except LineError as exc:
                    yield line, None, exc
                continue
            first = False
            try:
                yield line, header, _import_row(obj, header, now)
            except LineError as exc:
                yield line, header, exc


def validate_import_file(path: Path) -> ImportPlan:
    """Read the whole file; raise InvalidFileError listing bad lines, else describe it."""
    problems: list[tuple[int, str]] = []
    more = rows = with_vectors = 0
    header: ExportHeader | None = None
    try:
        for line, seen_header, item in _iter_import(path):
            header = seen_header or header
            if isinstance(item, LineError):
                if len(problems) < MAX_REPORTED_PROBLEMS:
                    problems.append((line, str(item)))
                else:
                    more += 1
                continue
            rows += 1
            with_vectors += item[1] is not None
    except UnicodeDecodeError as exc:
        raise InvalidFileError(
            f"{path}: not UTF-8 text ({exc.reason}); nothing was imported"
        ) from exc
    raise_problems(path, problems, more, "imported")
    return ImportPlan(header, rows, with_vectors)


def _matching(embedder: Embedder, model_id: str, dim: int) -> Embedder:
    """``embedder`` if it makes the vectors the file is bound to: another model's vectors
    would be written under this model's name."""
    if (embedder.model_id, int(embedder.dim)) != (model_id, dim):
        raise EmbedderMismatchError(
            f"the file uses {model_id!r} ({dim}-d) but the embedder is "
            f"{embedder.model_id!r} ({embedder.dim}-d)"
        )
    return embedder


def import_entries(
    db: Database,
    path: Path,
    plan: ImportPlan,
    *,
    model_id: str,
    dim: int,
    use_vectors: bool,
    embedder: Callable[[], Embedder] | None,
    batch_size: int = 256,
    advance: Advance = no_progress,
    now: float | None = None,
) -> ImportResult:
    """Write a validated import file in ONE transaction.

    Rows without a usable vector (all rows unless ``use_vectors``) are embedded
    with ``embedder()``, batch by batch, inside the transaction. Entries whose
    ``expires_at`` is at or before ``now`` (default: the time of the import)
    are not written, only counted: they could never be served.
    """
    admin, store = Admin(db), Store(db)
    added = replaced = expired = embedded = 0
    cutoff = time.time() if now is None else now
    loaded: Embedder | None = None
    with db.transaction() as conn:
        store.bind_embedder(model_id, dim)
        batch: list[tuple[ImportRow, FloatVector | None]] = []
        namespaces: set[str] = set()

        def flush() -> None:
            nonlocal added, replaced, embedded, loaded
            need = [i for i, (_, v) in enumerate(batch) if v is None or not use_vectors]
            vectors = [v if use_vectors else None for _, v in batch]
            if need:
                if embedder is None:
                    raise SemCacheError("internal: rows need embedding but no embedder was given")
                loaded = loaded or _matching(embedder(), model_id, dim)
                matrix = embed_many(loaded, [batch[i][0].query for i in need])  # typed failures
                for i, vector in zip(need, matrix, strict=True):
                    vectors[i] = vector
                embedded += len(need)
            a, r = admin.import_rows(
                conn, [row for row, _ in batch], [v for v in vectors if v is not None], model_id
            )
            added, replaced = added + a, replaced + r
            advance(len(batch))
            batch.clear()

        for line, _header, item in _iter_import(path):
            if isinstance(item, LineError):  # the file changed since it was validated
                raise InvalidFileError(f"{path} line {line}: {item}", problems=[(line, str(item))])
            if item[0].expires_at is not None and item[0].expires_at <= cutoff:
                expired += 1
                advance(1)
                continue
            batch.append(item)
            namespaces.add(item[0].namespace)
            if len(batch) >= max(1, batch_size):
                flush()
        if batch:
            flush()
        # Limits hold for imported entries too (a restored backup may exceed them).
        evicted = store.enforce_limits(conn, namespaces, cutoff)
    return ImportResult(added, replaced, expired, evicted, embedded)
