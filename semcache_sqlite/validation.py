"""Checks and normal forms for what callers pass in: query text, vectors, thresholds.

Kept in one place so the cache, the embedders and the CLI reject bad input the
same way, with the same typed errors, before anything touches the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import numbers
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import (
    DimensionMismatchError,
    InvalidInputError,
    InvalidQueryError,
    InvalidThresholdError,
    InvalidVectorError,
)

#: Longest query text accepted, in characters. Longer text is refused rather than
#: silently cut: the embedder only sees its first tokens anyway (256 for the local
#: model), so two long prompts differing only at the end would look identical.
DEFAULT_MAX_QUERY_CHARS = 100_000

#: Tolerance when comparing a similarity with the threshold: float32 cosine of a
#: vector with itself can come out as 0.99999994, which must still hit at 1.0.
SIMILARITY_EPSILON = 1e-6

#: SQLite INTEGER is 64-bit signed: ids, versions and counts beyond it cannot be bound.
SQLITE_INT_MIN = -(2**63)
SQLITE_INT_MAX = 2**63 - 1

#: Unix times accepted from callers and input files (created_at, expires_at, ...): what
#: ``datetime`` can represent (years 1 to 9999, UTC), so every stored time can be read back
#: as an ``Entry.created_at`` and shown by ``semcache ls``.
MIN_TIMESTAMP = -62_135_596_800.0  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP = 253_402_300_799.0  # 9999-12-31T23:59:59Z

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]


def check_query(query: Any, *, max_chars: int = DEFAULT_MAX_QUERY_CHARS) -> str:
    """Return ``query`` unchanged if it is usable, else raise InvalidQueryError."""
    if not isinstance(query, str):
        raise InvalidQueryError(f"query must be str, got {type(query).__name__}")
    if not query.strip():
        raise InvalidQueryError("query is empty or whitespace only")
    if len(query) > max_chars:
        raise InvalidQueryError(
            f"query is {len(query):,} characters, above the limit of {max_chars:,} "
            "(raise max_query_chars if you really mean to cache such prompts)"
        )
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidQueryError(
            f"query is not valid Unicode (lone surrogate at {exc.start})"
        ) from exc
    return query


def check_text(value: Any, what: str) -> str:
    """A response or other stored text: any str that encodes as UTF-8."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{what} is not valid Unicode (lone surrogate at {exc.start})"
        ) from exc
    return value


def check_texts(value: Any, what: str) -> list[Any]:
    """A batch of texts (queries, responses): any iterable but a single str, which would
    otherwise be taken character by character. The items are checked by the caller."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidInputError(f"{what} must be a sequence of str, got {type(value).__name__}")
    return list(value)


def check_int(
    value: Any, what: str, minimum: int = SQLITE_INT_MIN, maximum: int = SQLITE_INT_MAX
) -> int:
    """A whole number in [minimum, maximum] (ids, versions, counts, sizes); by default
    what SQLite can store, so a caller's huge int is refused instead of overflowing."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or not minimum <= int(value) <= maximum
    ):
        raise InvalidInputError(f"{what} must be an int in [{minimum}, {maximum}], got {value!r}")
    return int(value)


def as_seconds(value: Any) -> float | None:
    """``value`` as float seconds if it is a real number (numpy's too, not a bool), an int
    beyond float's range as inf; None if it is not a number. The callers check the range
    (NaN fails every comparison, so it is refused there too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def check_timestamp(value: Any, what: str) -> float:
    """Unix seconds that ``datetime`` can represent (see MIN_TIMESTAMP / MAX_TIMESTAMP)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not MIN_TIMESTAMP <= value <= MAX_TIMESTAMP  # also refuses NaN and inf
    ):
        raise InvalidInputError(
            f"{what} must be unix seconds between {MIN_TIMESTAMP:.0f} and {MAX_TIMESTAMP:.0f} "
            f"(years 1 to 9999), got {value!r}"
        )
    return float(value)


