"""Single-flight: concurrent identical misses call the LLM once.

When several threads or asyncio tasks of one process ask the same question in
the same scope at the same time, the first becomes the *leader*: it looks the
query up and, on a miss, calls the LLM and stores the answer. The others are
*followers*: they wait for the leader and are given its answer instead of
calling the LLM themselves (they also skip the embedding and the search).

- **Key**: (cache file, namespace, user id, context key, normalised query,
  threshold, guards, verifier). Only identical (normalised) queries judged by the
  same rule coalesce; paraphrases that arrive together each do their own lookup.
- **Order**: the leader stores before it ends the flight, so a request arriving
  just after the flight ended finds the stored entry on the exact-match path:
  no window in which a second LLM call can slip through in this process.
- **Failures**: if the leader's request raises, the followers raise the same
  exception (retrying at once against a failing LLM is itself a stampede). If
  the leader is *cancelled* (task cancelled, stream closed early, KeyboardInterrupt)
  the flight is abandoned and the followers try again, one of them leading.
- **Re-entrancy**: a leader that asks the same question again from inside its
  own LLM call is not made to wait for itself: not in the same thread or task,
  and not from code it runs in a worker thread (``asyncio.to_thread`` copies
  the context variable that marks what the current call chain is leading).
- **Threads and tasks mix**: a sync follower waits on a ``threading.Event``, an
  async follower on a future resolved through its loop's ``call_soon_threadsafe``,
  so neither blocks an event loop nor needs a thread to wait.
- **Processes**: there is no cross-process lock. Two processes missing the same
  query at once may both call the LLM; both store, and the upsert on (namespace,
  user, context, normalised query) keeps one entry (the later answer wins,
  ``version`` 2). After ``fork()`` the child starts with no flights.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from .timing import CacheResult

T = TypeVar("T")


#: Keys of the flights the current call chain leads (see "Re-entrancy" above).
_LEADING: contextvars.ContextVar[frozenset[Hashable]] = contextvars.ContextVar(
    "semcache_leading", default=frozenset()
)


@contextlib.contextmanager
def leading(key: Hashable) -> Iterator[None]:
    """Mark ``key`` as led by this call chain while the leader works."""
    token = _LEADING.set(_LEADING.get() | {key})
    try:
        yield
    finally:
        _LEADING.reset(token)


def current_owner() -> object:
    """Who is running: the current asyncio task if any, else the current thread."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop in this thread
        task = None
    return task if task is not None else threading.get_ident()


class Flight(Generic[T]):
    """One in-flight request that others may wait on."""

    def __init__(self, key: Hashable, owner: object) -> None:
        self.key = key
        self.owner = owner
        self.result: T | None = None
        self.error: BaseException | None = None
        self.abandoned = False
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._futures: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def _settle(self, result: T | None, error: BaseException | None, abandoned: bool) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.result, self.error, self.abandoned = result, error, abandoned
            self._event.set()
            futures, self._futures = self._futures, []
        for loop, future in futures:
            # A closed loop (RuntimeError) has nobody waiting on it any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)

    def wait(self, timeout: float | None = None) -> bool:
        """Block this thread until the flight ends; False if ``timeout`` passed first."""
        return self._event.wait(timeout)

    async def wait_async(self, timeout: float | None = None) -> bool:
        """Wait without blocking the event loop; False if ``timeout`` passed first."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._event.is_set():
                return True
            self._futures.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout)
        except asyncio.TimeoutError:
            return self._event.is_set()
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class SingleFlight(Generic[T]):
    """The registry of flights of one process (see module docstring)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        # A fresh lock too: after fork() the old one may be held by a thread that
        # does not exist in the child.
        self._changed = threading.Condition(threading.Lock())
        self._flights: dict[Hashable, Flight[T]] = {}
        self._waiting = 0

    def join(self, key: Hashable) -> tuple[Flight[T] | None, bool]:
        """Lead a new flight for ``key`` or follow the running one.

        Returns ``(flight, True)`` for the leader, ``(flight, False)`` for a
        follower (call :meth:`wait_as_follower` next), and ``(None, False)`` when
        the running flight is the caller's own (re-entrant call: go it alone).
        """
        owner = current_owner()
        with self._changed:
            flight = self._flights.get(key)
            if flight is None:
                flight = Flight(key, owner)
                self._flights[key] = flight
                return flight, True
            if flight.owner == owner or key in _LEADING.get():
                return None, False
            return flight, False

    def wait_as_follower(self, flight: Flight[T], timeout: float | None) -> bool:
        self._count_waiter(+1)
        try:
            return flight.wait(timeout)
        finally:
            self._count_waiter(-1)

    async def await_as_follower(self, flight: Flight[T], timeout: float | None) -> bool:
        self._count_waiter(+1)
        try:
            return await flight.wait_async(timeout)
        finally:
            self._count_waiter(-1)

    def finish(self, flight: Flight[T], result: T) -> None:
        """The leader is done: hand ``result`` to the followers."""
        self._end(flight, result, None, False)

    def fail(self, flight: Flight[T], error: BaseException) -> None:
        """The leader failed with ``error``: the followers raise it too."""
        self._end(flight, None, error, False)

    def abandon(self, flight: Flight[T]) -> None:
        """The leader gave up (cancelled): the followers try again themselves."""
        self._end(flight, None, None, True)

    def _end(
        self, flight: Flight[T], result: T | None, error: BaseException | None, abandoned: bool
    ) -> None:
        with self._changed:
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]
            self._changed.notify_all()
        flight._settle(result, error, abandoned)

    def _count_waiter(self, delta: int) -> None:
        with self._changed:
            self._waiting += delta
            self._changed.notify_all()

    # -- introspection (diagnostics and tests) --------------------------------------

    def in_flight(self) -> int:
        """How many flights are running."""
        with self._changed:
            return len(self._flights)

    def waiting(self) -> int:
        """How many followers are waiting, over all flights."""
        with self._changed:
            return self._waiting

    def wait_for_waiters(self, count: int, timeout: float | None = None) -> bool:
        """Block until at least ``count`` followers are waiting; False on timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self._waiting >= count, timeout)


#: The process-wide registry every SemanticCache uses (the key names the file).
FLIGHTS: SingleFlight[CacheResult] = SingleFlight()

if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=FLIGHTS._reset)
