"""Exceptions.

Every error flask_pgtq raises derives from :class:`PgTqError`.  Driver errors
are wrapped at one boundary (:mod:`flask_pgtq.connection`) with
``raise ... from exc``.  :class:`Retry` and :class:`Cancel` are raised by
handlers to steer their own task.
"""

from __future__ import annotations

from typing import Any


class PgTqError(Exception):
    """Base class of every flask_pgtq error."""


class ConfigurationError(PgTqError, ValueError):
    """A ``PGTQ_*`` setting or a handler option is missing or invalid."""


class SetupError(PgTqError, RuntimeError):
    """The queue is used outside its setup: outside an app context, on an app
    the extension is not registered on, registered twice, a task not bound to
    a queue, or ``current_task`` outside a handler."""


class UsageError(PgTqError, TypeError):
    """An API was called with an argument of the wrong kind (for example
    ``PgTq(42)``, or a connection object that is not a database connection)."""


class ArgumentsMismatch(UsageError):
    """A task's arguments do not fit its handler's signature (say, two
    positional arguments for ``def f(a)``).  Raised at push, before anything
    is stored; a worker given such a task by other means fails it without
    retry."""


class InvalidRequest(PgTqError, ValueError):
    """An inspection or operator request (``q.admin``, the CLI, the
    dashboard) has a bad argument: an id out of range, an unknown state, a
    task that cannot be retried in its state."""


class ActionNotAllowed(InvalidRequest):
    """The task is not in a state this action applies to (say, retrying a
    task that succeeded).  Nothing was changed."""


class DatabaseError(PgTqError):
    """The database reported an error.  The message never holds the password,
    nor (for errors about data) the values the statement was given.

    :ivar sqlstate: PostgreSQL's five-character error code, when it sent one.
    """

    sqlstate: str | None = None

    @property
    def transient(self) -> bool:
        """Trying the same statement again may work: the connection broke,
        or the statement was cancelled, timed out, deadlocked, or lost a
        serialization conflict or a lock wait."""
        code = self.sqlstate or ""
        return code[:2] in _TRANSIENT_CLASSES or code in _TRANSIENT_CODES


#: SQLSTATE classes and codes of errors worth the same statement again:
#: connection exceptions, transaction rollbacks (serialization failure,
#: deadlock), operator intervention (cancel, shutdown), insufficient
#: resources, and lock_not_available.
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57"})
_TRANSIENT_CODES = frozenset({"55P03", "55006"})


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached, or the connection broke."""

    @property
    def transient(self) -> bool:
        return True


class SchemaNotReady(DatabaseError):
    """The tables are missing or older than this version of flask_pgtq."""


class UnknownTask(PgTqError, LookupError):
    """No handler is registered under this task name."""


class TaskNotFound(PgTqError, LookupError):
    """No task with this id exists."""


class DuplicateHandler(PgTqError, ValueError):
    """Another handler is already registered under this task name."""


class InvalidName(ConfigurationError):
    """A queue or task name is empty, too long or has forbidden characters."""


class ArgumentsNotSerializable(PgTqError, TypeError):
    """A task argument is not JSON-serialisable.  Nothing was stored."""


class PayloadTooLarge(PgTqError, ValueError):
    """The JSON arguments are larger than ``PGTQ_MAX_PAYLOAD_BYTES``."""


class NotClaimed(PgTqError):
    """The task is not held by this caller (it was never claimed, or the lease was lost)."""


class TaskFailed(PgTqError):
    """Raised by :meth:`Task.wait` when the task failed or was cancelled.

    :ivar task: the task, as read at its end.
    :ivar error: its error text (traceback or reason).
    """

    def __init__(self, task: object, error: str | None) -> None:
        state = getattr(getattr(task, "state", None), "value", "failed")
        super().__init__(f"task {getattr(task, 'id', '?')} {state}: {error}")
        self.task = task
        self.error = error


class WaitTimeout(PgTqError, TimeoutError):
    """:meth:`Task.wait` gave up before the task finished."""


class Retry(PgTqError):
    """Raise in a handler to run the task again later.

    The attempt counts against ``max_attempts``; when none are left the task
    fails.

    :param delay: seconds (or a :class:`~datetime.timedelta`) to wait before
        the next attempt, from 0 to 100 years; ``None`` uses the handler's
        exponential backoff.  Any other value (``nan``, a negative number, a
        string) fails the task without retry, with an error that says why.
    :param reason: recorded as the task's error text.
    """

    def __init__(self, delay: Any = None, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class Snooze(PgTqError):
    """Raise in a handler to run the task again later **without spending an
    attempt** and without touching the retry backoff (say, a resource is
    busy, or it is too early).  The task goes back to ``queued``; its
    ``history`` records the snooze.  More than the handler's
    ``max_snoozes`` (default 100) fails the task, so it cannot snooze for
    ever.

    :param delay: seconds (or a :class:`~datetime.timedelta`) before it runs
        again, from 0 to 100 years.
    :param reason: recorded in the task's history.
    """

    def __init__(self, delay: Any = 0, reason: str = "snoozed") -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason


class Cancel(PgTqError):
    """Raise in a handler to stop the task for good: it ends ``cancelled``.

    :param reason: recorded as the task's error text.
    """

    def __init__(self, reason: str = "cancelled by handler") -> None:
        super().__init__(reason)
        self.reason = reason


class ChildFailed(PgTqError):
    """An attempt of an ``isolated=True`` handler failed in its child
    process: the child died before it sent a result, or this stands for the
    exception the handler raised there (its type and message; the original
    cannot cross between processes).  The task's error holds the full text."""


class TaskTimeout(BaseException):
    """Raised inside a handler that ran past its ``timeout``.

    A :class:`BaseException`, like :class:`KeyboardInterrupt`, so that a
    handler's ``except Exception`` does not swallow it.  The attempt counts
    as failed (and is retried while attempts are left).
    """


class TaskCancelled(BaseException):
    """Raised inside a handler whose task was cancelled and did not stop
    within ``PGTQ_CANCEL_GRACE`` seconds.  The task ends ``cancelled``."""
