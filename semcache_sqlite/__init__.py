"""semcache-sqlite: a semantic cache for LLM apps in one SQLite file.

The public API lives here; the modules behind it are private by convention
(see README "Where things live").
"""

from ._version import __version__
from .cache import SemanticCache
from .decision import CacheEntry, LookupResult
from .embedders import Embedder, LocalEmbedder, OpenAIEmbedder
from .errors import (
    CacheTimeoutError,
    DimensionMismatchError,
    DriverUnavailableError,
    EmbedderError,
    EmbedderMismatchError,
    EmbedderResponseError,
    EmbedderTimeoutError,
    EntryNotFoundError,
    InvalidFileError,
    InvalidInputError,
    InvalidQueryError,
    InvalidThresholdError,
    InvalidVectorError,
    LLMError,
    LLMRefusalError,
    LLMTimeoutError,
    MigrationError,
    ModelIntegrityError,
    NotACacheFileError,
    ReadOnlyError,
    SchemaTooNewError,
    SemCacheError,
    StorageError,
    StorageFullError,
    UpgradeRequiredError,
    VersionConflictError,
)
from .fallback import FallbackPolicy
from .lifecycle import NamespacePolicy
from .llms import LLM, AsyncChatStream, ChatStream, Completion, OpenAIChat
from .prompts import ChatMessage, Prompt, conversation_text
from .quality import GuardConfig, GuardWeights, Signals
from .quality_store import Calibration, FeedbackRow
from .retry import RetryPolicy
from .store_reembed import ReembedState
from .streaming import AsyncCachedStream, CachedStream
from .timing import CacheResult, Timings

__all__ = [
    "LLM",
    "AsyncCachedStream",
    "AsyncChatStream",
    "CacheEntry",
    "CacheResult",
    "CacheTimeoutError",
    "CachedStream",
    "Calibration",
    "ChatMessage",
    "ChatStream",
    "Completion",
    "DimensionMismatchError",
    "DriverUnavailableError",
    "Embedder",
    "EmbedderError",
    "EmbedderMismatchError",
    "EmbedderResponseError",
    "EmbedderTimeoutError",
    "EntryNotFoundError",
    "FallbackPolicy",
    "FeedbackRow",
    "GuardConfig",
    "GuardWeights",
    "InvalidFileError",
    "InvalidInputError",
    "InvalidQueryError",
    "InvalidThresholdError",
    "InvalidVectorError",
    "LLMError",
    "LLMRefusalError",
    "LLMTimeoutError",
    "LocalEmbedder",
    "LookupResult",
    "MigrationError",
    "ModelIntegrityError",
    "NamespacePolicy",
    "NotACacheFileError",
    "OpenAIChat",
    "OpenAIEmbedder",
    "Prompt",
    "ReadOnlyError",
    "ReembedState",
    "RetryPolicy",
    "SchemaTooNewError",
    "SemCacheError",
    "SemanticCache",
    "Signals",
    "StorageError",
    "StorageFullError",
    "Timings",
    "UpgradeRequiredError",
    "VersionConflictError",
    "__version__",
    "conversation_text",
]
