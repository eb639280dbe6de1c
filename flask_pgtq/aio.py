"""The event loop of a worker process: where ``async def`` handlers run.

One ``asyncio`` loop per worker, in a thread of its own next to the
handler threads, started with the first async task.  A handler thread that
takes an async task from the inbox hands it to the loop
(``EventLoop.submit``) and goes back for the next; the attempt runs as an asyncio task,
so any number of them overlap on the one thread while they ``await``.

Each attempt is ``Runner.execute_async``: a fresh app context and
``current_task``, entered inside the attempt's own asyncio task (its own
``contextvars`` context, so attempts never see each other's), the same
signals, ``Retry``/``Cancel``/``Snooze`` and result encoding as a thread.

Stopping goes through the worker's watchdog (``flask_pgtq.watchdog``),
with a *stop* function that cancels the asyncio task from the worker's main
thread: at the handler's ``timeout`` (recorded as
:class:`~flask_pgtq.TaskTimeout`, retried like a thread's), or
``PGTQ_CANCEL_GRACE`` after a cancel request that the handler did not act on
(``current_task.cancel_requested``; recorded ``cancelled``).  A coroutine
that swallows the ``asyncio.CancelledError``, or blocks the loop
without awaiting, is stuck as a thread would be: the worker records it and
restarts its process.

Handlers that block (``time.sleep``, a synchronous driver) stall every async
task of the worker: use ``await asyncio.to_thread(...)`` for such calls.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

from .task import State
from .values import Outcome

if TYPE_CHECKING:
    from .runner import Runner
    from .task import Task
    from .watchdog import Watchdog

log = logging.getLogger("flask_pgtq.worker")

#: Seconds :meth:`EventLoop.close` waits for the loop's thread.
CLOSE_WAIT = 5.0


class EventLoop:
    """One asyncio loop in a daemon thread, running attempts of async handlers.

    :param runner: runs and records tasks.
    :param watchdog: the worker's watchdog (timeouts and cancels).
    """

    def __init__(self, runner: Runner, watchdog: Watchdog) -> None:
        self.runner = runner
        self.watchdog = watchdog
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, task: Task, done: Callable[[Outcome | None], None]) -> None:
        """Start an attempt of *task* on the loop and return at once; *done*
        gets its outcome, from the loop's thread, whatever happens (``None``
        for an attempt cut short by :meth:`close`: the worker releases it)."""
        loop = self._started()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._attempt(task, done)))

    def close(self) -> None:
        """Cancel what still runs and stop the loop (at worker shutdown)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        def stop() -> None:
            for pending in asyncio.all_tasks(loop):
                pending.cancel()
            loop.call_soon(loop.stop)

        loop.call_soon_threadsafe(stop)
        thread.join(CLOSE_WAIT)

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._run, args=(loop,), name="pgtq-event-loop", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _run(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _attempt(self, task: Task, done: Callable[[Outcome | None], None]) -> None:
        """One attempt, watched; its outcome goes to *done*."""
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        assert current is not None
        stopped: list[type[BaseException]] = []

        def stop(reason: type[BaseException]) -> None:
            # Called by the watchdog from the worker's main thread.
            stopped.append(reason)
            loop.call_soon_threadsafe(current.cancel)

        handler = self.runner.handlers.get(task.name)
        timeout = handler.timeout if handler is not None else None
        self.watchdog.started(task.id, timeout, stop, graceful=True)
        try:
            outcome = await self.runner.execute_async(task, lambda: stopped[0] if stopped else None)
        except asyncio.CancelledError:
            outcome = None  # the loop is closing: the worker releases the task
        except BaseException:  # noqa: BLE001 - no input may lose an outcome
            log.exception("internal error running async task %s", task.id)
            outcome = Outcome(
                task,
                State.FAILED,
                error="the worker could not run or record this task; failed without "
                f"retry:\n{traceback.format_exc()}",
            )
        finally:
            self.watchdog.finished(task.id)
        done(outcome)
