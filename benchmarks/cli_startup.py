"""How long the `semcache` command takes to answer, per command, cold process each time.

Inspection commands must not load the embedding model (onnxruntime + tokenizers,
~0.5 s); `get` of an exact repeat must not either; `get` of a paraphrase must.
Run: python benchmarks/cli_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(argv: list[str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "semcache_sqlite", *argv], capture_output=True, check=False
        )
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.db")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "semcache_sqlite",
                "put",
                db,
                "How do I reset my password?",
                "x",
            ],
            check=True,
            capture_output=True,
        )
        cases = {
            "--version": ["--version"],
            "ls": ["ls", db],
            "stats": ["stats", db],
            "doctor": ["doctor", db],
            "get (exact repeat)": ["get", db, "how do i reset my password?"],
            "get (paraphrase: embeds)": ["get", db, "How can I reset my password?"],
        }
        print(f"median of {args.runs} cold runs")
        for name, argv in cases.items():
            print(f"{name:28s} {_time(argv, args.runs) * 1000:7.0f} ms")


if __name__ == "__main__":
    main()
