"""Stress: threads in several processes mix every operation on ONE cache file.

    python benchmarks/stress.py --threads 8 --processes 4 --seconds 60
    python benchmarks/stress.py --threads 8 --processes 4 --seconds 60 --path /tmp/s.db --json

Each of ``--processes`` worker processes (started with ``spawn``; ``--start-method
fork`` also works on POSIX) opens the same file at the same moment (so they race
to create and migrate it) and runs ``--threads`` threads until ``--seconds`` have
passed. Each thread mixes lookups (exact and similar), ``find_similar``,
``search``, stores of new and repeated queries, updates, deletes, batch stores,
``get_or_compute`` and clears of a shared scratch namespace, and ``stats()``.

Afterwards the file is checked (see reliability.check_file) and every thread's
record is compared with it:

- errors: any exception an operation raised, "database is locked" and
  CacheTimeoutError included: expected 0;
- lost writes: a store/update that returned and whose entry was not deleted by its
  owner must be there with the last response written: expected 0;
- resurrected: an entry whose delete returned must be gone: expected 0;
- read-your-writes and scope violations: a lookup of a thread's own query must
  return its own entry with its last response; any hit must be in the caller's
  namespace and visible to its user; a scratch hit must carry the answer computed
  for exactly that query: expected 0;
- the hit/miss counters in the file must equal the number of counted lookups;
- integrity_check ok, no orphans, no duplicate (scope, query) rows.

Exit status 0 when all of that holds. ``run()`` is what tests call with small numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import queue
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability import FileCheck, HashEmbedder, check_file

from semcache_sqlite import SemanticCache
from semcache_sqlite.db import DEFAULT_BUSY_TIMEOUT, Database

NAMESPACES = ("alpha", "beta", "gamma")
SCRATCH = "scratch"
TOPICS = (
    "reset my password",
    "pricing plans and billing",
    "export data to csv",
    "delete my account",
    "two factor authentication",
    "change the email address",
)
SCRATCH_QUERIES = tuple(f"shared scratch question {i} about {TOPICS[i % 6]}" for i in range(40))
MAX_SAMPLES = 20  # error and violation messages kept per thread


def computed_answer(query: str) -> str:
    return f"computed: {query}"


@dataclass
class ThreadRecord:
    """What one thread did and saw; merged into the report by the parent."""

    ops: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    error_types: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    violations: int = 0
    violation_samples: list[str] = field(default_factory=list)
    counted_lookups: int = 0
    # entry id -> (query, last response written) for entries this thread owns and kept
    live: dict[int, tuple[str, str]] = field(default_factory=dict)
    deleted: list[tuple[int, str]] = field(default_factory=list)  # (id, query)

    def error(self, what: str, exc: BaseException) -> None:
        self.errors += 1
        self.error_types[type(exc).__name__] += 1
        if len(self.error_samples) < MAX_SAMPLES:
            self.error_samples.append(f"{what}: {type(exc).__name__}: {exc}")

    def violation(self, message: str) -> None:
        self.violations += 1
        if len(self.violation_samples) < MAX_SAMPLES:
            self.violation_samples.append(message)


class _Thread:
    """One thread's loop: random operations, each checked against what it knows."""

    def __init__(self, cache: SemanticCache, name: str, rng: random.Random) -> None:
        self.cache = cache
        self.name = name
        self.user = f"user-{name}"
        self.rng = rng
        self.record = ThreadRecord()
        self.scope: dict[int, tuple[str, str]] = {}  # live id -> (namespace, user_id)
        self.serial = 0
        self.ops: list[tuple[int, Callable[[], None]]] = [
            (18, self.store_new),
            (8, self.store_again),
            (8, self.update),
            (6, self.delete),
            (18, self.lookup_own),
            (8, self.lookup_similar),
            (3, self.find_similar),
            (3, self.search),
            (6, self.get_or_compute),
            (5, self.store_many_scratch),
            (2, self.clear_scratch),
            (3, self.stats),
        ]
        self.weights = [w for w, _ in self.ops]

    def run(self, deadline: float) -> ThreadRecord:
        while time.monotonic() < deadline:
            (_, op) = self.rng.choices(self.ops, self.weights)[0]
            name = op.__name__
            try:
                op()
                self.record.ops[name] += 1
            except Exception as exc:  # every error is a finding: recorded, run goes on
                self.record.error(name, exc)
        return self.record

    # -- helpers ------------------------------------------------------------------

    def _pick_own(self) -> int | None:
        return self.rng.choice(list(self.record.live)) if self.record.live else None

    def _check_scope(self, what: str, namespace: str, user: str, hit: Any) -> None:
        if hit is not None and (hit.namespace != namespace or hit.user_id not in ("", user)):
            self.record.violation(
                f"{what}: asked {namespace!r}/{user!r}, got entry {hit.entry_id} of "
                f"{hit.namespace!r}/{hit.user_id!r}"
            )

    # -- operations ---------------------------------------------------------------

    def store_new(self) -> None:
        self.serial += 1
        query = f"{self.rng.choice(TOPICS)} {self.name}x{self.serial}"
        response = f"{self.name} answer {self.serial}"
        namespace = self.rng.choice(NAMESPACES)
        user = self.rng.choice(("", self.user))
        entry_id = self.cache.store(query, None, response, namespace=namespace, user_id=user)
        if entry_id in self.record.live:
            self.record.violation(f"store_new: new query got live id {entry_id}")
        self.record.live[entry_id] = (query, response)
        self.scope[entry_id] = (namespace, user)

    def store_again(self) -> None:
        entry_id = self._pick_own()
        if entry_id is None:
            return
        query, _ = self.record.live[entry_id]
        namespace, user = self.scope[entry_id]
        self.serial += 1
        response = f"{self.name} replaced {self.serial}"
        got = self.cache.store(query.upper(), None, response, namespace=namespace, user_id=user)
        if got != entry_id:
            self.record.violation(f"store_again: {query!r} was {entry_id}, store gave {got}")
        self.record.live[entry_id] = (query, response)

    def update(self) -> None:
        entry_id = self._pick_own()
        if entry_id is None:
            return
        query, _ = self.record.live[entry_id]
        self.serial += 1
        response = f"{self.name} updated {self.serial}"
        entry = self.cache.update(entry_id, response=response)
        if entry.query != query:
            self.record.violation(f"update: entry {entry_id} holds {entry.query!r}, not {query!r}")
        self.record.live[entry_id] = (query, response)

    def delete(self) -> None:
        entry_id = self._pick_own()
        if entry_id is None:
            return
        query, _ = self.record.live.pop(entry_id)
        del self.scope[entry_id]
        if not self.cache.delete(entry_id):
            self.record.violation(f"delete: own entry {entry_id} was already gone")
        self.record.deleted.append((entry_id, query))

    def lookup_own(self) -> None:
        entry_id = self._pick_own()
        if entry_id is None:
            return
        query, response = self.record.live[entry_id]
        namespace, user = self.scope[entry_id]
        hit = self.cache.lookup(f"  {query.title()} ", namespace=namespace, user_id=user)
        self.record.counted_lookups += 1
        if hit is None or hit.entry_id != entry_id or hit.response != response:
            got = None if hit is None else (hit.entry_id, hit.response)
            self.record.violation(
                f"lookup_own: {query!r} expected ({entry_id}, {response!r}), got {got}"
            )

    def lookup_similar(self) -> None:
        namespace = self.rng.choice(NAMESPACES)
        user = self.rng.choice(("", self.user))
        query = f"how do I {self.rng.choice(TOPICS)} please"
        hit = self.cache.lookup(query, namespace=namespace, user_id=user, threshold=0.5)
        self.record.counted_lookups += 1
        self._check_scope("lookup_similar", namespace, user, hit)

    def find_similar(self) -> None:
        namespace = self.rng.choice(NAMESPACES)
        vector = self.cache.embedder.embed([self.rng.choice(TOPICS)])[0]
        self.cache.find_similar(vector, namespace=namespace, user_id=self.user, threshold=0.3)
        self.record.counted_lookups += 1

    def search(self) -> None:
        namespace = self.rng.choice(NAMESPACES)
        for hit in self.cache.search(self.rng.choice(TOPICS), k=5, namespace=namespace):
            self._check_scope("search", namespace, "", hit)

    def get_or_compute(self) -> None:
        query = self.rng.choice(SCRATCH_QUERIES)
        user = self.rng.choice(("", self.user))
        answer, _cached = self.cache.get_or_compute(
            query, computed_answer, namespace=SCRATCH, user_id=user, threshold=1.0
        )
        self.record.counted_lookups += 1
        if answer != computed_answer(query) and not self._same_vector(answer, query):
            self.record.violation(f"get_or_compute: {query!r} answered {answer!r}")

    def _same_vector(self, answer: str, query: str) -> bool:
        """A hit at threshold 1.0 on another query is right if its vector is identical
        (the hash embedder maps some different texts to one vector)."""
        prefix = computed_answer("")
        if not answer.startswith(prefix):
            return False
        a, b = self.cache.embedder.embed([answer[len(prefix) :], query])
        return float(a @ b) >= 1.0 - 1e-6

    def store_many_scratch(self) -> None:
        queries = self.rng.sample(SCRATCH_QUERIES, 5)
        user = self.rng.choice(("", self.user))
        ids = self.cache.store_many(
            queries, [computed_answer(q) for q in queries], namespace=SCRATCH, user_id=user
        )
        if len(set(ids)) != 5:
            self.record.violation(f"store_many: 5 distinct queries gave ids {ids}")

    def clear_scratch(self) -> None:
        if self.rng.random() < 0.5:
            self.cache.clear(SCRATCH)
        else:
            self.cache.clear(SCRATCH, user_id=self.user)

    def stats(self) -> None:
        figures = self.cache.stats()
        if figures["cached_entries"] < 0 or not 0.0 <= figures["hit_rate"] <= 1.0:
            self.record.violation(f"stats: impossible figures {figures}")


