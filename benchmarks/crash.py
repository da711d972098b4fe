"""Crash safety: SIGKILL a child process at random moments, many times, and check the file.

    python benchmarks/crash.py --kills 200                      # all scenarios, 200 kills each
    python benchmarks/crash.py --kills 200 --scenario writes --seed 7 --path /tmp/crash.db
    python benchmarks/crash.py --kills 50 --scenario migration --migration-rows 300000
    python benchmarks/crash.py --kills 100 --scenario reembed   # also: import, warm
    python benchmarks/crash.py --kills 20 --scenario warm --cells-at 2000   # cells

Scenario ``writes``: a child opens the cache file and writes in a loop: stores,
updates, deletes, batch stores, lookups, and stores + clears in a scratch
namespace. It prints an intent line before each write and a report line, flushed,
after the call returned (``s 12`` ... ``S 12 <id>``). The parent reads a random
number of lines, then kills the child with SIGKILL (sometimes right after it
started opening the file, to hit WAL recovery and the first migration). After
each kill the parent checks, on the same file that the next child continues:

- the file passes ``PRAGMA integrity_check``, has no orphan between entries and
  vectors, and no duplicate (scope, query) row;
- every write the child reported is there (with its response), every reported
  delete is gone, a batch is all there or not at all, and an operation cut short
  is either done or not done, nothing in between; then the entries of the test
  namespace must be exactly the expected ones.

Scenario ``migration``: a copy of a filled file at the current schema version; a
child adds a slow extra migration (creates and fills a table, adds an index,
rewrites every entry's metadata) and applies it; the parent kills it after a
random delay up to 1.3 x the migration's measured duration. The file must be at
the old version with none of the migration's effects, or at the new version with
all of them; never in between.

Scenarios ``reembed``, ``import`` and ``warm``: a fresh copy of a file of
``--bulk-entries`` entries each round; the child prints STARTED, then runs the
operation slowly (``--bulk-batch`` rows a batch, ``--bulk-delay`` seconds in every
embed() call), printing each step it committed; the parent kills it at a random
moment after STARTED: up to 1.3 x the duration of the last run that finished (the
first one is not killed), a quarter of the time near the end, where the switch or
the commit is. Then:

- ``reembed`` (``SemanticCache.reembed`` to a 48-d model from a 32-d one): the file
  opens with exactly one of the two embedders (the other gets
  EmbedderMismatchError); every entry is there and a lookup of its query answers
  with its response; the vector search finds entries with that model's vectors; at
  least the reported batches are staged. If it is still the old model, calling
  ``reembed`` again must finish (converting every entry) and leave the new one.
- ``import`` (``semcache import DB FILE``, ``--bulk-rows`` rows without vectors, so
  they are embedded inside the one transaction): the entry count is the one before
  or before + rows, never in between, and an import is all there or not at all.
- ``warm`` (what ``semcache warm DB FILE`` runs, reporting each committed batch):
  the file holds the input's first k rows, k a multiple of the batch size (or all)
  and at least what the child reported committed; re-running warm adds the
  remaining rows, leaves the k unchanged and duplicates nothing.

All of them also pass ``check_file()`` (integrity, orphans, duplicates, every index
row in its namespace's nearest cell). ``--cells-at N`` gives namespaces 4 cells from
N entries (the library: 32 from 65,536), so that ``warm`` and ``import`` kill the
write that trains a namespace's cells and moves its entries into them.

Exit status 0 when no violation was found. ``run()`` is what tests call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reliability import HashEmbedder, check_file

from semcache_sqlite import SemanticCache, vector_cells
from semcache_sqlite import migrate as migrate_module
from semcache_sqlite.db import Database
from semcache_sqlite.errors import EmbedderMismatchError
from semcache_sqlite.migrate import Migration, latest_version, migrate

NS = "crash"
SCRATCH = "crash-scratch"
BATCH = 8
SCRIPT = str(Path(__file__).resolve())


def query_text(seq: int) -> str:
    return f"crash query number {seq} about {('billing', 'login', 'export', 'privacy')[seq % 4]}"


def answer_text(seq: int, version: int) -> str:
    return f"answer {seq} v{version}"


# -- the children --------------------------------------------------------------------


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def child_writes(path: str, seed: int, start: int) -> None:
    """Write forever (until killed), reporting each write after it returned."""
    _emit("OPENING")
    cache = SemanticCache(path, embedder=HashEmbedder(), threshold=0.8)
    _emit("READY")
    rng = random.Random(seed)
    seq = start
    mine: dict[int, tuple[int, int]] = {}  # id -> (seq, version), entries of this child
    while True:
        roll = rng.random()
        if roll < 0.35 or not mine:
            seq += 1
            _emit(f"s {seq}")
            entry_id = cache.store(query_text(seq), None, answer_text(seq, 1), namespace=NS)
            mine[entry_id] = (seq, 1)
            _emit(f"S {seq} {entry_id}")
        elif roll < 0.55:
            entry_id = rng.choice(list(mine))
            entry_seq, version = mine[entry_id]
            _emit(f"u {entry_id} {version + 1}")
            cache.update(entry_id, response=answer_text(entry_seq, version + 1))
            mine[entry_id] = (entry_seq, version + 1)
            _emit(f"U {entry_id} {version + 1}")
        elif roll < 0.65:
            entry_id = rng.choice(list(mine))
            _emit(f"d {entry_id}")
            cache.delete(entry_id)
            del mine[entry_id]
            _emit(f"D {entry_id}")
        elif roll < 0.75:
            first = seq + 1
            seq += BATCH
            _emit(f"b {first}")
            ids = cache.store_many(
                [query_text(s) for s in range(first, first + BATCH)],
                [answer_text(s, 1) for s in range(first, first + BATCH)],
                namespace=NS,
            )
            for offset, entry_id in enumerate(ids):
                mine[entry_id] = (first + offset, 1)
            _emit(f"B {first} {','.join(map(str, ids))}")
        elif roll < 0.9:
            entry_seq, _version = rng.choice(list(mine.values()))
            cache.lookup(query_text(entry_seq), namespace=NS)
        elif roll < 0.97:
            seq += 1
            cache.store(f"scratch {seq} text", None, "scratch answer", namespace=SCRATCH)
        else:
            cache.clear(SCRATCH)


def slow_migration(rows: int) -> Migration:
    """An extra migration, after the real ones, that takes a while and touches everything."""
    return Migration(
        latest_version() + 1,
        "crash_test_slow",
        "CREATE TABLE crash_test_payload (id INTEGER PRIMARY KEY, entry_id INTEGER NOT NULL,"
        " payload TEXT NOT NULL);\n"
        "INSERT INTO crash_test_payload (entry_id, payload) WITH RECURSIVE n(x) AS "
        f"(SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < {int(rows)}) "
        "SELECT x % 50, hex(randomblob(16)) FROM n;\n"
        "CREATE INDEX crash_test_payload_by_entry ON crash_test_payload (entry_id, payload);\n"
        "UPDATE entries SET metadata = json_set(metadata, '$.crash_test', 1);\n",
    )


def child_migration(path: str, rows: int) -> None:
    real = migrate_module.available_migrations()
    extra = slow_migration(rows)
    migrate_module.available_migrations = lambda: [*real, extra]
    db = Database(path)
    _emit("MIGRATING")
    started = time.monotonic()
    migrate(db)
    _emit(f"MIGRATED {time.monotonic() - started:.4f}")
    db.close()


# -- the parent ----------------------------------------------------------------------


@dataclass
class ScenarioReport:
    scenario: str
    kills: int = 0
    rounds: int = 0
    verified: int = 0  # reported operations checked against the file, all rounds
    outcomes: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    entries: int = 0
    elapsed: float = 0.0

    def summary(self) -> str:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        verdict = "OK" if not self.violations else f"FAILED ({len(self.violations)} violations)"
        lines = [
            f"  {self.scenario}: {self.kills} kills in {self.elapsed:.1f} s, "
            f"{self.verified:,} reported operations verified, {self.entries:,} entries at the "
            f"end; {outcomes}; {verdict}"
        ]
        return "\n".join(lines + [f"    violation: {v}" for v in self.violations[:10]])


@dataclass
class CrashReport:
    path: str
    scenarios: list[ScenarioReport]

    @property
    def ok(self) -> bool:
        return all(not s.violations for s in self.scenarios)

    @property
    def kills(self) -> int:
        return sum(s.kills for s in self.scenarios)

    def summary(self) -> str:
        head = f"crash: {self.kills} SIGKILLs on {self.path}: " + ("OK" if self.ok else "FAILED")
        return "\n".join([head, *(s.summary() for s in self.scenarios)])


def _spawn(args: list[str], stderr: IO[bytes]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, SCRIPT, "--child", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        bufsize=1,
    )


def _kill(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


class _WritesModel:
    """What the file must contain, from the report lines of every child so far."""

    def __init__(self) -> None:
        self.expected: dict[int, str] = {}  # id -> response
        self.queries: dict[int, str] = {}  # id -> query
        self.seq_of: dict[int, int] = {}
        self.verified = 0

    def apply(self, lines: list[str]) -> dict[str, Any]:
        """Apply completed operations; return the one cut short (if any) for resolve()."""
        pending: dict[str, Any] = {}
        for line in lines:
            kind, *rest = line.split()
            if kind in ("s", "u", "d", "b"):
                pending = {"kind": kind, "args": rest}
            elif kind == "S":
                seq, entry_id = int(rest[0]), int(rest[1])
                self._add(entry_id, seq, answer_text(seq, 1))
                pending = {}
            elif kind == "U":
                entry_id, version = int(rest[0]), int(rest[1])
                self.expected[entry_id] = answer_text(self.seq_of[entry_id], version)
                pending = {}
            elif kind == "D":
                self._remove(int(rest[0]))
                pending = {}
            elif kind == "B":
                first = int(rest[0])
                for offset, entry_id in enumerate(map(int, rest[1].split(","))):
                    self._add(entry_id, first + offset, answer_text(first + offset, 1))
                pending = {}
            self.verified += kind in ("S", "U", "D", "B")
        return pending

    def _add(self, entry_id: int, seq: int, response: str) -> None:
        self.expected[entry_id] = response
        self.queries[entry_id] = query_text(seq)
        self.seq_of[entry_id] = seq

    def _remove(self, entry_id: int) -> None:
        self.expected.pop(entry_id, None)
        self.queries.pop(entry_id, None)
        self.seq_of.pop(entry_id, None)

    def resolve(self, pending: dict[str, Any], rows: dict[int, tuple[str, str]]) -> list[str]:
        """Decide the operation cut short by the kill from the file: done or not, never half."""
        problems: list[str] = []
        if not pending:
            return problems
        kind, args = pending["kind"], pending["args"]
        by_query = {q: i for i, (q, _r) in rows.items()}
        if kind == "s":
            seq = int(args[0])
            entry_id = by_query.get(query_text(seq))
            if entry_id is not None:
                if rows[entry_id][1] != answer_text(seq, 1):
                    problems.append(f"store {seq} cut short left response {rows[entry_id][1]!r}")
                self._add(entry_id, seq, answer_text(seq, 1))
        elif kind == "u":
            entry_id, version = int(args[0]), int(args[1])
            new = answer_text(self.seq_of[entry_id], version)
            if entry_id not in rows or rows[entry_id][1] not in (self.expected[entry_id], new):
                problems.append(f"update of {entry_id} cut short left {rows.get(entry_id)}")
            else:
                self.expected[entry_id] = rows[entry_id][1]
        elif kind == "d":
            entry_id = int(args[0])
            if entry_id not in rows:
                self._remove(entry_id)
        elif kind == "b":
            first = int(args[0])
            found = [by_query.get(query_text(s)) for s in range(first, first + BATCH)]
            present = [i for i in found if i is not None]
            if present and len(present) != BATCH:
                problems.append(f"batch {first} cut short is half there: {len(present)}/{BATCH}")
            for offset, entry_id in enumerate(present):
                self._add(entry_id, first + offset, answer_text(first + offset, 1))
        return problems

    def compare(self, rows: dict[int, tuple[str, str]]) -> list[str]:
        problems = []
        for entry_id, response in self.expected.items():
            got = rows.get(entry_id)
            if got is None:
                problems.append(f"lost: entry {entry_id} ({self.queries[entry_id]!r}) is gone")
            elif got != (self.queries[entry_id], response):
                problems.append(f"entry {entry_id} is {got}, expected {response!r}")
        extra = sorted(set(rows) - set(self.expected))
        if extra:
            problems.append(f"entries nobody committed: {extra[:10]}")
        return problems


def _namespace_rows(path: str) -> dict[int, tuple[str, str]]:
    db = Database(path)
    try:
        with db.reading() as conn:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'entries'").fetchone():
                return {}
            return {
                int(i): (str(q), str(r))
                for i, q, r in conn.execute(
                    "SELECT id, query, response FROM entries WHERE namespace = ?", (NS,)
                )
            }
    finally:
        db.close()


def run_writes(path: str, kills: int, seed: int, max_lines: int = 300) -> ScenarioReport:
    report = ScenarioReport("writes")
    rng = random.Random(seed)
    model = _WritesModel()
    started = time.monotonic()
    next_seq = 0
    with tempfile.TemporaryFile() as stderr:
        for round_no in range(kills):
            process = _spawn(["writes", path, str(rng.randrange(1 << 30)), str(next_seq)], stderr)
            assert process.stdout is not None
            mode = rng.random()
            # 10%: right after it starts opening; 10%: as soon as it is ready; else later
            target = 0 if mode < 0.2 else rng.randint(1, max_lines)
            lines: list[str] = []
            died_alone = False
            while len(lines) < target or target == 0:
                line = process.stdout.readline()
                if not line.endswith("\n"):
                    died_alone = True  # end of output before the kill: reported below
                    break
                line = line.strip()
                if line == "OPENING":
                    if mode < 0.1:
                        break
                elif line == "READY":
                    if mode < 0.2:
                        break
                else:
                    lines.append(line)
            if not died_alone:
                os.kill(process.pid, signal.SIGKILL)
            # The child may have run ahead of our reading: its reports still in the pipe
            # count too. A last line without its newline was cut by the kill: not a report.
            rest = process.stdout.read()
            lines += [x.strip() for x in rest.splitlines(keepends=True) if x.endswith("\n")]
            lines = [x for x in lines if x not in ("OPENING", "READY")]
            _kill(process)
            report.kills += 1
            if died_alone:
                stderr.seek(0)
                text = stderr.read().decode(errors="replace")[-2000:]
                report.violations.append(f"round {round_no}: the child died by itself: {text}")
                break
            pending = model.apply(lines)
            for line in lines:
                if line[:1] in "sSbB":
                    next_seq = max(next_seq, int(line.split()[1]) + BATCH)
            next_seq += 2 * BATCH  # leave room for the scratch stores of the child
            file = check_file(path)
            problems = file.problems()
            if not problems and Path(path).exists():
                rows = _namespace_rows(path)
                problems = model.resolve(pending, rows) + model.compare(rows)
            report.violations += [f"round {round_no}: {p}" for p in problems]
            report.outcomes["cut mid-operation" if pending else "cut between operations"] += 1
            report.rounds += 1
            if problems:
                break  # later rounds would only repeat the damage
    report.verified = model.verified
    report.entries = len(model.expected)
    report.elapsed = time.monotonic() - started
    return report


def _migration_state(path: str, old: int, rows: int) -> tuple[str, list[str]]:
    """("old" | "new", problems): all of the migration's effects, or none of them."""
    db = Database(path)
    try:
        with db.reading() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            recorded = int(conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0])
            table = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'crash_test_payload'"
            ).fetchone()
            index = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'crash_test_payload_by_entry'"
            ).fetchone()
            payload = (
                int(conn.execute("SELECT count(*) FROM crash_test_payload").fetchone()[0])
                if table
                else 0
            )
            marked = int(
                conn.execute(
                    "SELECT count(*) FROM entries WHERE json_extract(metadata, '$.crash_test') = 1"
                ).fetchone()[0]
            )
            entries = int(conn.execute("SELECT count(*) FROM entries").fetchone()[0])
    finally:
        db.close()
    old_state = (old, old, None, None, 0, 0)
    new_state = (old + 1, old + 1, True, True, rows, entries)
    state = (version, recorded, bool(table) or None, bool(index) or None, payload, marked)
    if state == old_state:
        return "old", []
    if state == new_state:
        return "new", []
    return "between", [
        f"half-migrated file: (version, recorded, table, index, rows, marked) = "
        f"{state}, expected {old_state} or {new_state}"
    ]


