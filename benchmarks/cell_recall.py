"""How many cells a lookup must scan: recall of the true nearest entry by cell layout.

Run from the repository root (outside the test run; ~1 minute, with the QQP
embeddings cached as for perf_search.py):

    python benchmarks/cell_recall.py [--entries 100000] [--probes 3000] [--seeds 3]

In a namespace with cells (semcache_sqlite/vector_cells.py) a lookup scans only the
``search_cells`` cells whose centroids are nearest the query, plus the entries stored
before the namespace got its cells. A lookup decides right only if the exact nearest
entry is in a scanned cell whenever it is similar enough to be served. For the probes
whose exact nearest entry is at or above each threshold, this counts how often that
entry's cell is not among the ``p`` nearest, for several cell counts and ``p``. Every
entry is counted as sorted into a cell, which is the worst case: in the library the
first entries stay unclustered and are always scanned.

The centroids are trained by the library's own ``train_centroids``, on what the library
trains them on: a random ``TRAINING_SAMPLE`` of the namespace's entries, with
``--seeds`` seeds. The share of rows a lookup scans is ``p / cells``; its cost also
grows with ``p`` (one vec0 query per cell, see README.md). This is the nearest
entry only: a guarded lookup whose nearest entry is servable takes its other
neighbours from the whole namespace.

Entries and probes are built as in the performance suite (perf_data.py).
"""

from __future__ import annotations

import argparse

import numpy as np
import numpy.typing as npt
from perf_data import make_rows, qqp_source
from qqp_data import add_data_arguments

from semcache_sqlite import vector_cells

Floats = npt.NDArray[np.float32]
THRESHOLDS = (0.80, 0.85, 0.90)
LAYOUTS = ((16, (4, 6)), (32, (6, 8, 10, 12)), (64, (8, 12, 16)), (128, (12, 16, 24)))


def cell_ranks(
    entries: Floats, probes: Floats, nearest: npt.NDArray[np.int64], centroids: Floats
) -> npt.NDArray[np.int64]:
    """For each probe: the rank (0 = nearest) of its exact nearest entry's cell among
    the cells ordered by centroid similarity to the probe."""
    cell_of_entry = np.asarray(vector_cells.nearest_cells(centroids, entries[nearest]))
    order = np.argsort(-(probes @ centroids.T), axis=1)
    ranks: npt.NDArray[np.int64] = (order == cell_of_entry[:, None]).argmax(axis=1)
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--entries", default="100000", help="entries, comma-separated")
    parser.add_argument("--probes", type=int, default=3000)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per layout")
    args = parser.parse_args()

    source = qqp_source(args.data, args.cache_dir, args.limit, args.probes, args.seed)
    probes = source.probe_vectors
    print(
        f"library: {vector_cells.CELLS} cells, {vector_cells.PROBED_CELLS} probed, "
        f"cells from {vector_cells.CLUSTER_AT} entries"
    )
    for size in (int(s) for s in args.entries.split(",")):
        rows = make_rows(source, size, args.seed)
        sims = probes @ rows.vectors.T
        nearest = sims.argmax(axis=1)
        best = sims[np.arange(len(probes)), nearest]
        counts = [int((best >= t).sum()) for t in THRESHOLDS]
        print(
            f"\n{size:,} entries, {len(probes)} probes; with a nearest entry at >= "
            + ", ".join(f"{t}: {c}" for t, c in zip(THRESHOLDS, counts, strict=True))
        )
        print("misses of the true nearest entry (at >= " + " / ".join(map(str, THRESHOLDS)) + ")")
        for cells, probed in LAYOUTS:
            line = f"  {cells:4d} cells:"
            worst: dict[int, list[int]] = {p: [0] * len(THRESHOLDS) for p in probed}
            for seed in range(args.seeds):
                rng = np.random.default_rng([seed, size, cells])
                pick = rng.choice(size, min(size, vector_cells.TRAINING_SAMPLE), replace=False)
                centroids = vector_cells.train_centroids(rows.vectors[np.sort(pick)], cells, seed)
                ranks = cell_ranks(rows.vectors, probes, nearest, centroids)
                for p in probed:
                    for i, t in enumerate(THRESHOLDS):
                        missed = int((ranks[best >= t] >= p).sum())
                        worst[p][i] = max(worst[p][i], missed)
            for p in probed:
                line += f"  p={p} ({p / cells:.0%}): " + "/".join(map(str, worst[p]))
            print(line)
        print(f"  (worst of {args.seeds} seeds)")


if __name__ == "__main__":
    main()