def _worker(
    path: str,
    index: int,
    threads: int,
    seconds: float,
    seed: int,
    busy_timeout: float,
    results: Any,
) -> None:
    """One process: open the file (racing the others), run the threads, send their records."""
    records: list[ThreadRecord] = []
    try:
        cache = SemanticCache(
            path, embedder=HashEmbedder(), threshold=0.8, busy_timeout=busy_timeout
        )
    except Exception as exc:
        failed = ThreadRecord()
        failed.error("open", exc)
        results.put((index, [failed]))
        return
    try:
        deadline = time.monotonic() + seconds
        workers = [
            _Thread(cache, f"p{index}t{t}", random.Random(f"{seed}-{index}-{t}"))
            for t in range(threads)
        ]
        out: list[ThreadRecord | None] = [None] * threads

        def body(t: int) -> None:
            out[t] = workers[t].run(deadline)

        running = [threading.Thread(target=body, args=(t,)) for t in range(threads)]
        for thread in running:
            thread.start()
        for thread in running:
            thread.join()
        records = [r for r in out if r is not None]
    finally:
        cache.close()
    results.put((index, records))


@dataclass
class StressReport:
    path: str
    threads: int
    processes: int
    seconds: float
    elapsed: float
    ops: dict[str, int]
    total_ops: int
    errors: int
    error_types: dict[str, int]
    error_samples: list[str]
    violations: int
    violation_samples: list[str]
    lost_writes: int
    resurrected: int
    counted_lookups: int
    counters_in_file: int
    file: FileCheck
    problems: list[str]
    wal_peak_bytes: int = 0  # largest -wal file seen during the run (sampled twice a second)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [
            f"stress: {self.processes} processes x {self.threads} threads for "
            f"{self.seconds:g} s on {self.path}",
            f"  elapsed {self.elapsed:.1f} s, {self.total_ops:,} operations "
            f"({self.total_ops / max(self.elapsed, 1e-9):,.0f}/s)",
            "  " + ", ".join(f"{k} {v:,}" for k, v in sorted(self.ops.items())),
            f"  errors {self.errors} {self.error_types or ''}, violations {self.violations}, "
            f"lost writes {self.lost_writes}, resurrected {self.resurrected}",
            f"  lookups counted {self.counted_lookups:,}, hits+misses in file "
            f"{self.counters_in_file:,}",
            f"  file: {self.file.entries:,} entries, integrity {self.file.integrity}, "
            f"orphans ({self.file.entries_without_vector}, {self.file.vectors_without_entry}), "
            f"duplicates {self.file.duplicate_scopes}, wal at the end {self.file.wal_bytes:,} "
            f"bytes, largest seen {self.wal_peak_bytes:,}",
            "  verdict: " + ("OK" if self.ok else "FAILED: " + "; ".join(self.problems)),
        ]
        lines += [f"  error: {s}" for s in self.error_samples[:10]]
        lines += [f"  violation: {s}" for s in self.violation_samples[:10]]
        return "\n".join(lines)


