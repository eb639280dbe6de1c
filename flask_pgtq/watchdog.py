"""Stopping handlers that run too long or were cancelled.

Python cannot kill a thread.  The watchdog stops a handler in two steps:

1. At its deadline (``timeout`` after it started, or ``PGTQ_CANCEL_GRACE``
   after a cancel request) it raises :class:`TaskTimeout` or
   :class:`TaskCancelled` *inside* the handler's thread (an asynchronous
   exception).  A handler running Python code stops at once; one blocked in
   a C call (``time.sleep``, a socket read) stops when the call returns.
2. If the handler is still running :data:`STUCK_GRACE` seconds later, the
   attempt is recorded as timed out (or cancelled) and the worker restarts
   its process (after letting the other tasks finish): the only way to
   really end a blocked thread.

A handler running in a child process (``isolated=True``, see
:mod:`flask_pgtq.isolation`) is registered with a *stop* function instead:
at its deadline the watchdog calls it, which kills the child at once.  It
cannot see a cancel request, so a cancel stops it without waiting for
``PGTQ_CANCEL_GRACE``.  An ``async def`` handler (:mod:`flask_pgtq.aio`) is
registered with a *stop* function too, which cancels its asyncio task; it
can see a cancel request, so it gets the grace (``graceful=True``).
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .exceptions import TaskCancelled, TaskTimeout

#: Seconds a handler gets, after the exception is raised in it, to stop.
STUCK_GRACE = 2.0


@dataclass
class Watched:
    task_id: int
    thread_id: int
    started: float
    timeout: float | None
    cancel_deadline: float | None = None
    raised: type[BaseException] | None = None
    raised_at: float = 0.0
    stop: Callable[[type[BaseException]], None] | None = None
    graceful: bool = False


class Watchdog:
    """Tracks the handler running in each thread (thread-safe)."""

    def __init__(self, cancel_grace: float) -> None:
        self.cancel_grace = cancel_grace
        self._lock = threading.Lock()
        self._watched: dict[int, Watched] = {}

    def started(
        self,
        task_id: int,
        timeout: float | None,
        stop: Callable[[type[BaseException]], None] | None = None,
        *,
        graceful: bool = False,
    ) -> None:
        """Called by a handler thread before it runs the task.

        :param stop: stops the task at once, given the reason
            (:class:`TaskTimeout` or :class:`TaskCancelled`); called instead
            of raising in the thread.  For a task run in a child process, or
            on the event loop.
        :param graceful: with *stop*: a cancel request waits
            ``PGTQ_CANCEL_GRACE`` before *stop* is called (the task can see
            the request and end by itself), as for a thread.
        """
        with self._lock:
            self._watched[task_id] = Watched(
                task_id,
                threading.get_ident(),
                time.monotonic(),
                timeout,
                stop=stop,
                graceful=graceful,
            )

    def finished(self, task_id: int) -> None:
        """Called by the handler thread when the task is done.  Clears an
        exception raised too late to matter."""
        with self._lock:
            watched = self._watched.pop(task_id, None)
            if watched is not None and watched.raised is not None and watched.stop is None:
                _raise_in(watched.thread_id, None)

    def cancel_requested(self, task_id: int) -> bool:
        """Start the cancel grace period; ``False`` if the task is not running here."""
        with self._lock:
            watched = self._watched.get(task_id)
            if watched is None:
                return False
            if watched.cancel_deadline is None:
                grace = self.cancel_grace if watched.stop is None or watched.graceful else 0.0
                watched.cancel_deadline = time.monotonic() + grace
            return True

    def stop_all(self, reason: type[BaseException]) -> None:
        """Stop at once every task registered with a *stop* function (their
        child processes are killed).  Thread-run handlers end with the process."""
        with self._lock:
            for watched in self._watched.values():
                if watched.stop is not None and watched.raised is None:
                    watched.raised = reason
                    watched.raised_at = time.monotonic()
                    watched.stop(reason)

    def enforce(self) -> list[tuple[int, type[BaseException]]]:
        """Raise in handlers past their deadline; return the ``(task id,
        exception)`` of those still running :data:`STUCK_GRACE` later."""
        now = time.monotonic()
        stuck = []
        with self._lock:
            for watched in list(self._watched.values()):
                if watched.raised is None:
                    reason = self._due(watched, now)
                    if reason is not None:
                        watched.raised = reason
                        watched.raised_at = now
                        if watched.stop is not None:
                            watched.stop(reason)
                        else:
                            _raise_in(watched.thread_id, reason)
                elif now >= watched.raised_at + STUCK_GRACE:
                    stuck.append((watched.task_id, watched.raised))
                    del self._watched[watched.task_id]
        return stuck

    def next_deadline(self) -> float | None:
        """The monotonic time of the next thing to enforce, if any."""
        times = []
        with self._lock:
            for w in self._watched.values():
                if w.raised is not None:
                    times.append(w.raised_at + STUCK_GRACE)
                else:
                    if w.timeout is not None:
                        times.append(w.started + w.timeout)
                    if w.cancel_deadline is not None:
                        times.append(w.cancel_deadline)
        return min(times, default=None)

    @staticmethod
    def _due(watched: Watched, now: float) -> type[BaseException] | None:
        if watched.cancel_deadline is not None and now >= watched.cancel_deadline:
            return TaskCancelled
        if watched.timeout is not None and now >= watched.started + watched.timeout:
            return TaskTimeout
        return None


def _raise_in(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raise *exc* in another thread at its next bytecode (``None`` clears)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None
    )