def run_migration(workdir: str, kills: int, seed: int, rows: int) -> ScenarioReport:
    report = ScenarioReport("migration")
    rng = random.Random(seed)
    started = time.monotonic()
    template = os.path.join(workdir, "migration-template.db")
    with SemanticCache(template, embedder=HashEmbedder()) as cache:
        cache.store_many(
            [query_text(i) for i in range(200)], [answer_text(i, 1) for i in range(200)]
        )
    old = latest_version()
    path = os.path.join(workdir, "migration.db")
    duration: float | None = None
    with tempfile.TemporaryFile() as stderr:
        round_no = 0
        while report.kills < kills:
            for suffix in ("", "-wal", "-shm"):
                Path(path + suffix).unlink(missing_ok=True)
            shutil.copyfile(template, path)
            process = _spawn(["migration", path, str(rows)], stderr)
            assert process.stdout is not None
            first = process.stdout.readline().strip()
            if duration is None:  # calibration: let the first one finish
                done = process.stdout.readline().strip()
                _kill(process)
                if first != "MIGRATING" or not done.startswith("MIGRATED"):
                    stderr.seek(0)
                    report.violations.append(f"calibration failed: {stderr.read()[-2000:]!r}")
                    break
                duration = float(done.split()[1])
                outcome = "calibration (not killed)"
            else:
                time.sleep(rng.uniform(0.0, 1.3 * duration))  # a random moment, not a wait
                finished = process.poll() is not None
                _kill(process)
                report.kills += 1
                outcome = "finished before the kill" if finished else "killed"
            state, problems = _migration_state(path, old, rows)
            problems = check_file(path).problems() + problems
            report.outcomes[f"{outcome}: {state} version"] += 1
            report.violations += [f"round {round_no}: {p}" for p in problems]
            report.rounds += 1
            report.verified += 1
            round_no += 1
            if problems:
                break
    report.entries = 200
    report.elapsed = time.monotonic() - started
    return report