def run(
    path: str | Path,
    *,
    threads: int = 8,
    processes: int = 4,
    seconds: float = 60.0,
    seed: int = 0,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    start_method: str = "spawn",
) -> StressReport:
    """Run the stress on ``path`` (created by the workers if missing) and check the outcome."""
    path = str(path)
    context: Any = multiprocessing.get_context(start_method)  # .Process per start method
    results = context.Queue()
    started = time.monotonic()
    workers = [
        context.Process(
            target=_worker,
            args=(path, i, threads, seconds, seed, busy_timeout, results),
            name=f"stress-{i}",
        )
        for i in range(processes)
    ]
    for process in workers:
        process.start()
    records: list[ThreadRecord] = []
    # generous: startup, the run, and the final busy timeout of each thread
    give_up = started + seconds + 4 * busy_timeout + 120
    wal, wal_peak = Path(f"{path}-wal"), 0
    reported = 0
    while reported < processes and time.monotonic() < give_up:
        try:
            _index, got = results.get(timeout=0.5)
            records.extend(got)
            reported += 1
        except queue.Empty:  # meanwhile, watch the WAL: checkpoints must keep it bounded
            with contextlib.suppress(OSError):
                wal_peak = max(wal_peak, wal.stat().st_size)
    missing = (
        [f"{processes - reported} worker processes did not report"] if reported < processes else []
    )
    for process in workers:
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()
    elapsed = time.monotonic() - started
    report = _verify(path, threads, processes, seconds, elapsed, records, missing)
    report.wal_peak_bytes = wal_peak
    return report


