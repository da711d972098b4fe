"""A clock the tests move by hand (``SemanticCache(clock=...)``)."""

from __future__ import annotations


class FakeClock:
    """Unix seconds that only change when ``advance()`` is called."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now