# -- re-embedding, bulk import, warm-up ----------------------------------------------
#
# Each round starts from a fresh copy of a filled template. The child prints STARTED
# just before the operation, one line per committed step after it (progress of a
# re-embed, batches of a warm-up), and DONE <seconds> after it returned. The parent
# kills it at a random moment after STARTED (up to 1.3 x the duration of the last run
# that finished; the first one is not killed), then checks the file and, for the resumable
# operations, finishes the job and checks again.

OLD_DIM, NEW_DIM = 32, 48  # HashEmbedder(32) made the file; reembed moves it to HashEmbedder(48)
BULK_NS = "bulk"


def bulk_query(seq: int) -> str:
    return f"bulk question {seq} on {('refunds', 'sso', 'quotas', 'webhooks', 'invoices')[seq % 5]}"


def bulk_answer(seq: int) -> str:
    return f"bulk answer {seq}"


@dataclass(frozen=True)
class BulkSizes:
    """Sizes of the re-embed / import / warm scenarios (tests use small ones)."""

    entries: int = 1500  # in the template file
    rows: int = 1500  # in the import / warm file
    batch: int = 16  # batch_size of the operation
    delay: float = 0.002  # seconds per embed() call in the child


def child_reembed(path: str, batch: int, delay: float) -> None:
    cache = SemanticCache(path, embedder=HashEmbedder(OLD_DIM), threshold=0.8)
    _emit("STARTED")
    started = time.monotonic()
    cache.reembed(
        HashEmbedder(NEW_DIM, delay=delay),
        batch_size=batch,
        progress=lambda done, total: _emit(f"P {done} {total}"),
    )
    _emit(f"DONE {time.monotonic() - started:.4f}")
    cache.close()


