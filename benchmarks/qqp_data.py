"""Shared helpers for the QQP benchmarks: load labelled pairs, embed texts once.

The data set lives outside the repository (``../shared/data`` relative to the
repo root; see DESIGN.md section 6) and is never copied into it. Embeddings are
cached as ``.npy`` files under ``~/.cache/semcache-sqlite-bench`` keyed by the
embedder's ``model_id`` and the sha256 of the (deduplicated, sorted) text list,
so a rerun over the same texts costs a file read instead of minutes of inference.

Used by ``benchmarks/threshold_calibration.py`` and ``benchmarks/perf_data.py``; import
it from other scripts in this folder with ``from qqp_data import ...`` (the script's
folder is on sys.path).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semcache_sqlite.embedders import Embedder
from semcache_sqlite.validation import FloatMatrix

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path("../shared/data/qqp_pairs_dev.jsonl.gz")  # relative to REPO_ROOT
DEFAULT_CACHE_DIR = Path("~/.cache/semcache-sqlite-bench")


@dataclass(frozen=True)
class Pair:
    text_a: str
    text_b: str
    label: int  # 1 = duplicate questions, 0 = not


@dataclass(frozen=True)
class LoadedPairs:
    pairs: list[Pair]
    skipped_blank: int  # pairs dropped because a text was empty or whitespace only
    total_in_file: int


def resolve_data_path(path: str | os.PathLike[str]) -> Path:
    """Relative paths are taken from the repository root, not the working directory."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else (REPO_ROOT / p).resolve()


def load_pairs(
    path: str | os.PathLike[str], limit: int | None = None, seed: int = 0
) -> LoadedPairs:
    """Read a ``{"text_a","text_b","label"}`` JSONL(.gz) file.

    Pairs where either text is empty/whitespace are skipped (the embedders refuse
    them). With ``limit`` a random sample of that many pairs is kept (``seed``),
    in file order.
    """
    file = resolve_data_path(path)
    opener = gzip.open if file.suffix == ".gz" else open
    pairs: list[Pair] = []
    skipped = total = 0
    with opener(file, "rt", encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            row = json.loads(line)
            total += 1
            a, b = str(row["text_a"]), str(row["text_b"])
            if not a.strip() or not b.strip():
                skipped += 1
                continue
            pairs.append(Pair(a, b, int(row["label"])))
    if limit is not None and limit < len(pairs):
        keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
        pairs = [pairs[i] for i in keep]
    return LoadedPairs(pairs, skipped, total)


@dataclass(frozen=True)
class EmbeddedTexts:
    """Unique texts, one embedding row each; ``rows()`` maps texts back to vectors."""

    texts: list[str]
    vectors: FloatMatrix
    index: dict[str, int]

    def rows(self, texts: Iterable[str]) -> FloatMatrix:
        return self.vectors[np.array([self.index[t] for t in texts], dtype=np.int64)]


def texts_digest(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))  # length prefix: no ambiguous joins
        digest.update(data)
    return digest.hexdigest()


def embedding_cache_file(
    unique_sorted: list[str], embedder: Embedder, cache_dir: str | os.PathLike[str]
) -> Path:
    """Where ``embed_unique`` caches the embeddings of these (distinct, sorted) texts."""
    safe_model = re.sub(r"[^A-Za-z0-9._-]+", "_", embedder.model_id)
    return Path(cache_dir).expanduser() / f"{safe_model}-{texts_digest(unique_sorted)[:32]}.npy"


def embed_unique(
    texts: Iterable[str],
    embedder: Embedder,
    cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
    chunk: int = 1024,
) -> EmbeddedTexts:
    """Embed each distinct text once, reusing ``<cache_dir>/<model>-<sha256>.npy``."""
    unique = sorted(set(texts))
    index = {t: i for i, t in enumerate(unique)}
    file = embedding_cache_file(unique, embedder, cache_dir)
    folder = file.parent
    if file.is_file():
        vectors = np.load(file)
        if vectors.shape == (len(unique), embedder.dim):
            print(f"embeddings: {len(unique):,} texts from cache {file}", file=sys.stderr)
            return EmbeddedTexts(unique, vectors.astype(np.float32, copy=False), index)
    vectors = np.empty((len(unique), embedder.dim), dtype=np.float32)
    # Embed shortest first so every batch pads to similar lengths.
    order = sorted(range(len(unique)), key=lambda i: len(unique[i]))
    start = time.perf_counter()
    for done in range(0, len(order), chunk):
        ids = order[done : done + chunk]
        vectors[ids] = embedder.embed([unique[i] for i in ids])
        n, elapsed = done + len(ids), time.perf_counter() - start
        rate = n / max(elapsed, 1e-9)
        print(
            f"\rembedding: {n:,}/{len(unique):,} texts, {rate:,.0f} texts/s, "
            f"~{(len(unique) - n) / rate:,.0f} s left ",
            end="",
            file=sys.stderr,
            flush=True,
        )
    print(f"\nembedding: done in {time.perf_counter() - start:,.1f} s", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, file)  # atomic: a killed run never leaves a truncated cache file
    print(f"embeddings: cached at {file}", file=sys.stderr)
    return EmbeddedTexts(unique, vectors, index)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every QQP benchmark shares: --data, --limit, --seed, --cache-dir."""
    parser.add_argument(
        "--data",
        default=str(DEFAULT_DATA),
        help="QQP pairs JSONL(.gz); relative paths are from the repo root (default: %(default)s)",
    )
    parser.add_argument("--limit", type=int, default=None, help="random sample of N pairs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    parser.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE_DIR),
        help="where embeddings are cached as .npy (default: %(default)s)",
    )
