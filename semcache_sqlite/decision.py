"""The lookup decision: which cached entry a lookup serves, and what lookups return.

One implementation, shared by ``SemanticCache`` (lookup, find_similar,
get_or_compute, async and streaming) and the read-only ``semcache get`` and
``semcache search`` commands, so that the command line answers exactly as the
library would:

1. the exact-match path, ``Store.find_exact``: a hit with similarity 1.0, no
   embedder, no guards (:meth:`Judgement.exact_match`);
2. otherwise :func:`judge`: the k nearest entries in scope feed the guards
   (quality.py); a hit needs ``score >= threshold``, the same text as the query
   wherever the embedding model is blind (its ``unseen_text``), and, inside the
   verify band, the verifier's yes.

The threshold and guards come from ``quality_store.resolve_rule`` (per call >
namespace calibration > file calibration > constructor > the embedder's default).
Nothing here counts a lookup or writes to the file: the callers do that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .quality import GuardConfig, Signals, Verifier, match_signals, verify_hit
from .store import EntryRow, Scope, Store
from .timing import Timings
from .validation import SIMILARITY_EPSILON, FloatVector, similarity_hits

logger = logging.getLogger("semcache_sqlite")

#: The penalty that records a refusal for text the model cannot see (decision.judge).
UNSEEN_PENALTY = "unseen_text"


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, tz=timezone.utc)


@dataclass(frozen=True)
class CacheEntry:
    """A stored entry as the public API shows it."""

    id: int
    namespace: str
    user_id: str
    context_key: str
    query: str
    response: str
    created_at: datetime
    updated_at: datetime
    embedding_model: str
    embedding_dim: int
    version: int
    hit_count: int
    last_hit_at: datetime | None
    metadata: dict[str, Any] = field(default_factory=dict)
    expires_at: datetime | None = None  # None: never expires

    @classmethod
    def from_row(cls, row: EntryRow) -> CacheEntry:
        return cls(
            id=row.id,
            namespace=row.namespace,
            user_id=row.user_id,
            context_key=row.context_key,
            query=row.query,
            response=row.response,
            created_at=datetime.fromtimestamp(row.created_at, tz=timezone.utc),
            updated_at=datetime.fromtimestamp(row.updated_at, tz=timezone.utc),
            embedding_model=row.embedding_model,
            embedding_dim=row.embedding_dim,
            version=row.version,
            hit_count=row.hit_count,
            last_hit_at=_utc(row.last_hit_at),
            metadata=row.metadata,
            expires_at=_utc(row.expires_at),
        )


@dataclass(frozen=True)
class LookupResult:
    """What a lookup found: the entry, how similar it is, and how it was found."""

    entry: CacheEntry
    similarity: float
    exact: bool  # True: served by the exact-match path, embedder not run
    score: float | None = None  # what met the threshold: similarity minus guard penalties
    signals: Signals | None = None  # what the guards saw (None on the exact path)
    asked: str | None = None  # the query asked (None for find_similar)
    timings: Timings = field(default_factory=Timings, compare=False)

    @property
    def entry_id(self) -> int:
        return self.entry.id

    @property
    def query(self) -> str:
        """The cached query that matched (not the one asked)."""
        return self.entry.query

    @property
    def response(self) -> str:
        return self.entry.response

    @property
    def created_at(self) -> datetime:
        return self.entry.created_at

    @property
    def namespace(self) -> str:
        return self.entry.namespace

    @property
    def user_id(self) -> str:
        return self.entry.user_id


@dataclass(frozen=True)
class Judgement:
    """The decision for one query: the entry judged (the nearest in scope, or the exact
    repeat), what it scored against which threshold, and whether it is served."""

    threshold: float
    row: EntryRow | None = None  # None: nothing in scope
    similarity: float | None = None
    score: float | None = None  # similarity minus the guards' penalties
    signals: Signals | None = None  # None on the exact path
    penalties: dict[str, float] = field(default_factory=dict)  # what each guard charged
    exact: bool = False
    hit: bool = False

    @classmethod
    def exact_match(cls, row: EntryRow, threshold: float) -> Judgement:
        """The exact-match path: served whatever the threshold, guards never run."""
        return cls(threshold, row, 1.0, 1.0, exact=True, hit=True)

    @property
    def lowered_by_guards(self) -> bool:
        """A miss the plain cosine rule would have served: the guards refused it
        (or, in the library, the verifier did)."""
        return (
            not self.hit
            and self.similarity is not None
            and similarity_hits(self.similarity, self.threshold)
        )

    def result(self, asked: str | None) -> LookupResult:
        """The hit as the public API returns it."""
        assert self.hit and self.row is not None and self.similarity is not None
        entry = CacheEntry.from_row(self.row)
        return LookupResult(entry, self.similarity, self.exact, self.score, self.signals, asked)


def _seen_first(
    neighbours: list[tuple[EntryRow, float]], query: str, unseen: Callable[[str], str]
) -> tuple[list[tuple[EntryRow, float]], bool]:
    """The neighbours, an entry whose unseen text is the query's first if one ties with
    the nearest (same similarity, within float32 tolerance), and whether the first one's
    is: entries that differ only where the model is blind tie, and the first of them by
    id must not refuse a query another one matches."""
    seen = unseen(query)
    nearest = neighbours[0][1]
    for i, (row, distance) in enumerate(neighbours):
        if distance - nearest > SIMILARITY_EPSILON:
            break
        if unseen(row.query) == seen:
            return [neighbours[i], *neighbours[:i], *neighbours[i + 1 :]], True
    return neighbours, False


def judge(
    store: Store,
    scope: Scope,
    vector: FloatVector,
    query: str | None,
    threshold: float,
    guards: GuardConfig,
    verify: Verifier | None = None,
    verify_band: tuple[float, float] | None = None,
    unseen: Callable[[str], str] | None = None,
) -> Judgement:
    """Decide hit or miss for an embedded query (the semantic path).

    ``threshold`` and ``guards`` are resolved already (``resolve_rule``);
    ``query`` is the text asked (None for ``find_similar``: no lexical signals
    then, and a hit the verifier should check is refused). ``unseen``: the
    embedder's ``unseen_text``, if it has one: a match whose text differs from the
    query's where the model is blind is refused, whatever the guards (its similarity
    says nothing about that difference); of the entries tied with the nearest, one
    whose text matches there is the one judged.
    """
    # Guards never raise a score: only an entry at the threshold or above can be
    # served, and then its competitors must be found in every cell (whole_namespace_from).
    # Where the model is blind, at least two neighbours, for a tie (_seen_first); tied
    # vectors share their cell, so the guards alone need the other cells.
    blind = unseen is not None and query is not None
    neighbours = store.nearest(
        scope,
        vector,
        k=max(guards.neighbours, 2) if blind else guards.neighbours,
        whole_namespace_from=threshold if guards.neighbours > 1 else None,
    )
    if not neighbours:
        return Judgement(threshold)
    seen = True  # the unseen texts match (compared only if the nearest could be served)
    if blind:
        assert unseen is not None and query is not None
        if similarity_hits(1.0 - neighbours[0][1], threshold):
            neighbours, seen = _seen_first(neighbours, query, unseen)
        neighbours = neighbours[: guards.neighbours]
    found = [(row.query, row.response, min(1.0, 1.0 - d)) for row, d in neighbours]
    signals = match_signals(query, found[0], found[1:], lexical=guards.lexical)
    penalties = guards.penalties(signals)
    score = guards.score(signals)
    row = neighbours[0][0]
    if not seen and similarity_hits(score, threshold):
        penalties = {**penalties, UNSEEN_PENALTY: score}  # refused: scored down to 0
        score = 0.0
    hit = similarity_hits(score, threshold) and verify_hit(
        verify, verify_band, score, query, row.query, row.response
    )
    logger.debug(
        "nearest entry=%s similarity=%.4f score=%.4f threshold=%.4f hit=%s",
        row.id,
        signals.similarity,
        score,
        threshold,
        hit,
    )
    return Judgement(threshold, row, signals.similarity, score, signals, penalties, hit=hit)
