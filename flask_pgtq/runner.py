"""Running one task: look up its handler, call it in a fresh app context,
turn what happened into an :class:`~flask_pgtq.values.Outcome`, record it and
announce it.  Shared by the worker and :meth:`~flask_pgtq.Task.run`.

Like the rest of the core this module does not import Flask: an app, when
there is one, is passed in and only its ``app_context()`` is used.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import random
import threading
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
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
    TaskCancelled,
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


#: Marks an outcome that replaced one the database refused.
_UNSTORABLE = RuntimeError("outcome refused by the database")


def unstorable(outcome: Outcome, exc: BaseException) -> Outcome:
    """A failure to record instead of *outcome*, which the database refused
    (*exc* says why): it holds nothing but plain text, so it can be stored."""
    return Outcome(
        outcome.task,
        State.FAILED,
        error=f"the outcome of this attempt ({outcome.state.value}) could not be stored "
        f"and was replaced by this failure; failed without retry. The database said: {exc}",
        duration=outcome.duration,
        exception=_UNSTORABLE,
    )


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
        self.handlers = handlers
        self.app = app
        self.sender = sender
        self.middleware = middleware

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
        for anything the handler does."""
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
            return Outcome(
                task,
                State.FAILED,
                error=f"arguments do not match the signature of handler {task.name!r}: "
                f"{exc}; failed without retry",
            )
        started = time.perf_counter()
        token = _current_task.set(task)
        try:
            with self.context():
                signals.send(signals.task_started, self.sender, task=task)
                value = self.call(handler, task)
        except Retry as exc:
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
        except TaskCancelled:
            return self.abandoned(task, TaskCancelled, started)
        except TaskTimeout:
            return self.abandoned(task, TaskTimeout, started)
        except Cancel as exc:
            return Outcome(
                task,
                State.CANCELLED,
                error=exc.reason,
                duration=time.perf_counter() - started,
                exception=exc,
            )
        except BaseException as exc:  # noqa: BLE001 - a handler's failure is data
            return self._retry_or_fail(task, handler, traceback.format_exc(), exc, started)
        finally:
            _current_task.reset(token)
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
        level = logging.INFO if outcome.state is State.SUCCEEDED else logging.WARNING
        if log.isEnabledFor(level):
            word = "retrying" if outcome.state is State.QUEUED else outcome.state.value
            # Built by hand rather than with log.log(): that would walk the
            # stack for the caller's line on every task, a worker's largest
            # cost per task after the database.
            record = log.makeRecord(
                log.name,
                level,
                __file__,
                0,
                "task %s %s queue=%s attempt=%s/%s %s in %.3fs%s",
                (
                    task.id,
                    task.name,
                    task.queue,
                    task.attempts,
                    task.max_attempts,
                    word,
                    outcome.duration,
                    f" (next attempt in {outcome.delay:.1f}s)"
                    if outcome.state is State.QUEUED
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
