"""Running one task: look up its handler, call it in a fresh app context,
turn what happened into an :class:`~flask_pgtq.values.Outcome`, record it and
announce it.  Shared by the worker and :meth:`~flask_pgtq.Task.run`.

Like the rest of the core this module does not import Flask: an app, when
there is one, is passed in and only its ``app_context()`` is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from . import codec, signals
from .config import Config, seconds
from .connection import Database
from .exceptions import (
    ArgumentsNotSerializable,
    Cancel,
    ChildFailed,
    ConfigurationError,
    DatabaseError,
    NotClaimed,
    PayloadTooLarge,
    Retry,
    SetupError,
    Snooze,
    TaskCancelled,
    TaskFailed,
    TaskTimeout,
)
from .middleware import Middleware, run_through
from .queue import TaskStore
from .task import State, Task
from .values import Outcome

if TYPE_CHECKING:
    from flask import Flask

    from .handler import Handler

log = logging.getLogger("flask_pgtq")

_current_task: contextvars.ContextVar[Task] = contextvars.ContextVar("pgtq_current_task")


#: The task whose handler is running in this thread (a proxy to a
#: :class:`~flask_pgtq.Task`).  Outside a handler, using it raises
#: :class:`RuntimeError`.
class _CurrentTask:
    """Forwards attribute access to the task of the running handler."""

    __slots__ = ()

    def _get(self) -> Task:
        try:
            return _current_task.get()
        except LookupError:
            raise SetupError("not inside a flask_pgtq task handler") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._get(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._get(), name, value)

    def __repr__(self) -> str:
        try:
            return repr(self._get())
        except SetupError:
            return "<current_task: not inside a task handler>"

    def __eq__(self, other: object) -> bool:
        return self._get() == other

    def __hash__(self) -> int:
        return hash(self._get())

    def __bool__(self) -> bool:
        return _current_task.get(None) is not None

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(current_task, Task) inside a handler
        task = _current_task.get(None)
        return type(self) if task is None else type(task)


current_task: Task = cast(Task, _CurrentTask())


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt number *attempt* (1-based).

    Exponential (``base * 2**(attempt-1)``, at most *cap*) with jitter: a
    uniform draw from the upper half, so retries of tasks that failed
    together spread out.
    """
    ceiling: float = min(cap, base * 2 ** max(attempt - 1, 0))
    return ceiling * random.uniform(0.5, 1.0)


#: The ``exception`` of an outcome that replaced one the database refused
#: (see :func:`unstorable`).
REFUSED = RuntimeError("outcome refused by the database")


def unstorable(outcome: Outcome, exc: BaseException) -> Outcome:
    """A failure to record instead of *outcome*, which the database refused
    (*exc* says why): it holds nothing but plain text, so it can be stored."""
    return Outcome(
        outcome.task,
        State.FAILED,
        error=f"the outcome of this attempt ({outcome.state.value}) could not be stored "
        f"and was replaced by this failure; failed without retry. The database said: {exc}",
        duration=outcome.duration,
        exception=REFUSED,
    )


