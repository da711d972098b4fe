"""Entry lifecycle rules: TTL, size limits and eviction, duplicates. No SQL here.

Decisions a user can rely on (also in the README, "Lifecycle"):

- **Where a rule comes from.** Per call (``store(..., ttl=...)``) > the
  namespace's overrides (``configure_namespace``, persisted in the file, so every
  process sees them) > the cache's constructor arguments (per process) > none.
  "Not given" means inherit; ``None`` means "never" / "no limit".
- **TTL.** ``expires_at = write time + ttl`` is fixed when an entry is written
  (stored, replaced, or updated with ``ttl=``); changing a namespace's TTL later
  does not move existing entries. An expired entry is never served (the exact
  path and the KNN both filter ``expires_at > now``), is skipped as a duplicate,
  and is deleted by ``purge()``, by eviction, and a few at a time on every write.
- **Sliding TTL** is off by default: a hit does not extend the entry's life, so
  a popular but stale answer still goes away on time. With ``sliding_ttl=True``
  a hit moves ``expires_at`` to ``now + ttl`` (the entry's own ttl).
- **Limits** are enforced inside the write transaction that crosses them. The
  write first drops expired entries, then evicts by policy down to
  ``EVICT_TO`` (95%) of the limit in one go, so only one write in
  ``limit / 20`` pays for eviction. Entries written by that same call are
  evicted last. A namespace's ``max_entries`` is checked with its own policy,
  then the file's ``max_entries`` with the cache's policy.
- **Policies.** ``lru``: least recently hit first; an entry never hit counts
  from its creation. ``lfu``: fewest hits first, the oldest first among equal
  counts. ``fifo``: oldest creation first.
- **max_bytes** is a safety net on pages in use (``page_count - freelist``):
  above it, the oldest-created 5% of entries go, whatever the policy, because
  sqlite-vec frees a vector chunk only when every row in it is gone and rows sit
  in chunks in insertion order. Use ``max_entries`` for policy-driven eviction.
- **Storing the same query again** (same namespace, user, context, normalised
  text): ``on_duplicate="replace"`` (default) overwrites the response, resets
  the TTL and bumps ``version``; ``"keep"`` leaves the stored entry untouched
  and returns its id; ``"keep_both"`` adds a second entry (the exact path then
  serves the newest). An expired duplicate is always replaced by a new entry.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, cast

from .errors import InvalidInputError
from .validation import MAX_TIMESTAMP, as_seconds

Eviction = Literal["lru", "lfu", "fifo"]
OnDuplicate = Literal["replace", "keep", "keep_both"]

EVICTION_POLICIES: tuple[Eviction, ...] = ("lru", "lfu", "fifo")
ON_DUPLICATE_CHOICES: tuple[OnDuplicate, ...] = ("replace", "keep", "keep_both")

#: A write that crosses a limit evicts down to this fraction of it, so the next
#: ``limit * (1 - EVICT_TO)`` writes need no eviction at all.
EVICT_TO = 0.95

#: Expired entries deleted in passing by every write (bounded so a write stays cheap;
#: ``purge()`` deletes them all).
LAZY_PURGE_BATCH = 32

#: The namespace settings ``configure_namespace`` accepts, persisted as JSON.
NAMESPACE_SETTINGS = ("ttl", "sliding_ttl", "max_entries", "eviction", "on_duplicate")


class Unset(Enum):
    """Type of :data:`UNSET`: "argument not given", as opposed to ``None`` ("never")."""

    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset.UNSET


def check_ttl(value: Any) -> float | None:
    """A time-to-live in seconds (a finite number > 0), or None for "never expires"."""
    if value is None:
        return None
    seconds = as_seconds(value)
    if seconds is None:
        raise InvalidInputError(f"ttl must be a number of seconds or None, got {value!r}")
    if not 0 < seconds < math.inf:  # also refuses NaN
        raise InvalidInputError(
            f"ttl must be a positive, finite number of seconds (None: never expires), got {value!r}"
        )
    return seconds


def check_age(value: Any) -> float:
    """An age in seconds for ``delete_older_than``: a number >= 0 (inf: nothing is that
    old). NaN is refused: ``updated_at < NaN`` matches no row, so it deleted nothing
    and said so as if the cache held nothing that old."""
    seconds = as_seconds(value)
    if seconds is None or not seconds >= 0:  # also refuses NaN
        raise InvalidInputError(f"seconds must be a number >= 0, got {value!r}")
    return seconds


def expiry(now: float, ttl: float) -> float:
    """``now + ttl``, at most the last time ``datetime`` can represent (the year 9999):
    a longer ttl means "practically never" and the entry must stay readable."""
    return min(now + ttl, MAX_TIMESTAMP)


def check_limit(value: Any, what: str) -> int | None:
    """A size limit: a positive int, or None for "no limit"."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidInputError(f"{what} must be a positive integer or None, got {value!r}")
    return int(value)


