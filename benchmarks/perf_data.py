"""Cached entries and probes for the performance suite (``perf_search.py``).

Two sources:

- ``qqp`` (the real one): the distinct questions of ``shared/data/qqp_pairs_dev.jsonl.gz``
  embedded with the local model (all-MiniLM-L6-v2, int8 ONNX), read from the
  ``.npy`` cache that ``qqp_data.embed_unique`` keeps under
  ``~/.cache/semcache-sqlite-bench``. Probes are mostly the ``text_b`` of pairs whose
  ``text_a`` is cached (QQP pairs are hard near-duplicates, so many probes have a
  neighbour above the threshold), plus ~20% "unrelated" questions whose pair
  partners are kept out of the cache. No probe text (after the cache's own
  normalisation) is ever cached, so every lookup goes through vector search.
- ``synthetic`` (the fallback when the QQP data or its embedding cache is absent,
  e.g. on CI): a handful of built-in paraphrase pairs embedded with the local model.

Padding: QQP has ~112k distinct questions, so sizes above that (1M) are padded with
SYNTHETIC vectors made from real ones: normalised mixtures of two or three real
embeddings (weights uniform in [0.5, 1]) plus small Gaussian noise (norm ~0.1).
Such a mixture is ~0.75-0.9 similar to its parents, so it behaves like another
question on the same topics rather than like a copy; it is never a random vector.
Their query texts are ``"synthetic question #<i>"``. The report says how many
entries of each size are synthetic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from qqp_data import embed_unique, embedding_cache_file, load_pairs, resolve_data_path

from semcache_sqlite import LocalEmbedder
from semcache_sqlite.validation import FloatMatrix, normalize_query

IntArray = npt.NDArray[np.int64]

#: Share of probes that are unrelated to anything deliberately cached.
UNRELATED_SHARE = 0.2
#: Norm of the Gaussian noise added to each (unit) synthetic mixture.
SYNTHETIC_NOISE_NORM = 0.1
SINGLE_NAMESPACE = "bench"

# Fallback data: (cached question, paraphrase asked) and questions nothing is cached for.
BUILTIN_PAIRS = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("What are the pricing plans?", "How much do the plans cost?"),
    ("How do I create a new project?", "How can I start a new project?"),
    ("Can I export my data?", "Is it possible to export my data?"),
    ("How do I add team members?", "How can I invite people to my team?"),
    ("How do I delete my account?", "How can I remove my account?"),
    ("What is the refund policy?", "Can I get a refund?"),
    ("How do I enable two-factor authentication?", "How to turn on 2FA?"),
    ("Where can I download the mobile app?", "Where do I get the mobile app?"),
    ("How do I change my email address?", "How can I update my email address?"),
    ("What payment methods do you accept?", "Which payment methods are accepted?"),
    ("How do I cancel my subscription?", "How can I cancel my subscription?"),
    ("Is there a free trial?", "Do you offer a free trial?"),
    ("How do I contact support?", "How can I reach customer support?"),
    ("What is the best way to learn Python?", "How should I learn Python?"),
    ("Why is the sky blue?", "What makes the sky blue?"),
]
BUILTIN_UNRELATED = [
    "What is the capital of Australia?",
    "How many legs does a spider have?",
    "Who wrote War and Peace?",
    "What is the boiling point of water on Everest?",
    "How do volcanoes form?",
]
BUILTIN_FILLERS = [
    "How do I rename a file?",
    "What is a good name for a cat?",
    "How long does shipping take?",
    "Can I use the app offline?",
    "How do I print an invoice?",
    "What time zone are your servers in?",
]


@dataclass(frozen=True)
class Probe:
    text: str
    related: bool  # the pair partner of a cached text (a paraphrase or a hard negative)
    anchor: str | None  # the cached text it is paired with


@dataclass(frozen=True)
class Source:
    """Real texts that may be cached (anchors first) and the probes, all embedded."""

    kind: str  # "qqp" | "synthetic"
    description: str
    pool_texts: list[str]
    pool_vectors: FloatMatrix
    probes: list[Probe]
    probe_vectors: FloatMatrix
    sample_texts: list[str]  # for the embedder's throughput

    @property
    def dim(self) -> int:
        return int(self.pool_vectors.shape[1])


@dataclass(frozen=True)
class Rows:
    """The cached entries of one size, in insertion order (randomly shuffled)."""

    size: int
    texts: list[str]
    vectors: FloatMatrix
    real: int
    synthetic: int
    row_of_text: dict[str, int]

    @staticmethod
    def response(row: int) -> str:
        """Unique per entry, so find_similar's answer tells which entry it chose."""
        return f"cached answer #{row}"

    @staticmethod
    def row_of_response(response: str) -> int:
        return int(response.rsplit("#", 1)[1])

    def responses(self, start: int, stop: int) -> list[str]:
        return [self.response(i) for i in range(start, stop)]


