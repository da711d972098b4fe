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
from .llms import LLM, OpenAIChat
from .quality import GuardConfig, GuardWeights, Signals
from .quality_store import Calibration, FeedbackRow

__all__ = [
    "LLM",
    "CacheEntry",
    "CacheTimeoutError",
    "Calibration",
    "DimensionMismatchError",
    "DriverUnavailableError",
    "Embedder",
    "EmbedderError",
    "EmbedderMismatchError",
    "EntryNotFoundError",
    "FeedbackRow",
    "GuardConfig",
    "GuardWeights",
    "InvalidInputError",
    "InvalidQueryError",
    "InvalidThresholdError",
    "InvalidVectorError",
    "LLMError",
    "LocalEmbedder",
    "LookupResult",
    "MigrationError",
    "ModelIntegrityError",
    "NotACacheFileError",
    "OpenAIChat",
    "OpenAIEmbedder",
    "ReadOnlyError",
    "SchemaTooNewError",
    "SemCacheError",
    "SemanticCache",
    "Signals",
    "StorageError",
    "StorageFullError",
    "VersionConflictError",
    "__version__",
]
