"""semcache-sqlite: a semantic cache for LLM apps in one SQLite file.

The public API lives here; the modules behind it are private by convention
(see README "Where things live").
"""

from ._version import __version__
from .cache import CacheEntry, LookupResult, SemanticCache
from .embedders import Embedder, LocalEmbedder, OpenAIEmbedder
from .errors import (
    CacheTimeoutError,
    DimensionMismatchError,
    DriverUnavailableError,
    EmbedderError,
    EmbedderMismatchError,
    EntryNotFoundError,
    InvalidInputError,
    InvalidQueryError,
    InvalidThresholdError,
    InvalidVectorError,
    LLMError,
    MigrationError,
    ModelIntegrityError,
    NotACacheFileError,
    ReadOnlyError,
    SchemaTooNewError,
    SemCacheError,
    StorageError,
    StorageFullError,
    VersionConflictError,
)
from .lifecycle import NamespacePolicy
from .llms import LLM, OpenAIChat
from .store_reembed import ReembedState

__all__ = [
    "LLM",
    "CacheEntry",
    "CacheTimeoutError",
    "DimensionMismatchError",
    "DriverUnavailableError",
    "Embedder",
    "EmbedderError",
    "EmbedderMismatchError",
    "EntryNotFoundError",
    "InvalidInputError",
    "InvalidQueryError",
    "InvalidThresholdError",
    "InvalidVectorError",
    "LLMError",
    "LocalEmbedder",
    "LookupResult",
    "MigrationError",
    "ModelIntegrityError",
    "NamespacePolicy",
    "NotACacheFileError",
    "OpenAIChat",
    "OpenAIEmbedder",
    "ReadOnlyError",
    "ReembedState",
    "SchemaTooNewError",
    "SemCacheError",
    "SemanticCache",
    "StorageError",
    "StorageFullError",
    "VersionConflictError",
    "__version__",
]
