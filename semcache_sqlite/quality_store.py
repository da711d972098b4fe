"""SQL for hit quality: calibrated thresholds and feedback (tables of migration 0003).

- ``calibrations``: one row per namespace (``''`` = the whole file) written by
  ``semcache calibrate``: the threshold, the guard settings and weights it was
  measured with, the data it came from and its figures.
- ``feedback``: one row per ``SemanticCache.feedback()`` call: was a served hit right?
"""

from __future__ import annotations

import json
import numbers
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Protocol

from .db import Database
from .embedders import Embedder
from .errors import InvalidInputError
from .quality import GuardConfig, Signals
from .validation import check_int, check_threshold

FILE_WIDE = ""  # the namespace value of a file-wide calibration
#: The schema version (migration 0003) that creates these tables. Readers that never
#: migrate (the `semcache` inspection commands) treat an older file as uncalibrated.
QUALITY_SCHEMA_VERSION = 3


@dataclass(frozen=True)
class Calibration:
    """A stored threshold and where it came from."""

    threshold: float
    namespace: str = FILE_WIDE  # '' = every namespace without its own
    embedding_model: str = ""
    guards: GuardConfig | None = None  # the guard settings (and weights) it was measured with
    source: str = ""  # data set name, or "feedback"
    target: str = ""  # e.g. "false_hit_rate<=0.05"
    figures: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None


@lru_cache(maxsize=64)
def _guards_from_json(text: str) -> GuardConfig | None:
    data = json.loads(text)
    return GuardConfig.from_dict(data) if data else None


@dataclass(frozen=True)
class FeedbackRow:
    id: int
    entry_id: int
    namespace: str
    user_id: str
    query: str | None
    matched_query: str
    similarity: float | None
    score: float | None
    signals: Signals | None
    exact: bool
    correct: bool
    created_at: float


#: A calibrations row as ``_calibration`` reads it; callers add WHERE / ORDER BY.
_CALIBRATION_SELECT = (
    "SELECT namespace, threshold, embedding_model, guards, source, target, figures, "
    "created_at FROM calibrations "
)


class QualityStore:
    """Reads and writes the two quality tables of one cache file."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self._clock = clock

    # -- calibrations ------------------------------------------------------------

    def calibration_for(self, namespace: str, model: str) -> Calibration | None:
        """The namespace's own calibration, else the file-wide one, else None: of those
        measured with embedding model ``model`` only. A threshold means something for
        one model; rows of another (before a re-embed) stay as history, unused (see
        ``calibrations_not_for``)."""
        with self.db.reading() as conn:
            row = conn.execute(
                _CALIBRATION_SELECT + "WHERE namespace IN (?, '') AND embedding_model = ? "
                "ORDER BY namespace = '' LIMIT 1",
                (namespace, model),
            ).fetchone()
        return None if row is None else _calibration(row)

    def calibrations_not_for(self, model: str) -> list[Calibration]:
        """The stored calibrations measured with another model than ``model`` (the
        file's since a re-embed): ignored by lookups, reported by ``reembed`` and
        ``semcache doctor``."""
        with self.db.reading() as conn:
            rows = conn.execute(
                _CALIBRATION_SELECT + "WHERE embedding_model != ? ORDER BY namespace",
                (model,),
            ).fetchall()
        return [_calibration(row) for row in rows]

    def calibration(self, namespace: str) -> Calibration | None:
        """Exactly this namespace's row ('' = the file-wide row)."""
        with self.db.reading() as conn:
            row = conn.execute(
                _CALIBRATION_SELECT + "WHERE namespace = ?",
                (namespace,),
            ).fetchone()
        return None if row is None else _calibration(row)

    def save_calibration(self, calibration: Calibration) -> None:
        guards = "{}" if calibration.guards is None else json.dumps(calibration.guards.to_dict())
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO calibrations (namespace, threshold, embedding_model, guards, source, "
                "target, figures, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(namespace) DO UPDATE SET threshold = excluded.threshold, "
                "embedding_model = excluded.embedding_model, guards = excluded.guards, "
                "source = excluded.source, target = excluded.target, "
                "figures = excluded.figures, created_at = excluded.created_at",
                (
                    calibration.namespace,
                    float(calibration.threshold),
                    calibration.embedding_model,
                    guards,
                    calibration.source,
                    calibration.target,
                    json.dumps(calibration.figures, default=float),
                    self._clock(),
                ),
            )

    def delete_calibration(self, namespace: str) -> bool:
        with self.db.transaction() as conn:
            cursor = conn.execute("DELETE FROM calibrations WHERE namespace = ?", (namespace,))
            return int(cursor.rowcount) > 0

    # -- feedback ------------------------------------------------------------------

    def add_feedback(
        self,
        *,
        entry_id: int,
        namespace: str,
        user_id: str,
        query: str | None,
        matched_query: str,
        similarity: float | None,
        score: float | None,
        signals: dict[str, Any],
        correct: bool,
    ) -> int:
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO feedback (entry_id, namespace, user_id, query, matched_query, "
                "similarity, score, signals, correct, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry_id,
                    namespace,
                    user_id,
                    query,
                    matched_query,
                    similarity,
                    score,
                    json.dumps(signals),
                    int(bool(correct)),
                    self._clock(),
                ),
            )
            return int(cursor.lastrowid)

    def feedback_rows(self, namespace: str | None = None) -> list[FeedbackRow]:
        """Every feedback row (of one namespace), oldest first."""
        where, params = ("WHERE namespace = ?", (namespace,)) if namespace is not None else ("", ())
        with self.db.reading() as conn:
            rows = conn.execute(
                "SELECT id, entry_id, namespace, user_id, query, matched_query, similarity, "
                f"score, signals, correct, created_at FROM feedback {where} ORDER BY id",
                params,
            ).fetchall()
        return [_feedback(row) for row in rows]