def child_import(path: str, file: str, batch: int, delay: float) -> None:
    """``semcache import DB FILE``, in-process so that it can use the fake embedder."""
    from semcache_sqlite.cli import cli
    from semcache_sqlite.cli_common import CliState

    state = CliState(embedder=HashEmbedder(OLD_DIM, delay=delay), quiet=True)
    _emit("STARTED")
    started = time.monotonic()
    cli.main(["import", path, file, "--batch-size", str(batch)], obj=state, standalone_mode=False)
    _emit(f"DONE {time.monotonic() - started:.4f}")


def child_warm(path: str, file: str, batch: int, delay: float) -> None:
    """What ``semcache warm DB FILE`` runs, reporting each committed batch."""
    from semcache_sqlite.store import Scope
    from semcache_sqlite.warmup import validate_warm_file, warm

    defaults = Scope(BULK_NS, "", "")
    rows = validate_warm_file(Path(file), "jsonl", defaults)
    db = Database(path)
    done = 0

    def advance(n: int) -> None:  # called after each batch's transaction committed
        nonlocal done
        done += n
        _emit(f"W {done}")

    _emit("STARTED")
    started = time.monotonic()
    warm(
        db,
        HashEmbedder(OLD_DIM, delay=delay),
        Path(file),
        "jsonl",
        defaults,
        batch_size=batch,
        advance=advance,
    )
    _emit(f"DONE {time.monotonic() - started:.4f} {rows}")
    db.close()