@dataclass(frozen=True)
class Layout:
    """Namespaces over Rows: namespace j holds rows ``offsets[j]:offsets[j+1]``."""

    names: list[str]
    offsets: IntArray
    probe_ns: IntArray  # namespace index each probe is asked in

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def label(self) -> str:
        return f"{self.count} ns"

    def bounds(self, ns: int) -> tuple[int, int]:
        return int(self.offsets[ns]), int(self.offsets[ns + 1])

    def namespace_of_row(self, row: int) -> int:
        return int(np.searchsorted(self.offsets, row, side="right")) - 1

    def sizes(self) -> IntArray:
        sizes: IntArray = np.diff(self.offsets)
        return sizes


def qqp_available(data: str, cache_dir: str, limit: int | None, seed: int) -> str | None:
    """None if the QQP source can be used without embedding anything, else why not."""
    path = resolve_data_path(data)
    if not path.is_file():
        return f"QQP data not found at {path}"
    pairs = load_pairs(path, limit, seed).pairs
    texts = sorted({t for p in pairs for t in (p.text_a, p.text_b)})
    file = embedding_cache_file(texts, LocalEmbedder(), cache_dir)
    if not file.is_file():
        return f"no cached QQP embeddings at {file} (embedding them takes ~9 minutes)"
    return None


def qqp_source(data: str, cache_dir: str, limit: int | None, n_probes: int, seed: int) -> Source:
    """Probes and the pool of cacheable texts from QQP (see the module docstring)."""
    loaded = load_pairs(data, limit, seed)
    pairs = loaded.pairs
    emb = embed_unique([t for p in pairs for t in (p.text_a, p.text_b)], LocalEmbedder(), cache_dir)
    rng = random.Random(seed)
    partners: dict[str, set[str]] = {}
    for p in pairs:
        partners.setdefault(p.text_a, set()).add(p.text_b)
        partners.setdefault(p.text_b, set()).add(p.text_a)
    n_unrelated = round(n_probes * UNRELATED_SHARE)
    n_related = n_probes - n_unrelated

    probes: list[Probe] = []
    probe_norms: set[str] = set()
    anchors: list[str] = []
    anchor_norms: set[str] = set()
    shuffled = list(pairs)
    rng.shuffle(shuffled)
    for p in shuffled:
        if len(probes) >= n_related:
            break
        na, nb = normalize_query(p.text_a), normalize_query(p.text_b)
        if na == nb or nb in anchor_norms or nb in probe_norms or na in probe_norms:
            continue
        probes.append(Probe(p.text_b, True, p.text_a))
        probe_norms.add(nb)
        if na not in anchor_norms:
            anchor_norms.add(na)
            anchors.append(p.text_a)

    excluded: set[str] = set()  # partners of unrelated probes: never cached
    texts = list(emb.texts)
    rng.shuffle(texts)
    unrelated = 0
    for t in texts:
        if unrelated >= n_unrelated:
            break
        nt = normalize_query(t)
        near = {normalize_query(x) for x in partners.get(t, ())}
        if nt in probe_norms or nt in anchor_norms or nt in excluded or near & anchor_norms:
            continue
        probes.append(Probe(t, False, None))
        probe_norms.add(nt)
        excluded |= near
        unrelated += 1
    rng.shuffle(probes)

    pool: list[str] = []
    seen: set[str] = set()
    for t in [*anchors, *texts]:
        nt = normalize_query(t)
        if nt in seen or nt in probe_norms or nt in excluded:
            continue
        seen.add(nt)
        pool.append(t)
    description = (
        f"QQP dev pairs ({resolve_data_path(data)}): {len(pairs):,} pairs, "
        f"{len(emb.texts):,} distinct questions embedded with {LocalEmbedder().model_id} "
        f"(cached .npy); {len(pool):,} cacheable after removing probes; probes: "
        f"{n_related} text_b of pairs whose text_a is cached + {unrelated} unrelated"
    )
    return Source(
        kind="qqp",
        description=description,
        pool_texts=pool,
        pool_vectors=emb.rows(pool),
        probes=probes,
        probe_vectors=emb.rows(p.text for p in probes),
        sample_texts=rng.sample(emb.texts, min(512, len(emb.texts))),
    )


def synthetic_source(embedder: LocalEmbedder, n_probes: int, seed: int) -> Source:
    """The CI fallback: built-in paraphrase pairs embedded with the local model."""
    rng = random.Random(seed)
    n_unrelated = min(len(BUILTIN_UNRELATED), round(n_probes * UNRELATED_SHARE))
    related = BUILTIN_PAIRS[: max(0, n_probes - n_unrelated)]
    probes = [Probe(b, True, a) for a, b in related]
    probes += [Probe(t, False, None) for t in BUILTIN_UNRELATED[:n_unrelated]]
    rng.shuffle(probes)
    pool = [a for a, _ in BUILTIN_PAIRS] + BUILTIN_FILLERS
    vectors = embedder.embed(pool + [p.text for p in probes])
    description = (
        f"SYNTHETIC fallback: {len(pool)} built-in questions embedded with "
        f"{embedder.model_id}, {len(probes)} probes (paraphrases + unrelated); everything "
        "else is synthetic mixtures. Not representative: run with the QQP data for figures"
    )
    return Source(
        kind="synthetic",
        description=description,
        pool_texts=pool,
        pool_vectors=vectors[: len(pool)],
        probes=probes,
        probe_vectors=vectors[len(pool) :],
        sample_texts=[*pool, *(p.text for p in probes)],
    )


