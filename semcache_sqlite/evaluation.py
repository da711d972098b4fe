"""Measure hit quality on labelled pairs: pair metrics and a cache simulation.

Input: pairs ``(text_a, text_b, label)`` from a JSONL or CSV file (optionally
gzip-compressed), label 1 when the two texts ask the same thing.

**Pair metrics** score ``cos(a, b)`` as a duplicate classifier: ROC-AUC,
average precision, the best F1 and its threshold.

**Cache simulation** (what a cache would serve): every distinct ``text_a`` is
cached, every pair's ``text_b`` is asked once. A probe whose normalised text
equals a cached one is an exact-path hit (guards never apply, as in the cache).
Otherwise the nearest cached text is a hit iff the decision rule accepts it
(``score >= threshold``; with guards off, ``score`` is the cosine similarity).
A hit is *correct* iff the file labels the two texts duplicates (in any pair)
or they are the same text after normalisation (``scoring="labelled"``; with
``scoring="strict"`` identical texts count only if labelled). Per probe:
hit rate = hits / probes, false-hit rate = wrong hits / probes, precision =
correct hits / hits, recall = correct hits / probes that had a correct answer
in the cache.

Embeddings of the file's texts can be cached as ``.npy`` under a folder, keyed
by the embedder's model id and the sha256 of the sorted distinct texts (the same
files ``benchmarks/qqp_data.py`` writes), so a rerun costs a file read.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .combiner import SignalTable
from .embedders import Embedder
from .errors import InvalidInputError
from .quality import GuardConfig, Signals, competitor_gaps, compute_signals
from .validation import SIMILARITY_EPSILON, FloatMatrix, normalize_query

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Thresholds the simulation is evaluated at (the choice of an operating point uses all).
THRESHOLD_GRID: tuple[float, ...] = tuple(round(x / 1000, 3) for x in range(500, 1001))
#: Rows of the printed table.
TABLE_THRESHOLDS: tuple[float, ...] = (
    0.5,
    0.6,
    0.7,
    *(round(x / 100, 2) for x in range(75, 101)),
)
DEFAULT_EMBEDDING_CACHE = Path("~/.cache/semcache-sqlite-bench")


def default_data_path() -> Path:
    """``../shared/data/qqp_pairs_dev.jsonl.gz`` from the current directory: the labelled
    pairs beside a source checkout, run from its root as the README does. (Relative to
    the package it pointed into the virtualenv's lib/ once the project was installed.)"""
    return (Path.cwd() / ".." / "shared" / "data" / "qqp_pairs_dev.jsonl.gz").resolve()


# -- loading -------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledPair:
    text_a: str
    text_b: str
    label: bool  # True: the two texts ask the same thing


@dataclass(frozen=True)
class LoadedPairs:
    pairs: list[LabelledPair]
    all_texts: list[str]  # every text of the file (before --limit): keys the embedding cache
    skipped: int  # rows with an empty text
    name: str


def _label(value: Any, where: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "1.0", "true", "yes"):
        return True
    if text in ("0", "0.0", "false", "no"):
        return False
    raise InvalidInputError(f"{where}: label must be 0/1 or true/false, got {value!r}")


def _rows(path: Path) -> Iterable[tuple[dict[str, Any], str]]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig")
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    if name.endswith(".csv"):
        for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            yield dict(row), f"{path.name}:{number}"
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield json.loads(line), f"{path.name}:{number}"
            except json.JSONDecodeError as exc:
                raise InvalidInputError(f"{path.name}:{number}: not JSON: {exc}") from exc


def load_pairs(
    path: str | os.PathLike[str], limit: int | None = None, seed: int = 0
) -> LoadedPairs:
    """Read labelled pairs (``.jsonl``, ``.csv``, either ``.gz``) with fields
    ``text_a``, ``text_b``, ``label``. Rows with an empty text are skipped.
    With ``limit``, a seeded random sample of that many pairs, in file order."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InvalidInputError(f"labelled pairs file not found: {file}")
    pairs: list[LabelledPair] = []
    skipped = 0
    for row, where in _rows(file):
        try:
            a, b, label = row["text_a"], row["text_b"], row["label"]
        except (KeyError, TypeError) as exc:
            raise InvalidInputError(f"{where}: needs fields text_a, text_b, label") from exc
        if not isinstance(a, str) or not isinstance(b, str) or not a.strip() or not b.strip():
            skipped += 1
            continue
        pairs.append(LabelledPair(a, b, _label(label, where)))
    if not pairs:
        raise InvalidInputError(f"{file}: no usable pairs")
    all_texts = [t for p in pairs for t in (p.text_a, p.text_b)]
    if limit is not None and limit < len(pairs):
        keep = sorted(random.Random(seed).sample(range(len(pairs)), max(1, limit)))
        pairs = [pairs[i] for i in keep]
    return LoadedPairs(pairs, all_texts, skipped, file.name)


def split_pairs(
    pairs: Sequence[LabelledPair], fit_fraction: float = 0.5, seed: int = 0
) -> tuple[list[LabelledPair], list[LabelledPair]]:
    """Split by pair, seeded: (fit part, held-apart part)."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    cut = round(len(order) * fit_fraction)
    return [pairs[i] for i in sorted(order[:cut])], [pairs[i] for i in sorted(order[cut:])]


# -- embeddings ----------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddedTexts:
    """Distinct texts and one unit vector each."""

    vectors: FloatMatrix
    index: dict[str, int]

    def rows(self, texts: Iterable[str]) -> FloatMatrix:
        return self.vectors[np.fromiter((self.index[t] for t in texts), dtype=np.int64)]


def texts_digest(texts: Sequence[str]) -> str:
    """sha256 over length-prefixed UTF-8 texts (the benchmarks' cache key)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _cache_file(folder: Path, model_id: str, unique: Sequence[str]) -> Path:
    safe_model = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)
    return folder / f"{safe_model}-{texts_digest(unique)[:32]}.npy"


def embed_texts(
    texts: Iterable[str],
    embedder: Embedder,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    superset: Iterable[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 512,
) -> EmbeddedTexts:
    """Embed each distinct text once. With ``cache_dir``, reuse (or write)
    ``<model>-<digest>.npy``; a cached embedding of ``superset`` (e.g. the whole
    file when only a sample is evaluated) is used if it exists."""
    unique = sorted(set(texts))
    folder = None if cache_dir is None else Path(cache_dir).expanduser()
    if folder is not None:
        candidates = [unique]
        if superset is not None:
            candidates.insert(0, sorted(set(superset)))
        for candidate in candidates:
            file = _cache_file(folder, embedder.model_id, candidate)
            if file.is_file():
                vectors = np.load(file)
                if vectors.shape == (len(candidate), embedder.dim):
                    index = {t: i for i, t in enumerate(candidate)}
                    return EmbeddedTexts(vectors.astype(np.float32, copy=False), index)
    vectors = np.empty((len(unique), embedder.dim), dtype=np.float32)
    order = sorted(range(len(unique)), key=lambda i: len(unique[i]))  # similar lengths per batch
    for start in range(0, len(order), chunk):
        ids = order[start : start + chunk]
        vectors[ids] = embedder.embed([unique[i] for i in ids])
        if progress is not None:
            progress(start + len(ids), len(unique))
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        file = _cache_file(folder, embedder.model_id, unique)
        tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, vectors)
        os.replace(tmp, file)
    return EmbeddedTexts(vectors, {t: i for i, t in enumerate(unique)})


# -- pair metrics --------------------------------------------------------------------


@dataclass(frozen=True)
class PairMetrics:
    pairs: int
    duplicates: int
    roc_auc: float
    average_precision: float
    best_f1: float
    best_f1_threshold: float


def pair_metrics(scores: FloatArray, labels: BoolArray) -> PairMetrics:
    """ROC-AUC (ties get average ranks), average precision, best F1 of ``score >= t``."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise InvalidInputError("pair metrics need both duplicate and non-duplicate pairs")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    auc = (ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last].astype(np.float64)
    predicted = (last + 1).astype(np.float64)
    precision, recall = tp / predicted, tp / n_pos
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    f1 = 2 * tp / (predicted + n_pos)
    best = int(np.argmax(f1))
    return PairMetrics(len(labels), n_pos, float(auc), ap, float(f1[best]), float(s[last][best]))


# -- cache simulation ----------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One simulated lookup: the nearest cached text and what the rule sees."""

    query: str
    matched: str
    exact: bool
    correct: bool  # would serving ``matched`` for ``query`` be right?
    signals: Signals


@dataclass(frozen=True)
class Simulation:
    probes: list[Probe]
    cached: int  # distinct cached texts
    answerable: int  # probes with a correct answer somewhere in the cache
    table: SignalTable  # the probes' signals as arrays

    @property
    def exact(self) -> BoolArray:
        return np.array([p.exact for p in self.probes], dtype=bool)

    @property
    def correct(self) -> BoolArray:
        return np.array([p.correct for p in self.probes], dtype=bool)

    def scores(self, guards: GuardConfig) -> FloatArray:
        """The score each probe's match gets under ``guards`` (exact probes: 1.0)."""
        return np.where(self.exact, 1.0, self.table.scores(guards))

    def rows(self, guards: GuardConfig, thresholds: Sequence[float] = ()) -> list[SimulationRow]:
        return sweep(
            self.scores(guards),
            self.exact,
            self.correct,
            thresholds or THRESHOLD_GRID,
            answerable=self.answerable,
        )

    @classmethod
    def concat(cls, simulations: Sequence[Simulation]) -> Simulation:
        """Several simulations as one: its rates are the means over equal-sized runs."""
        tables = [s.table for s in simulations]
        table = SignalTable(
            *(np.concatenate([getattr(t, f) for t in tables]) for f in SignalTable.fields())
        )
        return cls(
            [p for s in simulations for p in s.probes],
            sum(s.cached for s in simulations),
            sum(s.answerable for s in simulations),
            table,
        )

    def fit_data(self) -> tuple[SignalTable, BoolArray]:
        """Signals and labels of the semantic (not exact-path) lookups: what guards see."""
        semantic = ~self.exact
        return self.table.subset(semantic), self.correct[semantic]


def _nearest(
    queries: FloatMatrix, cached: FloatMatrix, k: int, chunk: int = 1024
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Exact top-k (max cosine) cached rows of each query, best first."""
    k = min(k, len(cached))
    top_i = np.empty((len(queries), k), dtype=np.int64)
    top_s = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ cached.T
        if k < len(cached):
            part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        else:
            part = np.tile(np.arange(len(cached)), (len(sims), 1))
        part_s = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_s, axis=1, kind="stable")
        top_i[start : start + chunk] = np.take_along_axis(part, order, axis=1)
        top_s[start : start + chunk] = np.take_along_axis(part_s, order, axis=1)
    return top_i, top_s


#: How a served hit is judged (see the module docstring): "labelled" (default: the
#: cached text is a labelled duplicate of the asked one, or the same text), "strict"
#: (identical text counts only if labelled), "pair-label" (the rule that reproduces
#: DESIGN.md's figures: the asked text itself is left out of the cache, and a hit is
#: right iff the asked pair is labelled a duplicate, whatever entry came back).
SCORINGS = ("labelled", "strict", "pair-label")


def simulate(
    pairs: Sequence[LabelledPair],
    embedded: EmbeddedTexts,
    *,
    scoring: str = "labelled",
    neighbours: int = 4,
    lexical: bool = True,
) -> Simulation:
    """Cache every distinct text_a, ask every text_b; return what each lookup found."""
    if scoring not in SCORINGS:
        raise InvalidInputError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    by_pair_label = scoring == "pair-label"
    cached = sorted({p.text_a for p in pairs})
    normal = [normalize_query(t) for t in cached]
    exact_of = {n: t for n, t in zip(normal, cached, strict=True)}
    duplicates = {(p.text_a, p.text_b) for p in pairs if p.label}
    duplicates |= {(b, a) for a, b in duplicates}
    cached_set = set(cached)
    has_duplicate = {b for a, b in duplicates if a in cached_set}
    asked = sorted({p.text_b for p in pairs})
    # "pair-label" leaves the asked text itself out of the candidates: one more neighbour.
    top_i, top_s = _nearest(
        embedded.rows(asked), embedded.rows(cached), neighbours + int(by_pair_label)
    )
    found: dict[str, tuple[str, bool, Signals]] = {}
    for row, query in enumerate(asked):
        asked_normal = normalize_query(query)
        exact_text = exact_of.get(asked_normal)
        if exact_text is not None and not by_pair_label:
            found[query] = (exact_text, True, Signals(1.0))
            continue
        columns = [
            c
            for c in range(top_i.shape[1])
            if not (by_pair_label and normal[int(top_i[row, c])] == asked_normal)
        ][:neighbours]
        if not columns:  # only the asked text itself is cached
            found[query] = (query, False, Signals(0.0))
            continue
        best = int(top_i[row, columns[0]])
        similarity = min(1.0, float(top_s[row, columns[0]]))
        others = [float(top_s[row, c]) for c in columns[1:]]
        same = [normal[int(top_i[row, c])] == normal[best] for c in columns[1:]]
        margin, crowding = competitor_gaps(similarity, others, same)
        text = cached[best]
        signals = compute_signals(query if lexical else None, text, similarity, margin, crowding)
        found[query] = (text, False, signals)
    probes = []
    answerable = 0
    for pair in pairs:
        text, exact, signals = found[pair.text_b]
        if by_pair_label:  # DESIGN.md's rule: right iff the asked pair is a duplicate pair
            correct = bool(pair.label)
            answerable += int(pair.label)
        else:
            labelled = (text, pair.text_b) in duplicates
            correct = labelled or (exact and scoring == "labelled")
            answerable += int(
                pair.text_b in has_duplicate or (exact and scoring == "labelled") or labelled
            )
        probes.append(Probe(pair.text_b, text, exact, correct, signals))
    table = SignalTable.from_signals([p.signals for p in probes])
    return Simulation(probes, len(cached), answerable, table)


@dataclass(frozen=True)
class SimulationRow:
    threshold: float
    hit_rate: float  # hits / probes
    false_hit_rate: float  # wrong hits / probes
    precision: float  # correct hits / hits (1.0 when there are no hits)
    recall: float  # correct hits / answerable probes
    hits: int
    wrong_hits: int

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def sweep(
    scores: FloatArray,
    exact: BoolArray,
    correct: BoolArray,
    thresholds: Sequence[float] = THRESHOLD_GRID,
    answerable: int | None = None,
) -> list[SimulationRow]:
    """The simulation's figures at each threshold (exact-path probes always hit)."""
    n = len(scores)
    if n == 0:
        raise InvalidInputError("no probes to evaluate")
    base_hits = int(exact.sum())
    base_wrong = int((exact & ~correct).sum())
    semantic = ~exact
    s = scores[semantic]
    wrong = ~correct[semantic]
    order = np.argsort(s)
    s_sorted = s[order]
    wrong_suffix = np.r_[np.cumsum(wrong[order][::-1])[::-1], 0]
    denominator = max(1, answerable if answerable is not None else int(correct.sum()))
    rows = []
    for t in thresholds:
        first = int(np.searchsorted(s_sorted, t - SIMILARITY_EPSILON, side="left"))
        hits = base_hits + len(s_sorted) - first
        wrong_hits = base_wrong + int(wrong_suffix[first])
        good = hits - wrong_hits
        rows.append(
            SimulationRow(
                threshold=float(t),
                hit_rate=hits / n,
                false_hit_rate=wrong_hits / n,
                precision=good / hits if hits else 1.0,
                recall=good / denominator,
                hits=hits,
                wrong_hits=wrong_hits,
            )
        )
    return rows


def choose_threshold(
    rows: Sequence[SimulationRow],
    *,
    max_false_hit_rate: float | None = None,
    min_precision: float | None = None,
) -> SimulationRow | None:
    """The row meeting the target with the highest hit rate (ties: the higher threshold).

    A row that serves nothing is never chosen: its precision (1.0 by convention) meets
    any target, and a calibration stored at it made every lookup of the file miss."""
    if (max_false_hit_rate is None) == (min_precision is None):
        raise InvalidInputError("give exactly one target: max_false_hit_rate or min_precision")
    best: SimulationRow | None = None
    for row in rows:
        if row.hits == 0:
            continue
        if max_false_hit_rate is not None and row.false_hit_rate > max_false_hit_rate + 1e-12:
            continue
        if min_precision is not None and row.precision < min_precision - 1e-12:
            continue
        if (
            best is None
            or row.hit_rate > best.hit_rate
            or (row.hit_rate == best.hit_rate and row.threshold > best.threshold)
        ):
            best = row
    return best


def at_threshold(rows: Sequence[SimulationRow], threshold: float) -> SimulationRow:
    """The row of the grid nearest to ``threshold``."""
    return min(rows, key=lambda r: abs(r.threshold - threshold))
