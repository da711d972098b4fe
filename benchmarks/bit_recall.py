"""How many Hamming candidates a lookup needs: recall of the true nearest entry by bit code.

Run from the repository root (outside the test run; ~1 minute at 100k, with the QQP
embeddings cached as for perf_search.py):

    python benchmarks/bit_recall.py [--entries 100000] [--probes 3000] [--seed 0]

The library's lookup re-scores the ``search_candidates`` (16) entries whose sign bits
are nearest to the query's. A lookup decides right only if the exact nearest entry is
among them whenever it is similar enough to be served. For the probes whose exact
nearest entry is at or above each threshold, this counts how often that entry ranks
at or beyond 8, 12, 16 and 24 by Hamming distance. Ties are counted against, since
sqlite-vec breaks them arbitrarily. It does this for the library's code and for the
alternatives a faster scan would need:

- ``sign-384``: the sign of each raw coordinate (the library's index);
- ``centred-rotated-384``: minus the mean of the first 5,000 entries, then a random
  rotation. This is a per-file transform that would have to be trained and stored;
- ``pca-256`` / ``random-256``: 256 bits (a KNN ~18% cheaper at 16 candidates, see
  knn_floor.py): the top 256 principal components of the centred vectors, randomly
  rotated to spread the variance over the bits, or a random projection of them.

It also counts the probes whose 16 Hamming-nearest entries (the library's code) all
tie with the first: those lookups widen their candidates (``candidate_ids``).

Entries and probes are built as in the performance suite (perf_data.py): QQP questions,
with probes that are paraphrases of cached questions plus unrelated ones.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from perf_data import make_rows, qqp_source
from qqp_data import add_data_arguments

Floats = npt.NDArray[np.float32]
Code = Callable[[Floats], Floats]
Packed = npt.NDArray[np.uint8]
THRESHOLDS = (0.75, 0.85)
CANDIDATES = 16
#: Set bits per byte value, where numpy < 2 has no np.bitwise_count (~4x slower).
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)
RANKS = (8, 12, 16, 24)
TRAINING_ENTRIES = 5_000
LIBRARY_CODE = "sign-384"


def codes(train: Floats, rng: np.random.Generator) -> dict[str, Code]:
    """Each scheme as a map from vectors to the values whose signs are the bits."""
    mean = train.mean(axis=0)
    _, _, components = np.linalg.svd(train - mean, full_matrices=False)
    dim = train.shape[1]

    def rotation(n: int) -> Floats:
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        return q.astype(np.float32)

    rotate = rotation(dim)
    pca = components[:256].T.astype(np.float32) @ rotation(256)
    gauss = rng.standard_normal((dim, 256)).astype(np.float32)
    return {
        LIBRARY_CODE: lambda m: m,
        "centred-rotated-384": lambda m: (m - mean) @ rotate,
        "pca-256": lambda m: (m - mean) @ pca,
        "random-256": lambda m: (m - mean) @ gauss,
    }


def hamming_ranks(
    entry_bits: npt.NDArray[np.uint8],
    probe_bits: npt.NDArray[np.uint8],
    nearest: npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    """For each probe: how many other entries are at most as far (in bits) as its
    exact nearest entry, i.e. its 0-based rank with ties counted against."""
    ranks = np.empty(len(probe_bits), dtype=np.int64)
    for j, bits in enumerate(probe_bits):
        distance = hamming(entry_bits, bits)
        ranks[j] = int((distance <= distance[nearest[j]]).sum()) - 1
    return ranks


def hamming(entry_bits: Packed, bits: Packed) -> npt.NDArray[np.uint16]:
    """Bits differing between ``bits`` and each row of ``entry_bits``."""
    differ = np.bitwise_xor(entry_bits, bits)
    counts = np.bitwise_count(differ) if hasattr(np, "bitwise_count") else POPCOUNT[differ]
    distance: npt.NDArray[np.uint16] = counts.sum(axis=1, dtype=np.uint16)
    return distance


def all_tied(entry_bits: Packed, probe_bits: Packed) -> int:
    """Probes whose CANDIDATES Hamming-nearest entries are all as far as the nearest."""
    tied = 0
    for bits in probe_bits:
        distance = hamming(entry_bits, bits)
        k = min(CANDIDATES, len(distance)) - 1
        tied += int(np.partition(distance, k)[k] == distance.min())
    return tied


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--probes", type=int, default=3_000)
    args = parser.parse_args(argv)
    source = qqp_source(args.data, args.cache_dir, args.limit, args.probes, args.seed)
    rows = make_rows(source, args.entries, args.seed)
    entries, probes = rows.vectors, source.probe_vectors
    nearest = np.empty(len(probes), dtype=np.int64)
    similarity = np.empty(len(probes), dtype=np.float64)
    for start in range(0, len(probes), 256):
        sims = probes[start : start + 256] @ entries.T
        nearest[start : start + 256] = sims.argmax(axis=1)
        similarity[start : start + 256] = sims.max(axis=1)
    print(f"{rows.size:,} entries ({rows.synthetic:,} synthetic), {len(probes):,} probes")
    header = "".join(f"  miss@{r:<3}" for r in RANKS)
    print(f"{'threshold':>9}  {'probes':>6}  {'bits':<20}{header}  max rank")
    rng = np.random.default_rng(args.seed)
    tied = 0
    for name, code in codes(entries[:TRAINING_ENTRIES], rng).items():
        entry_bits = np.packbits(code(entries) > 0, axis=1)
        if name == LIBRARY_CODE:
            tied = all_tied(entry_bits, np.packbits(code(probes) > 0, axis=1))
        for threshold in THRESHOLDS:
            chosen = np.nonzero(similarity >= threshold)[0]
            probe_bits = np.packbits(code(probes[chosen]) > 0, axis=1)
            if not len(chosen):
                print(f"{threshold:>9.2f}  {0:>6}  {name:<20}  (no probe this similar)")
                continue
            ranks = hamming_ranks(entry_bits, probe_bits, nearest[chosen])
            misses = "".join(f"  {int((ranks >= r).sum()):>8}" for r in RANKS)
            print(f"{threshold:>9.2f}  {len(chosen):>6}  {name:<20}{misses}  {int(ranks.max()):>8}")
    print(
        f"probes whose {CANDIDATES} Hamming-nearest entries ({LIBRARY_CODE}) all tie with the "
        f"first, so the lookup widens: {tied} of {len(probes):,}"
    )


if __name__ == "__main__":
    main()
