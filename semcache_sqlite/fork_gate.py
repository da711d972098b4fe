"""fork() waits for the write transactions and lookups of the process's other threads.

SQLite keeps a file's locks in process memory. A child forked while another thread
of the parent is inside a write transaction inherits that lock state with no thread
to release it: every write of the child, even through a new connection, times out
(CacheTimeoutError). A lookup's read transaction (``Database.snapshot``) left that
way pins the child's WAL: no checkpoint of the child gets past it. So a fork waits
(``os.register_at_fork``) until no other thread is inside a transaction; meanwhile no
other transaction begins (except in a thread already inside one, which may be waiting
to finish it), so writers cannot starve it.

The forking thread's own transaction cannot be waited for (it would never end): a
fork from inside one goes ahead at once, and is the caller's to avoid. A fork waits
at most :data:`FORK_WAIT` seconds, then goes ahead (with a warning): a stuck
transaction must not hang the parent.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter

#: The longest a fork waits for other threads' transactions to end.
FORK_WAIT = 10.0

logger = logging.getLogger("semcache_sqlite")


class TransactionGate:
    """Counts the threads inside a write transaction; holds forks until there are none."""

    def __init__(self) -> None:
        # A plain Lock: the child releases the copy it inherits, held by the forking thread.
        self._changed = threading.Condition(threading.Lock())
        self._inside: Counter[int] = Counter()
        self._fork_pending = False

    def enter(self) -> None:
        """Before BEGIN: waits while a fork is waiting or in progress, unless this thread
        is inside a transaction already (of another file: it must be able to finish)."""
        me = threading.get_ident()
        with self._changed:
            self._changed.wait_for(lambda: not self._fork_pending or self._inside[me] > 0)
            self._inside[me] += 1

    def leave(self) -> None:
        """After COMMIT or ROLLBACK."""
        me = threading.get_ident()
        with self._changed:
            self._inside[me] -= 1
            if self._inside[me] <= 0:
                del self._inside[me]
            self._changed.notify_all()

    def before_fork(self) -> None:
        me = threading.get_ident()
        self._changed.acquire()  # held across the fork: no transaction begins meanwhile
        if self._inside[me] > 0:  # our own transaction: waiting for the others could deadlock
            return
        self._fork_pending = True  # new transactions wait (enter) while we wait for these
        if not self._changed.wait_for(lambda: set(self._inside) <= {me}, FORK_WAIT):
            logger.warning(
                "fork() after waiting %.0f s for other threads' write transactions: the "
                "child may be unable to write the cache file",
                FORK_WAIT,
            )

    def after_fork_in_parent(self) -> None:
        self._fork_pending = False
        self._changed.notify_all()
        self._changed.release()

    def after_fork_in_child(self) -> None:
        me = threading.get_ident()
        self._inside = Counter({me: self._inside[me]} if self._inside[me] else {})
        self._fork_pending = False
        self._changed.release()


GATE = TransactionGate()

if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork()
    os.register_at_fork(
        before=GATE.before_fork,
        after_in_parent=GATE.after_fork_in_parent,
        after_in_child=GATE.after_fork_in_child,
    )