def _kill_moment(rng: random.Random, duration: float | None) -> float | None:
    """Seconds after STARTED: anywhere up to 1.3 x the duration (that of the last run
    that finished), or (a quarter of the time) near the end, where the switch / the
    commit happens. None: calibration."""
    if duration is None:
        return None
    if rng.random() < 0.25:
        return duration * rng.uniform(0.85, 1.05)
    return duration * rng.uniform(0.0, 1.3)


def _fresh_copy(template: str, path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)
    shutil.copyfile(template, path)


def _bulk_template(workdir: str, entries: int) -> str:
    """A file of ``entries`` entries (namespace "default") made with HashEmbedder(OLD_DIM)."""
    template = os.path.join(workdir, f"bulk-template-{entries}.db")
    if not Path(template).exists():
        with SemanticCache(template, embedder=HashEmbedder(OLD_DIM)) as cache:
            cache.store_many(
                [query_text(i) for i in range(entries)], [answer_text(i, 1) for i in range(entries)]
            )
    return template


def _bulk_file(workdir: str, rows: int) -> str:
    """A JSONL file of ``rows`` new entries in namespace BULK_NS (no vectors)."""
    file = os.path.join(workdir, f"bulk-{rows}.jsonl")
    with open(file, "w", encoding="utf-8") as out:
        for seq in range(rows):
            record = {"namespace": BULK_NS, "query": bulk_query(seq), "response": bulk_answer(seq)}
            out.write(json.dumps(record) + "\n")
    return file


@dataclass
class _Run:
    """One child run: what it printed, and whether it finished before the kill."""

    lines: list[str]
    finished: bool
    duration: float | None
    stderr: str


def _run_and_kill(args: list[str], stderr: IO[bytes], delay: float | None) -> _Run:
    """Start a child; once it printed STARTED, kill it ``delay`` seconds later (None: let it
    finish, for calibration). All of its output is read back after it is gone."""
    stderr.seek(0)
    stderr.truncate()
    process = _spawn(args, stderr)
    assert process.stdout is not None
    first = process.stdout.readline().strip()
    if first == "STARTED" and delay is not None:
        time.sleep(delay)  # a random moment of the operation, not a wait for anything
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
    process.wait()
    rest = process.stdout.read()
    _kill(process)
    lines = [first] + [x.strip() for x in rest.splitlines(keepends=True) if x.endswith("\n")]
    done = [x for x in lines if x.startswith("DONE ")]
    stderr.seek(0)
    return _Run(
        lines=lines,
        finished=bool(done),
        duration=float(done[0].split()[1]) if done else None,
        stderr=stderr.read().decode(errors="replace")[-2000:] if first != "STARTED" else "",
    )


