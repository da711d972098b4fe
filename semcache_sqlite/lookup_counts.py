"""Lookup counts that wait in memory until the file's write lock is free.

Every lookup counts a hit or a miss in the file: its namespace's counters and
latency sums (``namespace_stats``), and on a hit the entry's ``hit_count`` and
``last_hit_at`` (and its sliding TTL). That is a small write, and a write waits for
the file's write lock. Another connection can hold that lock for seconds (a bulk
import, a vacuum, a re-embed, a namespace's rows moved into cells), and a lookup,
whose answer is already known, must not wait for it. So ``Store.record_lookup``
waits at most :data:`COUNTER_LOCK_WAIT` for the lock; if it is still taken, the
count stays here, merged with the next ones, and is written by the next lookup that
gets the lock (while counts wait, lookups only try for it, without waiting), by the
Store's next write (``_after_write``: its eviction and purge must see the hits), or
by ``close()``. ``stats()`` adds what is waiting or being written, so the cache's own
figures are never behind.

Counts kept for a process that forks belong to the parent: the child starts with
none, or both would write them.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass, field, fields
from typing import Any

#: The longest a lookup waits for the write lock to count itself (seconds); then its
#: count waits in memory. Long enough for another thread's or process's ordinary
#: write (milliseconds), far shorter than a long one.
COUNTER_LOCK_WAIT = 0.05

#: Namespaces plus entries with counts waiting, beyond which a lookup waits for the
#: lock for the whole busy timeout, as any write does (and drops its counts, with a
#: warning, if it still cannot write them): memory stays bounded when the lock is
#: never free.
MAX_WAITING = 10_000


@dataclass(frozen=True)
class LatencySums:
    """One namespace's hit/miss counters and latency sums (``namespace_stats``)."""

    hits: int = 0
    misses: int = 0
    hit_seconds: float = 0.0
    miss_seconds: float = 0.0
    llm_seconds: float = 0.0
    llm_calls: int = 0
    embed_failures: int = 0
    coalesced: int = 0

    def values(self) -> tuple[Any, ...]:
        """The fields in order, namespace_stats' columns (``astuple`` deep-copies each
        field: ~20 us, a tenth of an exact-repeat lookup)."""
        return tuple(getattr(self, name) for name in _SUMS_FIELDS)

    def __add__(self, other: LatencySums) -> LatencySums:
        return LatencySums(*(a + b for a, b in zip(self.values(), other.values(), strict=True)))


_SUMS_FIELDS = tuple(f.name for f in fields(LatencySums))


@dataclass(frozen=True)
class EntryHits:
    """Hits of one entry not yet written: how many, and when the last one was."""

    namespace: str
    hits: int
    last_hit_at: float

    def __add__(self, other: EntryHits) -> EntryHits:
        return EntryHits(
            self.namespace, self.hits + other.hits, max(self.last_hit_at, other.last_hit_at)
        )


@dataclass
class CountBatch:
    """Lookup counts to write in one transaction."""

    namespaces: dict[str, LatencySums] = field(default_factory=dict)
    entries: dict[int, EntryHits] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.namespaces) + len(self.entries)

    def merge(self, other: CountBatch) -> None:
        for name, sums in other.namespaces.items():
            mine = self.namespaces.get(name)
            self.namespaces[name] = sums if mine is None else mine + sums
        for entry_id, hits in other.entries.items():
            held = self.entries.get(entry_id)
            self.entries[entry_id] = hits if held is None else held + hits


class WaitingCounts:
    """The counts of one Store that wait for the write lock (thread-safe).

    A batch being written (``take`` until ``settle``) still counts in ``size`` and
    ``namespace_sums``: the figures must not dip while a lookup tries for the lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._batch = CountBatch()
        self._in_flight: list[CountBatch] = []
        _ALL.add(self)

    def add(self, namespace: str, sums: LatencySums, hit_entry: int | None, now: float) -> None:
        """One lookup's count; ``hit_entry``: the entry a hit served, None on a miss."""
        hits = {} if hit_entry is None else {hit_entry: EntryHits(namespace, 1, now)}
        with self._lock:
            self._batch.merge(CountBatch({namespace: sums}, hits))

    def take(self) -> CountBatch:
        """Everything waiting, for the caller to write; then ``settle`` it."""
        with self._lock:
            batch, self._batch = self._batch, CountBatch()
            if batch:
                self._in_flight.append(batch)
        return batch

    def settle(self, batch: CountBatch, *, keep: bool) -> None:
        """A taken batch is written or dropped (``keep=False``), or waits again."""
        with self._lock:
            if not any(b is batch for b in self._in_flight):
                return  # settled already
            self._in_flight = [b for b in self._in_flight if b is not batch]
            if keep:
                self._batch.merge(batch)

    def size(self) -> int:
        with self._lock:
            return len(self._batch) + sum(len(b) for b in self._in_flight)

    def namespace_sums(self) -> dict[str, LatencySums]:
        """namespace -> the sums waiting or being written (a copy)."""
        with self._lock:
            merged = CountBatch(dict(self._batch.namespaces))
            for batch in self._in_flight:
                merged.merge(CountBatch(batch.namespaces))
        return merged.namespaces

    def _forget_after_fork(self) -> None:
        # The parent writes these; the lock may have been held by one of its threads.
        self._lock = threading.Lock()
        self._batch = CountBatch()
        self._in_flight = []


_ALL: weakref.WeakSet[WaitingCounts] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for counts in list(_ALL):
        counts._forget_after_fork()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork()
    os.register_at_fork(after_in_child=_after_fork_in_child)