def check_eviction(value: Any) -> Eviction:
    if value not in EVICTION_POLICIES:
        raise InvalidInputError(f"eviction must be one of {EVICTION_POLICIES}, got {value!r}")
    return cast(Eviction, value)


def check_on_duplicate(value: Any) -> OnDuplicate:
    if value not in ON_DUPLICATE_CHOICES:
        raise InvalidInputError(
            f"on_duplicate must be one of {ON_DUPLICATE_CHOICES}, got {value!r}"
        )
    return cast(OnDuplicate, value)


def check_write_options(ttl: float | Unset | None, on_duplicate: Any) -> None:
    """Per-call ``ttl`` and ``on_duplicate`` of a store, checked before any work."""
    if not isinstance(ttl, Unset):
        check_ttl(ttl)
    if on_duplicate is not None:
        check_on_duplicate(on_duplicate)


def check_flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{what} must be True or False, got {value!r}")
    return value


_CHECKS = {
    "ttl": check_ttl,
    "sliding_ttl": lambda v: check_flag(v, "sliding_ttl"),
    "max_entries": lambda v: check_limit(v, "max_entries"),
    "eviction": check_eviction,
    "on_duplicate": check_on_duplicate,
}


def check_namespace_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Validate namespace overrides (also those read back from the file)."""
    unknown = set(settings) - set(NAMESPACE_SETTINGS)
    if unknown:
        raise InvalidInputError(f"unknown namespace settings {sorted(unknown)}")
    return {key: _CHECKS[key](value) for key, value in settings.items()}


@dataclass(frozen=True)
class NamespacePolicy:
    """The rules that apply to one namespace, after its overrides."""

    ttl: float | None
    sliding_ttl: bool
    max_entries: int | None
    eviction: Eviction
    on_duplicate: OnDuplicate

    def expires_at(self, now: float, ttl: float | Unset | None = UNSET) -> float | None:
        """When an entry written now expires: per-call ``ttl`` if given, else the policy's."""
        seconds = self.ttl if ttl is UNSET else check_ttl(ttl)
        return None if seconds is None else expiry(now, seconds)


@dataclass(frozen=True)
class LifecycleConfig:
    """A cache's lifecycle defaults (constructor arguments of ``SemanticCache``).

    ``max_entries`` and ``max_bytes`` bound the whole file; ``namespace_max_entries``
    is the default limit of every namespace (a namespace's own ``max_entries``
    overrides it).
    """

    ttl: float | None = None
    sliding_ttl: bool = False
    max_entries: int | None = None
    namespace_max_entries: int | None = None
    max_bytes: int | None = None
    eviction: Eviction = "lru"
    on_duplicate: OnDuplicate = "replace"

    def __post_init__(self) -> None:
        # Kept as the checks return them (float, int): a numpy ttl kept its type, and
        # now + np.float32(ttl) is an np.float32, which SQLite stored as a BLOB (the entry
        # could then not be read back) and which is minutes off at today's timestamps.
        object.__setattr__(self, "ttl", check_ttl(self.ttl))
        check_flag(self.sliding_ttl, "sliding_ttl")
        for name in ("max_entries", "namespace_max_entries", "max_bytes"):
            object.__setattr__(self, name, check_limit(getattr(self, name), name))
        check_eviction(self.eviction)
        check_on_duplicate(self.on_duplicate)

    def for_namespace(self, overrides: Mapping[str, Any]) -> NamespacePolicy:
        """This config with a namespace's stored overrides applied."""
        checked = check_namespace_settings(overrides)
        return NamespacePolicy(
            ttl=checked.get("ttl", self.ttl),
            sliding_ttl=checked.get("sliding_ttl", self.sliding_ttl),
            max_entries=checked.get("max_entries", self.namespace_max_entries),
            eviction=checked.get("eviction", self.eviction),
            on_duplicate=checked.get("on_duplicate", self.on_duplicate),
        )


def eviction_target(limit: int) -> int:
    """How many entries may remain after a write crossed ``limit``: 95% of it, but at
    least one. A limit of 1 rounded down to 0, so a write that crossed it evicted the
    entry it had just written along with the old one (and left the namespace empty)."""
    return max(1, math.floor(limit * EVICT_TO))