def fill_synthetic_mixtures(
    base: FloatMatrix, out: FloatMatrix, rng: np.random.Generator, chunk: int = 16384
) -> None:
    """Fill ``out`` with unit mixtures of 2-3 rows of ``base`` plus small noise."""
    dim = base.shape[1]
    sigma = SYNTHETIC_NOISE_NORM / np.sqrt(dim)
    for start in range(0, len(out), chunk):
        n = min(chunk, len(out) - start)
        parents = rng.integers(0, len(base), size=(n, 3))
        weights = rng.uniform(0.5, 1.0, size=(n, 3)).astype(np.float32)
        weights[rng.random(n) < 0.5, 2] = 0.0  # half of them mix two parents, half three
        mixed = np.einsum("nk,nkd->nd", weights, base[parents])
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        mixed += rng.normal(0.0, sigma, size=mixed.shape).astype(np.float32)
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        out[start : start + n] = mixed


def make_rows(source: Source, size: int, seed: int) -> Rows:
    """``size`` entries: real texts first (anchors included), padded synthetically, shuffled."""
    rng = np.random.default_rng([seed, size])
    real = min(size, len(source.pool_texts))
    position = rng.permutation(size)  # entry i of the unshuffled list goes to row position[i]
    vectors = np.empty((size, source.dim), dtype=np.float32)
    vectors[position[:real]] = source.pool_vectors[:real]
    texts: list[str] = [""] * size
    for i in range(real):
        texts[int(position[i])] = source.pool_texts[i]
    if size > real:
        pad = np.empty((size - real, source.dim), dtype=np.float32)
        fill_synthetic_mixtures(source.pool_vectors[:real], pad, rng)
        vectors[position[real:]] = pad
        del pad
        for i in range(size - real):
            texts[int(position[real + i])] = f"synthetic question #{i}"
    return Rows(size, texts, vectors, real, size - real, {t: i for i, t in enumerate(texts)})


def zipf_sizes(total: int, count: int, exponent: float = 1.0) -> list[int]:
    """``count`` namespace sizes summing to ``total``, the j-th ~ 1/j**exponent, each >= 1."""
    count = max(1, min(count, total))
    weights = 1.0 / np.arange(1, count + 1, dtype=np.float64) ** exponent
    sizes = np.maximum(1, np.floor(total * weights / weights.sum()).astype(np.int64))
    sizes[0] += total - int(sizes.sum())  # the remainder goes to the largest namespace
    while sizes[0] < 1:  # only when many were rounded up to 1: take from the largest others
        j = int(np.argmax(sizes[1:])) + 1
        sizes[j] -= 1
        sizes[0] += 1
    return [int(s) for s in sizes]


def make_layout(source: Source, rows: Rows, namespaces: int, seed: int) -> Layout:
    """1 namespace, or ``namespaces`` of Zipf-like sizes over consecutive (shuffled) rows.

    A probe is asked in the namespace of its anchor when the anchor is cached, else in
    the namespace of a random entry (so big namespaces get more traffic, as in life).
    """
    rng = np.random.default_rng([seed, rows.size, namespaces])
    if namespaces <= 1:
        names, sizes = [SINGLE_NAMESPACE], [rows.size]
    else:
        sizes = zipf_sizes(rows.size, namespaces)
        names = [f"ns-{j:04d}" for j in range(len(sizes))]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    layout = Layout(names, offsets, np.zeros(len(source.probes), dtype=np.int64))
    for i, probe in enumerate(source.probes):
        anchor_row = rows.row_of_text.get(probe.anchor) if probe.anchor else None
        row = anchor_row if anchor_row is not None else int(rng.integers(rows.size))
        layout.probe_ns[i] = layout.namespace_of_row(row)
    return layout


def exact_nearest(
    rows: Rows, layout: Layout, vectors: FloatMatrix, probe_ns: IntArray, chunk: int = 256
) -> tuple[IntArray, npt.NDArray[np.float64]]:
    """Exact nearest row (and its cosine) of each vector within its namespace, batched."""
    best_row = np.full(len(vectors), -1, dtype=np.int64)
    best_cos = np.full(len(vectors), -np.inf, dtype=np.float64)
    ns_array = np.asarray(probe_ns, dtype=np.int64)
    for ns in np.unique(ns_array):
        start, stop = layout.bounds(int(ns))
        which = np.nonzero(ns_array == ns)[0]
        for c in range(0, len(which), chunk):
            part = which[c : c + chunk]
            sims = vectors[part] @ rows.vectors[start:stop].T
            idx = np.argmax(sims, axis=1)
            best_row[part] = start + idx
            best_cos[part] = sims[np.arange(len(part)), idx]
    return best_row, best_cos


def padding_note(rows: Rows) -> str:
    if not rows.synthetic:
        return f"{rows.size:,} real"
    return f"{rows.real:,} real + {rows.synthetic:,} SYNTHETIC (mixtures of real embeddings)"
