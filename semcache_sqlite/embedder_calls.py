"""Calling an embedder: whatever it raises becomes an EmbedderError, and what it
returns is validated, so a third-party embedder's RuntimeError, None, NaN or wrong
shape never reaches the caller untyped or as the caller's fault.

Every embedder call of the library goes through here: lookups (with the policy's
deadline), search and the writes, the async twins, ``semcache get``/``search``,
warm-up, import and re-embedding.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import (
    EmbedderError,
    EmbedderResponseError,
    EmbedderTimeoutError,
    InvalidInputError,
    InvalidQueryError,
)
from .validation import FloatMatrix, FloatVector, as_unit_matrix, as_unit_vector

if TYPE_CHECKING:
    from .embedders import Embedder

T = TypeVar("T")


def checked_vector(embedder: Embedder, matrix: Any) -> FloatVector:
    """The one vector ``embedder`` returned for one query, validated."""
    try:
        if len(matrix) != 1:
            raise EmbedderResponseError(f"the embedder returned {len(matrix)} vectors for 1 text")
        return as_unit_vector(matrix[0], embedder.dim)
    except InvalidInputError as exc:  # NaN, zero or wrong-length vector: the embedder's fault
        raise EmbedderResponseError(f"the embedder returned an unusable vector: {exc}") from exc


def embedder_failure(exc: Exception) -> EmbedderError:
    """Any failure of a (possibly third-party) embedder as an EmbedderError."""
    if isinstance(exc, EmbedderError):
        return exc
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):  # e.g. socket.timeout: its own, not our deadline
        return EmbedderTimeoutError(f"the embedder timed out: {detail}")
    return EmbedderError(f"the embedder failed: {detail}")


@contextmanager
def embedder_errors() -> Iterator[None]:
    """Raise any failure inside the block as an EmbedderError (the original chained as
    ``__cause__``); an InvalidQueryError is the caller's text and passes as it is.

    Around every embedder call (lookups, search, writes, sync and async), so that a
    third-party embedder's RuntimeError, None or NaN never reaches the caller untyped
    or as the caller's fault.
    """
    try:
        yield
    except InvalidQueryError:
        raise
    except Exception as exc:
        error = embedder_failure(exc)
        if error is exc:
            raise
        raise error from exc


def embed_one(embedder: Embedder, query: str, timeout: float | None = None) -> FloatVector:
    """One query's vector: the embedder's failures and unusable vectors typed as
    EmbedderErrors; with ``timeout``, EmbedderTimeoutError past that many seconds."""
    with embedder_errors():
        if timeout is None:
            matrix = embedder.embed([query])
        else:
            matrix = call_with_deadline(lambda: embedder.embed([query]), timeout)
        return checked_vector(embedder, matrix)


def embed_many(embedder: Embedder, texts: list[str]) -> FloatMatrix:
    """The texts' vectors from one embedder call, typed and validated as ``embed_one``."""
    with embedder_errors():
        matrix = embedder.embed(texts)
        try:
            return as_unit_matrix(matrix, embedder.dim, len(texts))
        except InvalidInputError as exc:  # NaN, zero or wrong-length rows: its fault
            message = f"the embedder returned an unusable vector: {exc}"
            raise EmbedderResponseError(message) from exc


def call_with_deadline(call: Callable[[], T], timeout: float) -> T:
    """Run ``call`` in a daemon thread and wait at most ``timeout`` seconds for it.

    A thread cannot be killed: on timeout the call keeps running in the
    background and its result is dropped. A daemon thread, so a hung embedder
    never keeps the process from exiting.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the waiting thread, not lost
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="semcache-embed", daemon=True).start()
    if not done.wait(timeout):
        raise EmbedderTimeoutError(f"the embedder did not answer within the {timeout:g} s deadline")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value