def check_metadata(value: Any) -> dict[str, Any]:
    """Entry metadata: a mapping JSON can hold (no NaN or inf, only JSON types), as a dict."""
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"metadata must be a mapping, got {type(value).__name__}")
    metadata = dict(value)
    metadata_json(metadata)
    return metadata


def metadata_json(metadata: dict[str, Any]) -> str:
    """The stored form of metadata; what JSON cannot hold is the caller's error, not a
    CHECK (json_valid) failure of the file."""
    try:
        return json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:  # ValueError: NaN/inf, or a circular reference
        raise InvalidInputError(f"metadata cannot be stored as JSON: {exc}") from exc


def check_embedder(value: Any) -> Any:
    """Something with the Embedder protocol's parts (``embed``, ``model_id``, ``dim``);
    checked by duck typing, so an embedder need not subclass anything."""
    if not callable(getattr(value, "embed", None)) or not all(
        hasattr(value, name) for name in ("model_id", "dim")
    ):
        raise InvalidInputError(
            f"embedder must have embed(texts), model_id and dim (an Embedder such as "
            f"LocalEmbedder() or OpenAIEmbedder(...)), got {value!r}"
        )
    return value


def check_response(value: Any) -> str:
    """A response to store: text (as check_text) that is not empty or whitespace only.

    The LLM side refuses such an answer (LLMError, never cached); a stored one
    would be served as a hit, so every write path refuses it the same way.
    """
    text = check_text(value, "response")
    if not text.strip():
        raise InvalidInputError("response is empty or whitespace only")
    return text


def check_scope_name(value: Any, what: str, *, allow_empty: bool) -> str:
    """Namespace and user ids: plain strings, stored as given (bound, never spliced into SQL)."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise InvalidInputError(f"{what} must not be empty")
    if len(value) > 1024:
        raise InvalidInputError(f"{what} is {len(value)} characters; at most 1024")
    if "\x00" in value:
        # sqlite-vec compares TEXT metadata only up to the first NUL, so "a\0b" and "a\0c"
        # would share vectors in the KNN filter: a leak across tenants. Refuse them.
        raise InvalidInputError(f"{what} must not contain NUL characters")
    check_text(value, what)
    return value


def normalize_query(query: str) -> str:
    """The form used by the exact-match path: NFKC, case-folded, whitespace collapsed;
    super- and subscripts keep a mark (``x²`` -> ``x^2``, ``H₂O`` -> ``h_2o``), since
    NFKC alone makes "What is 2³?" and "What is 23?" one query."""
    marked = query if query.isascii() else query.translate(_script_marks())  # ASCII: none
    return " ".join(unicodedata.normalize("NFKC", marked).casefold().split())


#: Where Unicode has super- and subscript characters: the BMP, and the supplementary
#: blocks holding some (modifier letters, Latin extended-F, Cyrillic extended-D, enclosed
#: alphanumeric supplement). Scanned, not listed, to follow Python's Unicode version.
_SCRIPT_RANGES = (
    range(0x10000),
    range(0x10780, 0x107C0),
    range(0x1E030, 0x1E090),
    range(0x1F100, 0x1F200),
)


@functools.cache  # ~40 ms, once, at the first query rather than at import
def _script_marks() -> dict[int, str]:
    """str.translate table: each super-/subscript character -> "^" / "_" + its NFKC form."""
    marks = {"<super>": "^", "<sub>": "_"}
    table: dict[int, str] = {}
    for block in _SCRIPT_RANGES:
        for code in block:
            kind = unicodedata.decomposition(chr(code)).split(" ", 1)[0]
            if kind in marks:
                table[code] = marks[kind] + unicodedata.normalize("NFKC", chr(code))
    return table


def query_hash(query: str) -> str:
    return hashlib.sha256(normalize_query(query).encode("utf-8")).hexdigest()


def check_threshold(threshold: Any) -> float:
    """A cosine-similarity threshold in [0, 1]; 0 and 1 are legal."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)):
        raise InvalidThresholdError(f"threshold must be a number in [0, 1], got {threshold!r}")
    value = float(threshold)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InvalidThresholdError(f"threshold must be in [0, 1], got {threshold!r}")
    return value


