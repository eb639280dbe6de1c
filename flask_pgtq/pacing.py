"""How much a worker claims, and when: small policies with no I/O.

- :class:`Prefetch`: how many tasks to claim for free handler threads and
  how many ahead of them, adapted to the mean run time.
- :class:`LimitTimer`: when each handler with a concurrency or rate limit is
  next worth a claim (each such claim costs a short transaction).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

from .values import Limit

#: Seconds a prefetched task should wait for a thread, at most (roughly).
PREFETCH_WAIT = 0.05


class Prefetch:
    """How many tasks a worker claims per round.

    :param concurrency: handler threads.
    :param cap: most tasks claimed ahead of the free threads (``PGTQ_PREFETCH``);
        0 turns prefetching off.
    :param wait: seconds a prefetched task should wait for a thread, at most
        (roughly): tasks ahead are what the threads get through in that time.
    """

    def __init__(self, concurrency: int, cap: int, wait: float = PREFETCH_WAIT) -> None:
        self.concurrency = concurrency
        self.cap = cap
        self.wait = wait
        #: Mean handler run time in seconds (moving average), ``None`` before
        #: the first task finished.
        self.mean_run: float | None = None
        #: Prefetched tasks left waiting at which a handler thread should
        #: wake the main thread to claim more (so the next round trip
        #: overlaps the tasks still waiting).
        self.refill_at = 0

    def note_run(self, seconds: float) -> None:
        """A task ran for *seconds*."""
        mean = self.mean_run
        self.mean_run = seconds if mean is None else 0.9 * mean + 0.1 * seconds

    def room(self, held: int, left: int | None = None) -> tuple[int, int]:
        """How many tasks to claim now: ``(for free threads, ahead of them)``.

        :param held: tasks the worker holds and has not finished (running or
            waiting for a thread).
        :param left: most tasks the worker may still claim (``--max-tasks``).
        """
        ahead_cap = 0
        if self.cap and self.mean_run is not None:
            fits = self.concurrency * self.wait / max(self.mean_run, 1e-6)
            ahead_cap = min(self.cap, int(fits))
        self.refill_at = ahead_cap // 2
        free = max(self.concurrency - held, 0)
        ahead = max(self.concurrency + ahead_cap - held - free, 0)
        if left is not None:
            free = min(free, left)
            ahead = min(ahead, left - free)
        return free, max(ahead, 0)


class LimitTimer:
    """When each limited handler is next worth a claim.

    A limited claim costs a short transaction, so a handler that had nothing
    to claim is tried again after *retry_after* seconds, or sooner on news:
    new tasks (:meth:`wake_all`) or one of its tasks finishing
    (:meth:`wake`).

    :param limits: the limits of the worker's handlers.
    :param retry_after: seconds before a handler that had nothing is tried again.
    :param clock: a monotonic clock (for tests).
    """

    def __init__(
        self,
        limits: Iterable[Limit],
        retry_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = list(limits)
        #: Task names of the limited handlers.
        self.names = [lim.name for lim in self.limits]
        self.retry_after = retry_after
        self._clock = clock
        self._due: dict[str, float] = {}

    def due(self) -> list[Limit]:
        """The limited handlers worth a claim now."""
        now = self._clock()
        return [lim for lim in self.limits if self._due.get(lim.name, 0.0) <= now]

    def tried(self, limits: Sequence[Limit], claimed: Iterable[str]) -> None:
        """*limits* were tried; tasks of the handlers named in *claimed* were
        claimed (those are worth another try at once)."""
        got = set(claimed)
        later = self._clock() + self.retry_after
        for lim in limits:
            self._due[lim.name] = 0.0 if lim.name in got else later

    def wake(self, name: str) -> None:
        """A task of *name* finished: a slot may have freed."""
        if name in self._due:
            self._due[name] = 0.0

    def wake_all(self) -> None:
        """New tasks arrived: limited ones may be among them."""
        self._due.clear()
