"""How long the one-transaction steps of the lifecycle hold the write lock.

With ``--entries`` entries (default 20,000) of random 384-d unit vectors, measures:

- ``reembed()`` towards another 384-d "model": time spent staging batches vs the
  final switch (the only step that holds the write lock for long);
- opening a file whose vec0 table has the first schema's layout (no
  ``expires_at``): the one-time rebuild done on open;
- ``vacuum()`` (vec0 rebuild + VACUUM).

The "embedders" return random vectors instantly, so only the storage side is
measured; a real model adds its own embedding time to the staging phase only.

    python benchmarks/lifecycle_reembed.py --entries 20000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from semcache_sqlite import SemanticCache
from semcache_sqlite.vector_index import EMBEDDING_TABLE, VECTOR_TABLE


class RandomEmbedder:
    """Random unit vectors, instantly: storage cost only."""

    def __init__(self, model_id: str, dim: int = 384) -> None:
        self._model_id, self._dim = model_id, dim
        self._rng = np.random.default_rng(0)

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def default_threshold(self) -> float:
        return 0.9

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        matrix = self._rng.standard_normal((len(texts), self._dim)).astype(np.float32)
        result: npt.NDArray[np.float32] = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        return result


def fill(path: Path, n: int) -> None:
    with SemanticCache(path, embedder=RandomEmbedder("model-a")) as cache:
        step = 2_000
        for start in range(0, n, step):
            queries = [f"query {i}" for i in range(start, min(n, start + step))]
            cache.store_many(queries, ["response"] * len(queries), batch_size=step)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="semcache-reembed-"))
    path = directory / "reembed.db"
    fill(path, args.entries)

    with SemanticCache(path, embedder=RandomEmbedder("model-a")) as cache:
        switch_started: list[float] = []

        def progress(done: int, total: int) -> None:
            if done == total and total == args.entries and not switch_started:
                switch_started.append(time.perf_counter())  # staging over, switch next

        t0 = time.perf_counter()
        cache.reembed(RandomEmbedder("model-b"), batch_size=args.batch_size, progress=progress)
        t1 = time.perf_counter()
        staging = switch_started[0] - t0 if switch_started else float("nan")
        switch = t1 - switch_started[0] if switch_started else float("nan")
        print(
            f"reembed {args.entries} entries: staging {staging:.2f} s "
            f"({staging / args.entries * 1e6:.0f} us/entry, in short transactions), "
            f"switch {switch:.2f} s in one transaction ({switch / args.entries * 1e6:.0f} us/entry)"
        )
        # Give the vectors the first schema's layout, as a 0.1 file would have them: the
        # float32 vectors inside the vec0 table, none in entry_embeddings.
        with cache._store.db.transaction() as conn:
            conn.execute("CREATE TEMP TABLE keep (id INTEGER PRIMARY KEY, e BLOB)")
            rows = conn.execute(f"SELECT id, embedding FROM {EMBEDDING_TABLE}").fetchall()
            conn.executemany("INSERT INTO temp.keep VALUES (?, ?)", rows)
            conn.execute(f"DELETE FROM {EMBEDDING_TABLE}")
            conn.execute(f"DROP TABLE {VECTOR_TABLE}")
            conn.execute(
                f"CREATE VIRTUAL TABLE {VECTOR_TABLE} USING vec0(embedding float[384] "
                "distance_metric=cosine, namespace text, user_id text, context_key text)"
            )
            conn.execute(
                f"INSERT INTO {VECTOR_TABLE} (rowid, embedding, namespace, user_id, context_key) "
                "SELECT k.id, k.e, e.namespace, e.user_id, e.context_key "
                "FROM temp.keep k JOIN entries e ON e.id = k.id"
            )
            conn.execute("DROP TABLE temp.keep")

    t0 = time.perf_counter()
    with SemanticCache(path, embedder=RandomEmbedder("model-b")) as cache:
        upgrade = time.perf_counter() - t0
        print(
            f"open + vec0 layout upgrade of {args.entries} entries: {upgrade:.2f} s "
            f"({upgrade / args.entries * 1e6:.0f} us/entry, one transaction)"
        )
        t0 = time.perf_counter()
        report = cache.vacuum()
        took = time.perf_counter() - t0
        print(
            f"vacuum(): {took:.2f} s, {report['bytes_before'] / 1e6:.1f} MB -> "
            f"{report['bytes_after'] / 1e6:.1f} MB"
        )
        assert cache._store.orphan_counts() == (0, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