def asyncio_running() -> bool:
    """Whether an ``asyncio`` event loop runs in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class Runner:
    """Runs tasks for one app (or one standalone queue).

    :param config: settings.
    :param db: the connection pool.
    :param handlers: registered handlers by task name.
    :param app: the Flask app whose context each task runs in, or ``None``.
    :param sender: the sender of signals (the app, or the extension).
    :param middleware: the extension's middleware, outermost first.
    """

    def __init__(
        self,
        config: Config,
        db: Database,
        handlers: Mapping[str, Handler[Any, Any]],
        app: Flask | None,
        sender: Any,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.config = config
        #: The queue core; the tasks it returns are bound to this runner.
        self.store = TaskStore(config, db, backend=self)
        self.store.on_workflows_finished = self.workflows_finished
        self.handlers = handlers
        self.app = app
        self.sender = sender
        #: Reads workflows for :data:`~flask_pgtq.signals.workflow_finished`
        #: (the app's queue, set by it).
        self.workflow_reader: Callable[[int], Any] | None = None
        #: The extension's middleware (shared with it), outermost first.
        self.middleware = middleware

    def workflows_finished(self, ids: list[int]) -> None:
        """Announce workflows whose last task just ended (once each)."""
        signal = signals.workflow_finished
        if not signal.receivers or self.workflow_reader is None:
            return
        for workflow_id in ids:
            try:
                workflow = self.workflow_reader(workflow_id)
            except Exception:
                log.warning("could not read finished workflow %s", workflow_id, exc_info=True)
                continue
            with self.context():
                signals.send(signal, self.sender, workflow=workflow)

    def parent_results(self, task: Task) -> list[Any]:
        return [row["result"] for row in self.store.parent_results(task.id)]

    def context(self) -> contextlib.AbstractContextManager[Any]:
        """A fresh app context (or nothing, without an app)."""
        if self.app is None:
            return contextlib.nullcontext()
        return self.app.app_context()

    def get(self, task_id: int) -> Task:
        return self.store.get(task_id)

    def wait(self, task: Task, timeout: float | None) -> Task:
        return self.store.wait(task.id, timeout)

    def set_progress(self, task: Task, progress: Any) -> None:
        try:
            encoded = codec.encode(progress, self.config.max_result_bytes)
        except ValueError as exc:
            raise ArgumentsNotSerializable(f"progress cannot be stored as JSON: {exc}") from None
        if task.state is not State.RUNNING or not self.store.set_progress(task, encoded):
            raise NotClaimed(
                f"task {task.id} attempt {task.attempts} is not running here; progress not recorded"
            )

    # -- one attempt -------------------------------------------------------

    def execute(self, task: Task) -> Outcome:
        """Run *task*'s handler once and say what came of it.  Never raises
        for anything the handler does.

        An ``async def`` handler runs to completion here, in this thread,
        with ``asyncio.run`` (``PGTQ_EAGER``, :meth:`~flask_pgtq.Task.run`,
        ``drain``); a worker runs it on its event loop instead
        (``execute_async``)."""
        handler = self._runnable(task)
        if isinstance(handler, Outcome):
            return handler
        started = time.perf_counter()
        try:
            if handler.is_async:
                if asyncio_running():
                    raise SetupError(
                        f"handler {task.name!r} is async: it cannot run to completion "
                        "in a thread whose event loop is running (PGTQ_EAGER, Task.run "
                        "and drain use asyncio.run); push it for a worker instead"
                    )
                value = asyncio.run(self._call_async(task, handler))
            else:
                token = _current_task.set(task)
                try:
                    with self.context():
                        signals.send(signals.task_started, self.sender, task=task)
                        value = self.call(handler, task)
                finally:
                    _current_task.reset(token)
        except BaseException as exc:  # noqa: BLE001 - a handler's failure is data
            return self._raised(task, handler, exc, started)
        return self._returned(task, value, started)

    async def execute_async(
        self, task: Task, stopped_for: Callable[[], type[BaseException] | None]
    ) -> Outcome:
        """:meth:`execute` for an ``async def`` handler, on the running event
        loop: the app context and ``current_task`` are entered inside this
        coroutine (each asyncio task has its own context).

        :param stopped_for: when the attempt was cancelled by the worker,
            why (:class:`TaskTimeout` or :class:`TaskCancelled`); an
            ``asyncio.CancelledError`` is then recorded as that.
        """
        handler = self._runnable(task)
        if isinstance(handler, Outcome):
            return handler
        started = time.perf_counter()
        try:
            value = await self._call_async(task, handler)
        except asyncio.CancelledError:
            reason = stopped_for()
            if reason is None:
                raise  # not the worker's doing: the loop is going away
            return self._raised(task, handler, reason(), started)
        except BaseException as exc:  # noqa: BLE001 - a handler's failure is data
            return self._raised(task, handler, exc, started)
        return self._returned(task, value, started)

    async def _call_async(self, task: Task, handler: Handler[Any, Any]) -> Any:
        token = _current_task.set(task)
        try:
            with self.context():
                signals.send(signals.task_started, self.sender, task=task)
                # Middleware wraps the call that makes the coroutine; the
                # coroutine (or what a middleware returned instead) is
                # awaited here.
                value = self.call(handler, task)
                if inspect.isawaitable(value):
                    value = await value
                return value
        finally:
            _current_task.reset(token)

    def _runnable(self, task: Task) -> Handler[Any, Any] | Outcome:
        """*task*'s handler, or the outcome of a task that cannot run."""
        handler = self.handlers.get(task.name)
        if handler is None:
            return Outcome(
                task,
                State.FAILED,
                error=f"no handler is registered for task name {task.name!r} in this "
                "worker; it is failed without retry (check the worker imports the "
                "module that defines it)",
            )
        if task.problem is not None:
            return Outcome(task, State.FAILED, error=task.problem)
        try:
            handler.check_arguments(task.args, task.kwargs)
        except TypeError as exc:
            return Outcome(task, State.FAILED, error=f"{exc}; failed without retry")
        return handler

    def _raised(
        self, task: Task, handler: Handler[Any, Any], exc: BaseException, started: float
    ) -> Outcome:
        """The outcome of an attempt whose handler raised *exc* (called in
        the ``except`` block, for its traceback)."""
        if isinstance(exc, Retry):
            try:
                delay = None if exc.delay is None else seconds(exc.delay, "Retry(delay=...)")
            except ConfigurationError as bad:
                return Outcome(
                    task,
                    State.FAILED,
                    error=f"{bad}; failed without retry\n\n{traceback.format_exc()}",
                    duration=time.perf_counter() - started,
                    exception=bad,
                )
            return self._retry_or_fail(
                task, handler, f"Retry: {exc.reason}", exc, started, delay=delay
            )
        if isinstance(exc, Snooze):
            return self._snooze(task, handler, exc, started)
        if isinstance(exc, (TaskCancelled, TaskTimeout)):
            return self.abandoned(task, type(exc), started)
        if isinstance(exc, Cancel):
            return Outcome(
                task,
                State.CANCELLED,
                error=exc.reason,
                duration=time.perf_counter() - started,
                exception=exc,
            )
        return self._retry_or_fail(task, handler, traceback.format_exc(), exc, started)

    def _returned(self, task: Task, value: Any, started: float) -> Outcome:
        """The outcome of an attempt whose handler returned *value*."""
        duration = time.perf_counter() - started
        try:
            result = codec.encode(value, self.config.max_result_bytes)
        except ValueError as exc:
            limit = " (PGTQ_MAX_RESULT_BYTES)" if isinstance(exc, PayloadTooLarge) else ""
            return Outcome(
                task,
                State.FAILED,
                error=f"the return value of handler {task.name!r} cannot be stored as JSON "
                f"({type(value).__name__}): {exc}{limit}; failed without retry",
                duration=duration,
                exception=exc,
            )
        return Outcome(task, State.SUCCEEDED, result=result, duration=duration)

    def _snooze(
        self, task: Task, handler: Handler[Any, Any], exc: Snooze, started: float
    ) -> Outcome:
        """The outcome of a handler that raised :class:`Snooze`: queued
        again without spending the attempt, or failed past ``max_snoozes``."""
        duration = time.perf_counter() - started
        limit = handler.handler_options.max_snoozes
        try:
            delay = seconds(exc.delay, "Snooze(delay=...)")
        except ConfigurationError as bad:
            return Outcome(
                task,
                State.FAILED,
                error=f"{bad}; failed without retry\n\n{traceback.format_exc()}",
                duration=duration,
                exception=bad,
            )
        if task.snoozes >= limit:
            return Outcome(
                task,
                State.FAILED,
                error=f"snoozed {task.snoozes} times, more than max_snoozes ({limit}) of "
                f"handler {task.name!r} allows: {exc.reason}",
                duration=duration,
                exception=exc,
            )
        return Outcome(
            task,
            State.QUEUED,
            error=f"Snooze: {exc.reason}",
            delay=delay,
            duration=duration,
            exception=exc,
            snooze=True,
        )

    def call(self, handler: Handler[Any, Any], task: Task) -> Any:
        """Call *handler* with *task*'s arguments through the middleware
        (the extension's, then the handler's); return what the chain returns."""
        return run_through(
            task,
            lambda: handler.func(*task.args, **task.kwargs),
            self.middleware,
            handler.middleware,
        )

    def abandoned(
        self, task: Task, reason: type[BaseException], started: float | None = None
    ) -> Outcome:
        """The outcome of an attempt the worker stopped: cancelled, or timed
        out (a failed attempt, retried while attempts are left)."""
        duration = 0.0 if started is None else time.perf_counter() - started
        if reason is TaskCancelled:
            return Outcome(
                task,
                State.CANCELLED,
                error="cancelled while running: stopped by the worker",
                duration=duration,
            )
        handler = self.handlers[task.name]
        return self._retry_or_fail(
            task,
            handler,
            f"TaskTimeout: ran longer than its timeout of {handler.timeout}s and was stopped",
            TaskTimeout(),
            time.perf_counter() - duration,
        )

    def failed_attempt(self, task: Task, error: str, started: float) -> Outcome:
        """The outcome of an attempt that failed outside its handler's code
        (an isolated handler's child process died): *error* is recorded, and
        the task retried while attempts are left."""
        handler = self.handlers[task.name]
        return self._retry_or_fail(task, handler, error, ChildFailed(error), started)

    def _retry_or_fail(
        self,
        task: Task,
        handler: Handler[Any, Any],
        error: str,
        exc: BaseException,
        started: float,
        *,
        delay: float | None = None,
    ) -> Outcome:
        duration = time.perf_counter() - started
        if task.attempts >= task.max_attempts:
            return Outcome(task, State.FAILED, error=error, duration=duration, exception=exc)
        if delay is None:
            base = self.config.retry_backoff
            if handler.retry_backoff is not None:
                base = handler.retry_backoff
            delay = backoff_delay(task.attempts, base, self.config.retry_backoff_max)
        return Outcome(
            task, State.QUEUED, error=error, delay=delay, duration=duration, exception=exc
        )

    def run_eagerly(self, task: Task) -> None:
        """``PGTQ_EAGER``: announce *task* as pushed, run its one attempt as
        a worker would (:meth:`execute`: a fresh app context, ``current_task``,
        the same signals and log line) and raise what its handler raised.
        Nothing is stored; a failure that a worker would retry fails here."""
        signals.send(signals.task_pushed, self.sender, task=task)
        task.state, task.attempts = State.RUNNING, 1
        outcome = self.execute(task)
        if outcome.state is State.QUEUED:
            outcome = replace(outcome, state=State.FAILED, delay=0.0)
        self.announce(outcome)
        if outcome.state is State.SUCCEEDED:
            task.result = None if outcome.result is None else json.loads(outcome.result)
            return
        if outcome.exception is not None:
            raise outcome.exception
        raise TaskFailed(task, outcome.error)

    # -- recording ---------------------------------------------------------

    def record(self, owner: str, outcomes: Iterable[Outcome]) -> set[int]:
        """Record *outcomes* in one statement, then log and signal each.

        An outcome whose task was taken from *owner* (lease lost) is logged
        as such and not announced.

        :return: the ids recorded.
        """
        outcomes = list(outcomes)
        accepted = self.store.finish(owner, outcomes)
        self.report(owner, outcomes, accepted)
        return accepted

    def report(self, owner: str, outcomes: Iterable[Outcome], accepted: set[int]) -> None:
        """Log and signal outcomes just recorded; *accepted* are the ids the
        database took (the others lost their lease)."""
        for outcome in outcomes:
            if outcome.task.id in accepted:
                self.announce(outcome)
            else:
                log.warning(
                    "lease lost: task %s (%s) attempt %s finished as %s on worker %s, "
                    "but the task had been rescued; this outcome is discarded",
                    outcome.task.id,
                    outcome.task.name,
                    outcome.task.attempts,
                    outcome.state.value,
                    owner,
                )

    def announce(self, outcome: Outcome) -> None:
        """Log one line and send the signal for a recorded outcome."""
        task = outcome.task
        task.state = outcome.state
        task.error = outcome.error
        snooze = outcome.snooze
        quiet = outcome.state is State.SUCCEEDED or snooze
        level = logging.INFO if quiet else logging.WARNING
        if log.isEnabledFor(level):
            retry = outcome.state is State.QUEUED and not snooze
            word = "snoozed" if snooze else "retrying" if retry else outcome.state.value
            # Built by hand rather than with log.log(): that would walk the
            # stack for the caller's line on every task, a worker's largest
            # cost per task after the database.
            record = log.makeRecord(
                log.name,
                level,
                __file__,
                0,
                "task %s %s queue=%s attempt=%s/%s %s %.3fs%s",
                (
                    task.id,
                    task.name,
                    task.queue,
                    task.attempts,
                    task.max_attempts,
                    "failed after" if retry else f"{word} after" if snooze else f"{word} in",
                    outcome.duration,
                    f"; retry in {outcome.delay:.1f}s"
                    if retry
                    else f"; runs again in {outcome.delay:.1f}s"
                    if snooze
                    else "",
                ),
                None,
                "announce",
                {
                    "task_id": task.id,
                    "task_name": task.name,
                    "queue": task.queue,
                    "attempt": task.attempts,
                    "outcome": word,
                    "duration": outcome.duration,
                },
            )
            log.handle(record)
        payload: dict[str, Any] = {"duration": outcome.duration}
        if outcome.state is State.SUCCEEDED:
            signal = signals.task_succeeded
        elif snooze:
            signal = signals.task_snoozed
            reason = outcome.exception.reason if isinstance(outcome.exception, Snooze) else None
            payload.update(delay=outcome.delay, reason=reason)
        elif outcome.state is State.QUEUED:
            signal = signals.task_retrying
            payload.update(error=outcome.error, delay=outcome.delay)
        elif outcome.state is State.FAILED:
            signal = signals.task_failed
            payload["error"] = outcome.error
        else:
            signal = signals.task_cancelled
            payload["reason"] = outcome.error
        if not signal.receivers:
            return  # the common case: no app context to push, no result to decode
        if outcome.state is State.SUCCEEDED:
            task.result = payload["result"] = (
                json.loads(outcome.result) if outcome.result is not None else None
            )
        with self.context():
            signals.send(signal, self.sender, task=task, **payload)

    # -- a task claimed with pop() -----------------------------------------

    def run_claimed(self, task: Task) -> Task:
        """Run a task claimed by :meth:`~flask_pgtq.PgTq.pop` and record its outcome.

        The owner's lease is renewed while the handler runs.

        :raises NotClaimed: the task is not running under a lease (never
            claimed, already finished, or rescued after the lease ran out).
        """
        owner = task.locked_by
        if task.state is not State.RUNNING or owner is None:
            raise NotClaimed(f"task {task.id} is {task.state.value}, not claimed; pop() it first")
        stop = threading.Event()
        beat = threading.Thread(
            target=self._keep_lease, args=(owner, stop), name="pgtq-lease", daemon=True
        )
        beat.start()
        try:
            outcome = self.execute(task)
        finally:
            stop.set()
            beat.join()
        try:
            accepted = self.record(owner, [outcome])
        except DatabaseError as exc:
            if exc.transient:
                raise
            accepted = self.record(owner, [unstorable(outcome, exc)])
        if task.id not in accepted:
            raise NotClaimed(
                f"task {task.id} was rescued by a worker after its lease ran out; "
                "this outcome was discarded"
            )
        return task.refresh()

    def _keep_lease(self, owner: str, stop: threading.Event) -> None:
        while not stop.wait(self.config.heartbeat_interval):
            try:
                self.store.heartbeat(owner)
            except Exception:
                log.warning("could not renew the lease of %s", owner, exc_info=True)
