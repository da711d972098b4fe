"""The lifecycle half of ``SemanticCache``'s API: namespace settings, purge,
invalidation, re-embedding and vacuum (mixed into the class, see cache.py).

The rules are in ``lifecycle.py``, the SQL in ``store_lifecycle.py`` and
``store_reembed.py``, the re-embed loop in ``reembed.py``.

Filters of the invalidation methods (``purge``, ``delete_older_than``,
``forget_similar``) narrow what is deleted when given and match everything
when left out, like ``clear()``: ``namespace=None`` means every namespace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .embedders import Embedder
from .lifecycle import (
    UNSET,
    Eviction,
    NamespacePolicy,
    OnDuplicate,
    Unset,
    check_age,
)
from .reembed import run_reembed
from .store import Store
from .store_reembed import ReembedState
from .validation import (
    SIMILARITY_EPSILON,
    FloatVector,
    check_query,
    check_scope_name,
    check_threshold,
)

_Context = Mapping[str, Any] | str | None


class _Cache(Protocol):
    """What the mixin needs from SemanticCache."""

    embedder: Embedder
    namespace: str
    max_query_chars: int
    _store: Store

    def context_key(self, context: _Context = None, llm: object | None = None) -> str: ...

    def _embed_one(self, query: str) -> FloatVector: ...


class LifecycleMixin:
    """TTL, limits, invalidation, re-embedding and vacuum for ``SemanticCache``."""

    # -- per-namespace settings -------------------------------------------------------

    def configure_namespace(
        self: _Cache,
        namespace: str,
        *,
        ttl: float | Unset | None = UNSET,
        sliding_ttl: bool | Unset = UNSET,
        max_entries: int | Unset | None = UNSET,
        eviction: Eviction | Unset = UNSET,
        on_duplicate: OnDuplicate | Unset = UNSET,
        reset: bool = False,
    ) -> NamespacePolicy:
        """Override the cache's lifecycle settings for one namespace, in the file.

        Every process using the file sees them. An argument left out keeps the
        namespace's current setting (or the cache's, if it has none); ``None``
        means "never expires" (``ttl``) or "no limit" (``max_entries``).
        ``reset=True`` drops the namespace's previous overrides first. A lower
        ``max_entries`` evicts at once. Returns the namespace's rules now in force.
        """
        check_scope_name(namespace, "namespace", allow_empty=False)
        changes: dict[str, Any] = {
            key: value
            for key, value in (
                ("ttl", ttl),
                ("sliding_ttl", sliding_ttl),
                ("max_entries", max_entries),
                ("eviction", eviction),
                ("on_duplicate", on_duplicate),
            )
            if not isinstance(value, Unset)
        }
        return self._store.update_namespace_overrides(namespace, changes, reset=reset)

    def namespace_policy(self: _Cache, namespace: str | None = None) -> NamespacePolicy:
        """The lifecycle rules in force for ``namespace`` (default: the cache's)."""
        name = self.namespace if namespace is None else namespace
        return self._store.namespace_policy(check_scope_name(name, "namespace", allow_empty=False))

    # -- invalidation ------------------------------------------------------------------

    def purge(self: _Cache, namespace: str | None = None) -> int:
        """Delete every expired entry now (of ``namespace``, or all); return how many.

        Not needed for correctness (expired entries are never served, and writes
        delete a few in passing); use it to reclaim their space on a schedule.
        """
        if namespace is not None:
            check_scope_name(namespace, "namespace", allow_empty=False)
        return self._store.purge_expired(namespace)

    def delete_older_than(self: _Cache, seconds: float, namespace: str | None = None) -> int:
        """Delete entries whose response was written more than ``seconds`` ago.

        Age counts from the last write of the response (store, replace or
        ``update``), not from the first store: a refreshed answer is not old.
        """
        age = check_age(seconds)
        if namespace is not None:
            check_scope_name(namespace, "namespace", allow_empty=False)
        return self._store.delete_older_than(self._store.now() - age, namespace)

    def forget_similar(
        self: _Cache,
        query: str,
        *,
        min_similarity: float,
        namespace: str | None = None,
        user_id: str | None = None,
        context: _Context | Unset = UNSET,
    ) -> int:
        """Delete every entry within ``min_similarity`` (cosine, [0, 1]) of ``query``.

        The way to correct a bad answer and its near-duplicates: everything a
        lookup for ``query`` could have been served at that threshold goes.
        Filters narrow it: ``namespace`` and ``user_id`` (``""`` = shared entries
        only) when given; ``context`` when given (``None`` = the cache's default
        context), any context when left out. Returns how many entries were deleted.
        """
        check_query(query, max_chars=self.max_query_chars)
        bound = check_threshold(min_similarity)
        if namespace is not None:
            check_scope_name(namespace, "namespace", allow_empty=False)
        if user_id is not None:
            check_scope_name(user_id, "user_id", allow_empty=True)
        context_key = None if isinstance(context, Unset) else self.context_key(context)
        vector = self._embed_one(query)
        # The same float32 tolerance as a lookup's hit test (similarity_hits).
        max_distance = 1.0 - bound + SIMILARITY_EPSILON
        deleted = self._store.delete_near(
            vector,
            max_distance,
            namespace=namespace,
            user_id=user_id,
            context_key=context_key,
        )
        return len(deleted)

    # -- embedding model change -------------------------------------------------------

    def reembed(
        self: _Cache,
        new_embedder: Embedder,
        *,
        batch_size: int = 256,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Re-embed every entry with ``new_embedder`` and make it the file's model.

        Runs in batches (``progress(done, total)`` after each); the new vectors
        are staged beside the old ones, so lookups keep working with the current
        embedder until the switch, which is one transaction. If it stops half-way
        (crash, exception), calling it again with the same model continues where
        it stopped. Afterwards this cache uses ``new_embedder``, and opening the
        file with the old one raises EmbedderMismatchError. Returns the number of
        entries converted.
        """
        converted = run_reembed(self._store, new_embedder, batch_size=batch_size, progress=progress)
        self.embedder = new_embedder
        return converted

    def reembed_status(self: _Cache) -> ReembedState | None:
        """The unfinished re-embed of this file (target model, done/total), if any."""
        return self._store.reembed_state()

    def cancel_reembed(self: _Cache) -> bool:
        """Drop an unfinished re-embed's staged vectors; True if there was one."""
        return self._store.reembed_cancel()

    # -- space -----------------------------------------------------------------------

    def vacuum(self: _Cache, *, compact_vectors: bool = True) -> dict[str, Any]:
        """Give unused space back to the file system; returns the sizes in bytes.

        Purges expired entries, then (``compact_vectors``) rebuilds the vector
        table so its rows fill as few chunks as possible (sqlite-vec reuses a
        deleted row's space only once its whole 1024-row chunk is empty), then
        runs SQLite's VACUUM and truncates the WAL. Worth it after deleting or
        evicting many entries, after an LRU/LFU cache shrank, and after
        ``reembed``; useless on a FIFO cache at steady state, which reuses its
        space by itself. It rewrites the whole file (needs that much free disk)
        and blocks writers meanwhile.

        Returns ``bytes_before`` and ``bytes_after`` (the file plus its WAL),
        ``vectors_rebuilt`` and ``wal_truncated``: False when another connection was
        using the file (waited for up to 1 s), so the WAL could not be emptied; a
        reader from before the VACUUM also keeps the compacted pages in the WAL until
        it is done, so ``bytes_after`` may even exceed ``bytes_before`` until then
        (the next write past the WAL limit, closing the last connection, or vacuum
        again gives the space back).
        """
        return self._store.vacuum(compact_vectors)._asdict()
