"""Counting SQLite VM steps: a measure of the work a statement does that does not depend
on the machine, for tests that a cost does not grow with the rest of the file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from semcache_sqlite import SemanticCache


@contextmanager
def vm_steps(cache: SemanticCache, every: int = 100) -> Iterator[list[int]]:
    """Inside the block, ``steps[0]`` counts every ``every`` SQLite VM instructions run
    by this thread's connection to the cache's file (the one its calls use here)."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0  # go on

    conn = cache._db.connection()
    conn.set_progress_handler(count, every)
    try:
        yield steps
    finally:
        conn.set_progress_handler(None, 0)
