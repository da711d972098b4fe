"""Cells: a large namespace's vectors grouped by their nearest centroid, so that a
lookup scans the few cells nearest the query instead of the whole namespace.

Pure numpy; the SQL that stores centroids and partitions the index by cell is in
``vector_index.py``.

Why (measured on QQP questions with the local model, 100k entries in one
namespace; benchmarks/README.md): the Hamming scan of a whole namespace costs
~0.4x of numpy's exact scan in RAM, and sqlite-vec 0.1.9 cannot make it cheaper.
Grouped into :data:`CELLS` cells by spherical k-means, a lookup scans the
:data:`PROBED_CELLS` whose centroids are most similar to the query: a quarter of
the rows, 0.28x of numpy at 100k entries and 0.13x at 1M (perf_search.py). Of
3,000 QQP probes over 100k entries, the 1,201 whose exact nearest entry is at
similarity >= 0.85 had it in a probed cell all but at most once (7 of 1,545 at
>= 0.8, none at >= 0.9; worst of 3 training seeds; benchmarks/cell_recall.py).
The entries next to the nearest one are found less reliably (one 0.1-0.3 less
similar may sit in a cell the query did not probe), and
the guards' margin and crowding compare a servable entry with exactly those: so
when the nearest entry found is at or above the lookup's threshold, the other
cells are scanned too, for their few Hamming-nearest entries (``Store.nearest``).
Misses, the lookups that find nothing servable, scan only the nearest cells.

Each probed cell is one more vec0 query with a fixed cost (~20 us, plus ~40 us
per 1,024-row chunk, however full, at 16 candidates), every cell of every namespace
pre-allocates a chunk (~85 KiB), and writes into many cells cost more (~10% of a
bulk insert), so cells are few and only namespaces of :data:`CLUSTER_AT` entries
or more have them: below that one scan of the namespace (~3 ms at 64k entries) is
about as cheap, and 10k-entry caches are as fast as without cells.

When a namespace reaches :data:`CLUSTER_AT` entries, the write that takes it
there trains its centroids on a sample and moves its entries into their cells:
a one-time ~3 s at 65,536 entries (~50 us per entry) inside that write. Later entries go to their
nearest cell. The centroids are then kept as the namespace grows; a rebuild of the
index (``semcache vacuum``, a re-embed, an upgrade) trains them again on the
namespace as it is then.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Cells per namespace with cells.
CELLS = 32
#: Cells a lookup scans: those whose centroids are most similar to the query.
PROBED_CELLS = 8
#: A namespace gets cells when its entries reach this many.
CLUSTER_AT = 65_536
#: At most this many of a namespace's vectors train its centroids.
TRAINING_SAMPLE = 8_192
#: Rounds of k-means: enough for the assignment to settle on real embeddings.
TRAINING_ROUNDS = 12
#: The unclustered partition: the entries of a namespace without cells.
NO_CELL = -1

Matrix = np.ndarray[Any, Any]


def unit_rows(matrix: Matrix) -> Matrix:
    """Rows scaled to length 1 (float32); a zero row stays zero."""
    rows = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: Matrix = np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)
    return out


def train_centroids(vectors: Matrix, cells: int, seed: int) -> Matrix:
    """``cells`` unit centroids (fewer if there are fewer distinct vectors) by
    spherical k-means on ``vectors``: each round puts every vector in the cell of
    its most similar centroid, then moves each centroid to its cell's mean direction.
    A cell left empty restarts at the vector its own centroid fits worst, so none
    is wasted. Deterministic for a given ``seed``."""
    data = unit_rows(vectors)
    distinct = np.unique(data, axis=0)
    count = min(int(cells), len(distinct))
    if count == 0:
        return np.empty((0, data.shape[1]), dtype=np.float32)
    rng = np.random.default_rng(seed)
    centroids = _spread_seeds(distinct, count, rng)
    for _ in range(TRAINING_ROUNDS):
        similarity = data @ centroids.T
        cell = similarity.argmax(axis=1)
        members = np.zeros((count, len(data)), dtype=np.float32)
        members[cell, np.arange(len(data))] = 1.0
        sums = members @ data  # one product: np.add.at is ~10x slower here
        sizes = np.bincount(cell, minlength=count)
        fit = similarity[np.arange(len(data)), cell]
        for empty in np.nonzero(sizes == 0)[0]:
            worst = int(fit.argmin())
            sums[empty] = data[worst]
            fit[worst] = np.inf  # each empty cell takes a different vector
        centroids = unit_rows(sums)
    trained: Matrix = centroids
    return trained


def _spread_seeds(data: Matrix, count: int, rng: np.random.Generator) -> Matrix:
    """Greedy k-means++ seeding (as scikit-learn does it): each next seed is the best
    of a few candidates drawn with probability proportional to the squared distance
    (1 - cosine) to the nearest seed so far, so two seeds rarely start in one group
    (which would split it and merge two others)."""
    trials = 2 + int(np.log(count))
    seeds = [int(rng.integers(len(data)))]
    nearest = _squared_distances(data, data[seeds])[0]
    for _ in range(count - 1):
        total = float(nearest.sum())
        if total > 0:
            candidates = rng.choice(len(data), trials, p=nearest / total)
        else:  # every vector is a seed already (cannot happen with distinct vectors)
            candidates = rng.integers(len(data), size=trials)
        after = np.minimum(nearest, _squared_distances(data, data[candidates]))
        best = int(after.sum(axis=1).argmin())
        seeds.append(int(candidates[best]))
        nearest = after[best]
    chosen: Matrix = data[seeds].copy()
    return chosen


def _squared_distances(data: Matrix, seeds: Matrix) -> Matrix:
    """(1 - cosine)^2 of every vector to each seed: one row per seed."""
    distances: Matrix = np.maximum(1.0 - seeds @ data.T, 0.0).astype(np.float64) ** 2
    return distances


def nearest_cells(centroids: Matrix, vectors: Matrix) -> list[int]:
    """The cell of each vector: its most similar centroid."""
    return [int(c) for c in (np.atleast_2d(vectors) @ centroids.T).argmax(axis=1)]


def cells_to_probe(centroids: Matrix, vector: Any, count: int = PROBED_CELLS) -> list[int]:
    """The ``count`` cells whose centroids are most similar to ``vector``."""
    similarity = centroids @ np.asarray(vector, dtype=np.float32)
    if count >= len(similarity):
        return list(range(len(similarity)))
    return [int(c) for c in np.argpartition(-similarity, count - 1)[:count]]


def centroids_blob(centroids: Matrix) -> bytes:
    return np.ascontiguousarray(centroids, dtype="<f4").tobytes()


def centroids_from_blob(blob: bytes, dim: int) -> Matrix:
    return np.frombuffer(blob, dtype="<f4").reshape(-1, dim)