def as_unit_vector(vector: Any, dim: int) -> FloatVector:
    """Validate one embedding and return it as a contiguous, L2-normalised float32 vector."""
    try:
        raw = np.asarray(vector)
        # A complex cast would only warn and drop the imaginary part: refused below.
        array = None if raw.dtype.kind == "c" else raw.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidVectorError(f"embedding is not a numeric vector: {exc}") from exc
    if array is None:
        raise InvalidVectorError("embedding has complex values; give real numbers")
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise InvalidVectorError(f"embedding must be one vector, got shape {array.shape}")
    if array.shape[0] != dim:
        raise DimensionMismatchError(
            f"embedding has {array.shape[0]} dimensions, this cache file uses {dim}"
        )
    if not np.all(np.isfinite(array)):
        raise InvalidVectorError("embedding contains NaN or infinite values")
    # Scale by the largest component first: the norm of huge (1e200) or tiny (1e-320)
    # but valid vectors would overflow to inf or underflow to 0.
    scale = float(np.max(np.abs(array)))
    if scale == 0.0:
        raise InvalidVectorError("embedding is all zeros (cosine similarity is undefined)")
    array = array / scale
    return np.ascontiguousarray(array / np.linalg.norm(array), dtype=np.float32)


def as_unit_matrix(vectors: Any, dim: int, expected_rows: int) -> FloatMatrix:
    """Validate a batch of embeddings (rows) and L2-normalise each row."""
    try:
        count = len(vectors)
    except TypeError as exc:  # a generator: its length is unknown until consumed
        raise InvalidVectorError(
            f"embeddings must be a sequence or an array of vectors, got {type(vectors).__name__}"
        ) from exc
    if count != expected_rows:
        raise InvalidInputError(f"got {count} embeddings for {expected_rows} queries")
    if expected_rows == 0:
        return np.zeros((0, dim), dtype=np.float32)
    if isinstance(vectors, np.ndarray) and vectors.ndim == 2 and vectors.shape[1] == dim:
        real = np.issubdtype(vectors.dtype, np.number) and not np.iscomplexobj(vectors)
        fast = _unit_rows(vectors) if real else None
        if fast is not None:
            return fast
    # One row at a time: the error names what is wrong with the first bad row.
    return np.stack([as_unit_vector(row, dim) for row in vectors])


def _unit_rows(matrix: np.ndarray[Any, Any]) -> FloatMatrix | None:
    """Every row over its norm in one pass (bulk loads: ~10x faster than row by row),
    or None when some row needs as_unit_vector's care (NaN, inf, all zeros, a norm
    beyond float64's range) or its error message."""
    norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix, dtype=np.float64))
    if not (np.all(np.isfinite(norms)) and np.all(norms > 0)):
        return None
    unit = bool(np.all(np.abs(norms - 1.0) <= 1e-6))
    if unit and matrix.dtype == np.float32 and matrix.flags.c_contiguous:
        return matrix  # unit rows already (most embedders): no copy of a large batch
    inverse = 1.0 / norms
    if matrix.dtype == np.float32:
        with np.errstate(over="ignore"):
            scale = inverse.astype(np.float32)
        if not np.all(np.isfinite(scale)):  # a norm below float32's range
            return None
        return np.ascontiguousarray(matrix * scale[:, None])
    return np.ascontiguousarray(matrix.astype(np.float64) * inverse[:, None], dtype=np.float32)


def similarity_hits(similarity: float, threshold: float) -> bool:
    """The one place that decides hit or miss: similarity >= threshold (float32 tolerance)."""
    return similarity >= threshold - SIMILARITY_EPSILON