def describe_calibrations(calibrations: list[Calibration]) -> str:
    """For humans: "file-wide (model-a), namespace 'faq' (model-a)"."""
    return ", ".join(
        ("file-wide" if c.namespace == FILE_WIDE else f"namespace {c.namespace!r}")
        + f" ({c.embedding_model})"
        for c in calibrations
    )


def _calibration(row: Any) -> Calibration:
    return Calibration(
        namespace=str(row[0]),
        threshold=float(row[1]),
        embedding_model=str(row[2]),
        guards=_guards_from_json(str(row[3])),
        source=str(row[4]),
        target=str(row[5]),
        figures=json.loads(row[6]),
        created_at=datetime.fromtimestamp(float(row[7]), tz=timezone.utc),
    )


def _feedback(row: Any) -> FeedbackRow:
    data = json.loads(row[8])
    exact = bool(data.pop("exact", False))
    similarity = None if row[6] is None else float(row[6])
    signals = None
    if similarity is not None:
        signals = Signals.from_dict({**data, "similarity": similarity})
    return FeedbackRow(
        id=int(row[0]),
        entry_id=int(row[1]),
        namespace=str(row[2]),
        user_id=str(row[3]),
        query=row[4],
        matched_query=str(row[5]),
        similarity=similarity,
        score=None if row[7] is None else float(row[7]),
        signals=signals,
        exact=exact,
        correct=bool(row[9]),
        created_at=float(row[10]),
    )


def resolve_rule(
    stored: Calibration | None,
    per_call: float | None,
    constructor: float | None,
    guards: GuardConfig,
    embedder: Embedder,
) -> tuple[float, GuardConfig]:
    """The threshold and guards of a lookup.

    Threshold: per call > stored (namespace, else file-wide: ``stored``) >
    constructor > the embedder's default, which is meant for the default guards;
    with any other guard set the embedder's ``unguarded_threshold`` is used when
    it has one. Weights: a stored calibration's > the GuardConfig's > packaged.
    """
    if stored is not None and stored.guards is not None and stored.guards.weights is not None:
        guards = replace(guards, weights=stored.guards.weights)
    if per_call is not None:
        return check_threshold(per_call), guards
    if stored is not None:
        return stored.threshold, guards
    if constructor is not None:
        return constructor, guards
    default = embedder.default_threshold
    if not guards.is_default:
        default = getattr(embedder, "unguarded_threshold", default)
    return check_threshold(default), guards


class ServedLookup(Protocol):
    """What feedback needs from a lookup result (``cache.LookupResult``)."""

    @property
    def entry_id(self) -> int: ...
    @property
    def namespace(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def query(self) -> str: ...
    @property
    def similarity(self) -> float: ...
    @property
    def score(self) -> float | None: ...
    @property
    def signals(self) -> Signals | None: ...
    @property
    def exact(self) -> bool: ...
    @property
    def asked(self) -> str | None: ...


class FeedbackLog:
    """Records feedback; remembers the last lookups served (per entry) so that an
    entry id alone still finds the query asked, similarity and signals."""

    def __init__(self, store: QualityStore, remember: int = 1024) -> None:
        self._store = store
        self._recent: OrderedDict[int, ServedLookup] = OrderedDict()
        self._limit = remember
        self._lock = threading.Lock()

    def remember(self, result: ServedLookup) -> None:
        with self._lock:
            self._recent[result.entry_id] = result
            self._recent.move_to_end(result.entry_id)
            while len(self._recent) > self._limit:
                self._recent.popitem(last=False)

    def record(
        self,
        result: ServedLookup | int,
        correct: bool,
        query: str | None,
        entry: Callable[[int], tuple[str, str, str]],
    ) -> int:
        """``entry(id) -> (namespace, user_id, cached query)`` for ids not remembered."""
        if isinstance(correct, bool) is False and correct not in (0, 1):
            raise InvalidInputError(f"correct must be True or False, got {correct!r}")
        if isinstance(result, numbers.Integral) and not isinstance(result, bool):
            result = check_int(result, "entry id")  # numpy ints too; SQLite's range
        if isinstance(result, int) and not isinstance(result, bool):
            with self._lock:
                remembered = self._recent.get(result)
            if remembered is None:
                namespace, user_id, matched = entry(result)
                return self._store.add_feedback(
                    entry_id=result,
                    namespace=namespace,
                    user_id=user_id,
                    query=query,
                    matched_query=matched,
                    similarity=None,
                    score=None,
                    signals={},
                    correct=bool(correct),
                )
            result = remembered
        elif isinstance(result, bool) or not hasattr(result, "entry_id"):
            raise InvalidInputError("feedback() takes a LookupResult or an entry id")
        signals = {} if result.signals is None else result.signals.to_dict()
        signals.pop("similarity", None)
        return self._store.add_feedback(
            entry_id=result.entry_id,
            namespace=result.namespace,
            user_id=result.user_id,
            query=query if query is not None else result.asked,
            matched_query=result.query,
            similarity=result.similarity,
            score=result.score,
            signals={**signals, "exact": result.exact},
            correct=bool(correct),
        )