def _verify(
    path: str,
    threads: int,
    processes: int,
    seconds: float,
    elapsed: float,
    records: list[ThreadRecord],
    missing: list[str],
) -> StressReport:
    ops: Counter[str] = Counter()
    error_types: Counter[str] = Counter()
    for record in records:
        ops.update(record.ops)
        error_types.update(record.error_types)
    file = check_file(path)
    db = Database(path)
    try:
        with db.reading() as conn:
            stored = {
                int(i): (q, r)
                for i, q, r in conn.execute("SELECT id, query, response FROM entries")
            }
            counters = int(
                conn.execute(
                    "SELECT coalesce(sum(hits + misses), 0) FROM namespace_stats"
                ).fetchone()[0]
            )
    finally:
        db.close()
    lost = resurrected = 0
    samples: list[str] = []
    for record in records:
        for entry_id, expected in record.live.items():
            if stored.get(entry_id) != expected:
                lost += 1
                if len(samples) < MAX_SAMPLES:
                    samples.append(f"lost: {entry_id} {expected} -> {stored.get(entry_id)}")
        for entry_id, query in record.deleted:
            if entry_id in stored and stored[entry_id][0] == query:
                resurrected += 1
    new_ids = [i for r in records for i in [*r.live, *(d for d, _ in r.deleted)]]
    reused = len(new_ids) - len(set(new_ids))
    counted = sum(r.counted_lookups for r in records)
    problems = [*missing, *file.problems()]
    errors = sum(r.errors for r in records)
    violations = sum(r.violations for r in records)
    if errors:
        problems.append(f"{errors} operations raised")
    if violations:
        problems.append(f"{violations} read-your-writes or scope violations")
    if lost or resurrected:
        problems.append(f"{lost} lost writes, {resurrected} deleted entries back")
    if reused:
        problems.append(f"{reused} entry ids handed out twice")
    if counters != counted and not errors:  # a failed get_or_compute store still counted
        problems.append(f"hit/miss counters {counters} != counted lookups {counted}")
    return StressReport(
        path=path,
        threads=threads,
        processes=processes,
        seconds=seconds,
        elapsed=elapsed,
        ops=dict(ops),
        total_ops=sum(ops.values()),
        errors=errors,
        error_types=dict(error_types),
        error_samples=[s for r in records for s in r.error_samples][:MAX_SAMPLES],
        violations=violations,
        violation_samples=samples + [s for r in records for s in r.violation_samples],
        lost_writes=lost,
        resurrected=resurrected,
        counted_lookups=counted,
        counters_in_file=counters,
        file=file,
        problems=problems,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8, help="threads per process (8)")
    parser.add_argument("--processes", type=int, default=4, help="worker processes (4)")
    parser.add_argument("--seconds", type=float, default=60.0, help="run time (60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--busy-timeout", type=float, default=DEFAULT_BUSY_TIMEOUT)
    parser.add_argument("--start-method", default="spawn", choices=("spawn", "fork", "forkserver"))
    parser.add_argument("--path", help="cache file (default: a new temporary file)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="semcache-stress-") as tmp:
        path = args.path or os.path.join(tmp, "stress.db")
        report = run(
            path,
            threads=args.threads,
            processes=args.processes,
            seconds=args.seconds,
            seed=args.seed,
            busy_timeout=args.busy_timeout,
            start_method=args.start_method,
        )
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=2))
    else:
        print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
