"""Every error semcache-sqlite raises on purpose, in one tree.

Catch ``SemCacheError`` to catch them all. The tree::

    SemCacheError
    ├── InvalidInputError (also ValueError)      bad argument from the caller
    │   ├── InvalidQueryError                    empty, whitespace-only, too long, not encodable
    │   ├── InvalidVectorError                   NaN/inf, all-zero, wrong shape
    │   │   └── DimensionMismatchError           vector length != the file's dimension
    │   ├── InvalidThresholdError                threshold outside [0, 1]
    │   └── InvalidFileError                     malformed lines in an import/warm file
    ├── EntryNotFoundError (also KeyError)       no entry with that id
    ├── VersionConflictError                     conditional update lost a race
    ├── StorageError                             the SQLite file could not be used
    │   ├── DriverUnavailableError               no SQLite driver that can load sqlite-vec
    │   ├── NotACacheFileError                   not SQLite, corrupt, or another program's file
    │   ├── SchemaTooNewError                    written by a newer semcache-sqlite
    │   ├── MigrationError                       a migration failed (rolled back)
    │   ├── ReadOnlyError                        file or directory not writable
    │   ├── StorageFullError                     disk or quota full
    │   └── CacheTimeoutError                    lock not acquired within the busy timeout
    ├── EmbedderMismatchError                    file was built with another embedding model
    ├── EmbedderError                            embedding failed (model or remote service)
    │   ├── ModelIntegrityError                  model/tokenizer file failed its sha256 check
    │   ├── EmbedderTimeoutError (also TimeoutError)  no answer within the timeout/deadline
    │   └── EmbedderResponseError                the service answered with unusable vectors
    └── LLMError                                 the LLM call failed or returned nothing usable
        ├── LLMTimeoutError (also TimeoutError)  no answer within the timeout
        └── LLMRefusalError                      refused / content-filtered with no text to return

``EmbedderError`` and ``LLMError`` carry ``status_code``: the HTTP status of a
remote service's last answer (None for local failures, timeouts and lost
connections); the original exception is chained as ``__cause__``.

Nothing is stored when an error is raised in the middle of a write: every
write runs in one SQLite transaction that is rolled back on error.
"""

from __future__ import annotations


class SemCacheError(Exception):
    """Base class of every error this library raises on purpose."""


class InvalidInputError(SemCacheError, ValueError):
    """An argument the caller passed cannot be used."""


class InvalidQueryError(InvalidInputError):
    """Query text is empty, whitespace-only, too long or not valid Unicode."""


class InvalidVectorError(InvalidInputError):
    """An embedding vector contains NaN/inf, is all zeros or has the wrong shape."""


class DimensionMismatchError(InvalidVectorError):
    """A vector's length differs from the dimension the cache file was created with."""


class InvalidThresholdError(InvalidInputError):
    """A similarity threshold outside [0, 1] (or not a number)."""


class InvalidFileError(InvalidInputError):
    """An input file (``semcache import`` / ``warm``) has malformed lines; nothing was written.

    ``problems`` lists ``(line number, message)`` pairs, first lines first.
    """

    def __init__(self, message: str, problems: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class EntryNotFoundError(SemCacheError, KeyError):
    """No cache entry has the given id."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "entry not found"


class VersionConflictError(SemCacheError):
    """A conditional update found a different version than expected."""


class StorageError(SemCacheError):
    """The SQLite cache file could not be opened, read or written."""


class DriverUnavailableError(StorageError):
    """No SQLite driver able to load the sqlite-vec extension is installed."""


class NotACacheFileError(StorageError):
    """The file is not SQLite, is corrupt, or belongs to another program."""


class SchemaTooNewError(StorageError):
    """The file was written by a newer semcache-sqlite than this one."""


class MigrationError(StorageError):
    """A schema migration failed; the file is left at the last good version."""


class UpgradeRequiredError(StorageError):
    """The file was written by an older version and this handle may not upgrade it
    (opened read-only, or by an inspection command); open it once writable, or run
    ``semcache migrate``."""


class ReadOnlyError(StorageError):
    """The file (or its directory, needed for the WAL) cannot be written."""


class StorageFullError(StorageError):
    """The disk or a quota is full; the write was rolled back."""


class CacheTimeoutError(StorageError):
    """Another connection held the write lock longer than the busy timeout."""


class EmbedderMismatchError(SemCacheError):
    """The file was created with a different embedding model or dimension."""


class EmbedderError(SemCacheError):
    """Computing embeddings failed (model load, runtime or remote service)."""

    #: HTTP status of the remote service's last answer; None if there was none.
    status_code: int | None = None


class ModelIntegrityError(EmbedderError):
    """A model or tokenizer file does not have the expected sha256."""


class EmbedderTimeoutError(EmbedderError, TimeoutError):
    """The embedder did not answer within its timeout (or the cache's embed deadline)."""


class EmbedderResponseError(EmbedderError):
    """The embedding service answered, but with the wrong number, length or values of vectors."""


class LLMError(SemCacheError):
    """The LLM call failed or returned no usable text; nothing was cached."""

    #: HTTP status of the remote service's last answer; None if there was none.
    status_code: int | None = None


class LLMTimeoutError(LLMError, TimeoutError):
    """The LLM did not answer within its timeout; nothing was cached."""


class LLMRefusalError(LLMError):
    """The LLM refused or was content-filtered and gave no text to return; nothing was cached."""