def _bulk_rows(path: str) -> dict[str, str]:
    """query -> response of the entries in namespace BULK_NS."""
    db = Database(path)
    try:
        with db.reading() as conn:
            return {
                str(q): str(r)
                for q, r in conn.execute(
                    "SELECT query, response FROM entries WHERE namespace = ?", (BULK_NS,)
                )
            }
    finally:
        db.close()


def _check_lookups(cache: SemanticCache, entries: int) -> list[str]:
    """Every template entry is there and a lookup of its query answers with its response
    (the exact path); and the vector search finds some of them with the cache's embedder."""
    problems = []
    for i in range(entries):
        hit = cache.lookup(query_text(i))
        if hit is None or hit.entry.response != answer_text(i, 1):
            problems.append(f"lookup of entry {i} answers {hit and hit.entry.response!r}")
            if len(problems) >= 5:
                return problems
    for i in range(0, entries, max(1, entries // 25)):
        nearest = cache.search(query_text(i), k=1)  # embeds: the vector path, no guards
        if not nearest or nearest[0].similarity < 0.999:  # its own vector: similarity 1.0
            problems.append(f"vector search with {cache.embedder.model_id} misses entry {i}")
    return problems[:5]


def _reembed_state(path: str, entries: int) -> tuple[str, int, list[str]]:
    """("old" | "new" | "both" | "neither", staged vectors, problems) after a kill."""
    problems: list[str] = []
    opens: dict[str, SemanticCache] = {}
    for name, embedder in (("old", HashEmbedder(OLD_DIM)), ("new", HashEmbedder(NEW_DIM))):
        with contextlib.suppress(EmbedderMismatchError):
            opens[name] = SemanticCache(path, embedder=embedder, threshold=0.8)
    state = "both" if len(opens) == 2 else next(iter(opens), "neither")
    if len(opens) != 1:
        problems.append(f"the file opens with {state} of the old and the new embedder")
    staged = 0
    for name, cache in opens.items():
        with cache:
            status = cache.reembed_status()
            staged = status.done if status is not None else 0
            if name == "new" and status is not None:
                problems.append(f"switched to the new model, yet a re-embed is pending: {status}")
            count = int(cache.stats()["cached_entries"])
            if count != entries:
                problems.append(f"{count} entries, expected {entries}")
            problems += _check_lookups(cache, entries)
    return state, staged, problems


def run_reembed(workdir: str, kills: int, seed: int, sizes: BulkSizes) -> ScenarioReport:
    report = ScenarioReport("reembed")
    rng = random.Random(seed)
    started = time.monotonic()
    template = _bulk_template(workdir, sizes.entries)
    path = os.path.join(workdir, "reembed.db")
    args = ["reembed", path, str(sizes.batch), str(sizes.delay)]
    duration: float | None = None
    with tempfile.TemporaryFile() as stderr:
        while report.kills < kills:
            _fresh_copy(template, path)
            delay = _kill_moment(rng, duration)
            run = _run_and_kill(args, stderr, delay)
            if run.lines[0] != "STARTED" or (delay is None and not run.finished):
                report.violations.append(f"round {report.rounds}: child failed: {run.stderr}")
                break
            progress = [int(x.split()[1]) for x in run.lines if x.startswith("P ")]
            reported = max(progress or [0])
            report.verified += len(progress)
            state, staged, problems = _reembed_state(path, sizes.entries)
            problems = check_file(path).problems() + problems
            if state == "old":
                if staged < min(reported, sizes.entries):
                    problems.append(f"{staged} staged vectors, the child reported {reported}")
                # resume (without the slow embedder) and finish: the new model, all entries
                with SemanticCache(path, embedder=HashEmbedder(OLD_DIM)) as cache:
                    converted = cache.reembed(HashEmbedder(NEW_DIM), batch_size=512)
                if converted != sizes.entries:
                    problems.append(f"resumed re-embed converted {converted} of {sizes.entries}")
                final, _staged, more = _reembed_state(path, sizes.entries)
                problems += check_file(path).problems() + more
                if final != "new":
                    problems.append(f"after the resumed re-embed the file is {final}")
            if run.duration is not None:  # follow the machine's speed (other jobs come and go)
                duration = run.duration
            if delay is None:
                outcome = f"calibration (not killed, {duration or 0:.2f} s)"
            else:
                report.kills += 1
                if run.finished:
                    outcome = "finished before the kill"
                elif state == "old":
                    outcome = "killed mid-way: old model, resumed"
                else:
                    outcome = "killed mid-way: after the switch"
            report.outcomes[outcome] += 1
            report.violations += [f"round {report.rounds}: {p}" for p in problems]
            report.rounds += 1
            if problems:
                break
    report.entries = sizes.entries
    report.elapsed = time.monotonic() - started
    return report


def _import_problems(
    path: str, sizes: BulkSizes, expected: dict[str, str], *, finished: bool
) -> list[str]:
    """All of the import file's rows or none of them, next to the template's entries."""
    file_check = check_file(path)
    problems = file_check.problems()
    rows = _bulk_rows(path)
    if file_check.entries not in (sizes.entries, sizes.entries + sizes.rows):
        problems.append(
            f"{file_check.entries} entries: neither {sizes.entries} (before) nor "
            f"{sizes.entries + sizes.rows} (all imported)"
        )
    if rows and rows != expected:
        problems.append(f"{len(rows)} of {sizes.rows} imported rows, or wrong responses")
    if finished and not rows:
        problems.append("the import reported success but nothing is there")
    return problems


def run_import(workdir: str, kills: int, seed: int, sizes: BulkSizes) -> ScenarioReport:
    """``semcache import``: all of the file's rows or none of them, whenever it is killed."""
    report = ScenarioReport("import")
    rng = random.Random(seed)
    started = time.monotonic()
    template = _bulk_template(workdir, sizes.entries)
    file = _bulk_file(workdir, sizes.rows)
    expected = {bulk_query(i): bulk_answer(i) for i in range(sizes.rows)}
    path = os.path.join(workdir, "import.db")
    args = ["import", path, file, str(sizes.batch), str(sizes.delay)]
    duration: float | None = None
    with tempfile.TemporaryFile() as stderr:
        while report.kills < kills:
            _fresh_copy(template, path)
            delay = _kill_moment(rng, duration)
            run = _run_and_kill(args, stderr, delay)
            if run.lines[0] != "STARTED" or (delay is None and not run.finished):
                report.violations.append(f"round {report.rounds}: child failed: {run.stderr}")
                break
            problems = _import_problems(path, sizes, expected, finished=run.finished)
            rows = _bulk_rows(path)
            if run.duration is not None:  # follow the machine's speed (other jobs come and go)
                duration = run.duration
            if delay is None:
                outcome = f"calibration (not killed, {duration or 0:.2f} s)"
            else:
                report.kills += 1
                if run.finished:
                    outcome = "finished before the kill"
                else:
                    outcome = f"killed mid-way: {'all' if rows else 'nothing'} imported"
            report.outcomes[outcome] += 1
            report.violations += [f"round {report.rounds}: {p}" for p in problems]
            report.rounds += 1
            report.verified += 1
            if problems:
                break
    report.entries = sizes.entries + sizes.rows
    report.elapsed = time.monotonic() - started
    return report


def _warm_again(path: str, file: str) -> tuple[int, int, int]:
    from semcache_sqlite.store import Scope
    from semcache_sqlite.warmup import warm

    db = Database(path)
    try:
        counts = warm(db, HashEmbedder(OLD_DIM), Path(file), "jsonl", Scope(BULK_NS, "", ""))
    finally:
        db.close()
    return counts.added, counts.updated, counts.unchanged


def run_warm(workdir: str, kills: int, seed: int, sizes: BulkSizes) -> ScenarioReport:
    """``semcache warm``: a prefix of whole batches; re-running completes it, no duplicate."""
    report = ScenarioReport("warm")
    rng = random.Random(seed)
    started = time.monotonic()
    template = _bulk_template(workdir, sizes.entries)
    file = _bulk_file(workdir, sizes.rows)
    order = [bulk_query(i) for i in range(sizes.rows)]
    path = os.path.join(workdir, "warm.db")
    args = ["warm", path, file, str(sizes.batch), str(sizes.delay)]
    duration: float | None = None
    with tempfile.TemporaryFile() as stderr:
        while report.kills < kills:
            _fresh_copy(template, path)
            delay = _kill_moment(rng, duration)
            run = _run_and_kill(args, stderr, delay)
            if run.lines[0] != "STARTED" or (delay is None and not run.finished):
                report.violations.append(f"round {report.rounds}: child failed: {run.stderr}")
                break
            committed = [int(x.split()[1]) for x in run.lines if x.startswith("W ")]
            reported = max(committed or [0])
            report.verified += len(committed)
            problems = check_file(path).problems()
            rows = _bulk_rows(path)
            k = len(rows)
            if set(rows) != set(order[:k]) or any(
                rows[q] != bulk_answer(i) for i, q in enumerate(order[:k]) if q in rows
            ):
                problems.append(f"the {k} warmed rows are not the file's first {k}")
            if k % sizes.batch and k != sizes.rows:
                problems.append(f"{k} rows warmed: not whole batches of {sizes.batch}")
            if k < reported:
                problems.append(f"{k} rows warmed, the child reported {reported} committed")
            added, updated, unchanged = _warm_again(path, file)
            if (added, updated, unchanged) != (sizes.rows - k, 0, k):
                problems.append(
                    f"re-running warm after {k} rows: {added} added, {updated} updated, "
                    f"{unchanged} unchanged"
                )
            after = check_file(path)
            problems += after.problems()
            if after.entries != sizes.entries + sizes.rows or _bulk_rows(path) != dict(
                zip(order, (bulk_answer(i) for i in range(sizes.rows)), strict=True)
            ):
                problems.append(f"{after.entries} entries after re-running warm")
            if run.duration is not None:  # follow the machine's speed (other jobs come and go)
                duration = run.duration
            if delay is None:
                outcome = f"calibration (not killed, {duration or 0:.2f} s)"
            else:
                report.kills += 1
                outcome = "finished before the kill" if run.finished else "killed mid-way"
            report.outcomes[outcome] += 1
            report.violations += [f"round {report.rounds}: {p}" for p in problems]
            report.rounds += 1
            if problems:
                break
    report.entries = sizes.entries + sizes.rows
    report.elapsed = time.monotonic() - started
    return report


SCENARIOS = ("writes", "migration", "reembed", "import", "warm")


def run(
    workdir: str | Path,
    *,
    kills: int = 200,
    scenarios: tuple[str, ...] = SCENARIOS,
    seed: int = 0,
    max_lines: int = 300,
    migration_rows: int = 200_000,
    bulk: BulkSizes | None = None,
    path: str | None = None,
) -> CrashReport:
    """Run each scenario with ``kills`` kills; files live in ``workdir``."""
    workdir = str(workdir)
    writes_path = path or os.path.join(workdir, "crash.db")
    reports = []
    for scenario in scenarios:
        if scenario == "writes":
            reports.append(run_writes(writes_path, kills, seed, max_lines))
        elif scenario == "migration":
            reports.append(run_migration(workdir, kills, seed, migration_rows))
        elif scenario == "reembed":
            reports.append(run_reembed(workdir, kills, seed, bulk or BulkSizes()))
        elif scenario == "import":
            reports.append(run_import(workdir, kills, seed, bulk or BulkSizes()))
        elif scenario == "warm":
            reports.append(run_warm(workdir, kills, seed, bulk or BulkSizes()))
        else:
            raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    return CrashReport(writes_path, reports)


#: Children (and checks) give a namespace cells from this many entries, 4 cells,
#: when set (``--cells-at``), so that the bulk scenarios cross the threshold.
CELLS_AT_VARIABLE = "SEMCACHE_CRASH_CELLS_AT"


def small_cells_from_environment() -> None:
    """Apply ``--cells-at`` (passed to children through the environment)."""
    value = os.environ.get(CELLS_AT_VARIABLE)
    if value:
        vector_cells.CLUSTER_AT = int(value)
        vector_cells.CELLS = 4
        vector_cells.PROBED_CELLS = 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    small_cells_from_environment()
    if argv[:1] == ["--child"]:
        kind, *rest = argv[1:]
        if kind == "writes":
            child_writes(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "migration":
            child_migration(rest[0], int(rest[1]))
        elif kind == "reembed":
            child_reembed(rest[0], int(rest[1]), float(rest[2]))
        elif kind == "import":
            child_import(rest[0], rest[1], int(rest[2]), float(rest[3]))
        elif kind == "warm":
            child_warm(rest[0], rest[1], int(rest[2]), float(rest[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="kills per scenario (200)")
    parser.add_argument("--scenario", choices=(*SCENARIOS, "all"), default="all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-lines", type=int, default=300, help="most reports before a kill")
    parser.add_argument("--migration-rows", type=int, default=200_000)
    parser.add_argument(
        "--bulk-entries", type=int, default=1500, help="entries in the reembed/import/warm file"
    )
    parser.add_argument(
        "--bulk-rows", type=int, default=1500, help="rows of the import/warm input file"
    )
    parser.add_argument("--bulk-batch", type=int, default=16, help="their batch_size")
    parser.add_argument(
        "--bulk-delay", type=float, default=0.002, help="seconds per embed() call in the child"
    )
    parser.add_argument("--path", help="file for the writes scenario (default: temporary)")
    parser.add_argument(
        "--cells-at",
        type=int,
        help="give namespaces 4 cells from this many entries (the library: 65,536), so the "
        "bulk scenarios kill writes that train cells and move entries into them",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.cells_at:
        os.environ[CELLS_AT_VARIABLE] = str(args.cells_at)  # the children inherit it
        small_cells_from_environment()
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    with tempfile.TemporaryDirectory(prefix="semcache-crash-") as tmp:
        report = run(
            tmp,
            kills=args.kills,
            scenarios=scenarios,
            seed=args.seed,
            max_lines=args.max_lines,
            migration_rows=args.migration_rows,
            bulk=BulkSizes(args.bulk_entries, args.bulk_rows, args.bulk_batch, args.bulk_delay),
            path=args.path,
        )
    if args.json:
        print(json.dumps({**asdict(report), "ok": report.ok, "kills": report.kills}, indent=2))
    else:
        print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
