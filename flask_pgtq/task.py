"""The :class:`~flask_pgtq.Task` value object and its states.  No I/O happens here:
methods that need the database delegate to the queue the task came from.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .exceptions import SetupError

if TYPE_CHECKING:
    from typing import Protocol

    class Backend(Protocol):
        def get(self, task_id: int) -> Task: ...
        def run_claimed(self, task: Task) -> Task: ...
        def wait(self, task: Task, timeout: float | None) -> Task: ...
        def set_progress(self, task: Task, progress: Any) -> None: ...
        def parent_results(self, task: Task) -> list[Any]: ...


class State(enum.StrEnum):
    """Where a task is in its life.  Compares equal to its string value."""

    #: Waiting for its parents (a workflow step, or ``after=``) to end;
    #: never claimed.  Queued when its last parent ends.
    WAITING = "waiting"
    #: Waiting to run; ``run_at`` may lie in the future (a delay or a retry).
    QUEUED = "queued"
    #: Claimed by a worker, which holds a lease on it.
    RUNNING = "running"
    #: The handler returned; ``result`` holds its return value.
    SUCCEEDED = "succeeded"
    #: Attempts exhausted or not retryable; ``error`` holds the last traceback.
    FAILED = "failed"
    #: Cancelled before or while running.
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        return self in (State.SUCCEEDED, State.FAILED, State.CANCELLED)


@dataclass(eq=False, repr=False)
class Task:
    """One task, as read from the database.

    The row is the truth: a :class:`~flask_pgtq.Task` is a snapshot of it, refreshed by
    :meth:`refresh`.  Two tasks compare equal when their ids are equal.
    """

    id: int
    name: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    state: State
    priority: int = 0
    attempts: int = 0
    max_attempts: int = 1
    run_at: datetime | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    locked_by: str | None = None
    result: Any = None
    error: str | None = None
    #: What the handler last reported with :meth:`~flask_pgtq.Task.set_progress`.
    progress: Any = None
    #: One entry per attempt that did not succeed (oldest first): ``attempt``,
    #: ``state`` (``queued`` for a retry, ``failed``, ``cancelled``, or ``lost``
    #: when its worker died), ``worker``, ``started_at``, ``finished_at``,
    #: ``error``.
    history: list[dict[str, Any]] = field(default_factory=list)
    cancel_requested_at: datetime | None = None
    #: Times the handler snoozed the task (:class:`~flask_pgtq.Snooze`).
    snoozes: int = 0
    #: The key of per-key limits, or ``None``.
    key: str | None = None
    #: The workflow (chain, group, chord) the task belongs to, or ``None``.
    workflow_id: int | None = None
    #: What flask_pgtq stores with the task besides its arguments (a JSON
    #: object, or ``None``): the W3C trace context of its push under
    #: ``"trace"`` when tracing (:mod:`flask_pgtq.tracing`).
    meta: dict[str, Any] | None = None
    #: Its tags (the handler's, then the push's), in that order; see
    #: :meth:`Handler.options <flask_pgtq.Handler.options>`.
    tags: list[str] = field(default_factory=list)
    #: Set by a push: ``True`` when it stored a new task, ``False`` when a
    #: unique key returned the task that already held it.
    is_new: bool | None = None
    #: ``meta`` was changed during a run (say, the tracing layer stored its
    #: span): the outcome statement writes it back.
    meta_changed: bool = field(default=False, repr=False)
    #: Why this claimed task cannot run (its stored arguments could not be
    #: decoded), or ``None``; a worker fails such a task without running it.
    problem: str | None = field(default=None, repr=False)
    _backend: Backend | None = field(default=None, repr=False)
    #: A claimed task's arguments as the JSON texts read (args, kwargs),
    #: until the worker's handler thread decodes them
    #: (``flask_pgtq.queue.decode_claimed()``); ``None`` once decoded.
    _encoded: tuple[str, str] | None = field(default=None, repr=False)

    @classmethod
    def from_row(cls, row: dict[str, Any], backend: Backend | None = None) -> Task:
        """Build a task from a ``pgtq_tasks`` row (a column-name mapping)."""
        values = {name: row[name] for name in COLUMNS if name in row}
        if "is_new" in row:
            values["is_new"] = row["is_new"]
        values["state"] = State(values["state"])
        if values.get("locked_by") is not None:
            values["locked_by"] = str(values["locked_by"])
        return cls(**values, _backend=backend)

    def __repr__(self) -> str:
        # No argument values or results: they may hold personal data.
        return (
            f"<Task {self.id} {self.name!r} queue={self.queue!r} state={self.state.value} "
            f"attempts={self.attempts}/{self.max_attempts}>"
        )

    @property
    def cancel_requested(self) -> bool:
        """Whether someone asked this task to stop (:meth:`PgTq.cancel`).
        A long handler can check ``current_task.cancel_requested`` now and
        then and return early."""
        return self.cancel_requested_at is not None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _require_backend(self) -> Backend:
        if self._backend is None:
            raise SetupError("this Task is not bound to a queue")
        return self._backend

    def refresh(self) -> Task:
        """Reload every field from the database and return ``self``."""
        fresh = self._require_backend().get(self.id)
        for name in COLUMNS:
            setattr(self, name, getattr(fresh, name))
        return self

    def run(self) -> Task:
        """Run a task claimed with :meth:`~flask_pgtq.PgTq.pop` in this thread and record
        its outcome exactly as a worker would (success, retry, failure).

        :return: ``self``, refreshed with the recorded outcome.
        """
        return self._require_backend().run_claimed(self)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the task ends and return its result.

        Woken by NOTIFY when the task finishes, with a poll every
        ``PGTQ_POLL_INTERVAL`` as the fallback; no busy loop.  The task's
        fields are refreshed.

        :param timeout: seconds to wait at most; ``None`` waits for ever.
        :raises TaskFailed: the task failed or was cancelled (``.error`` holds
            the traceback or reason).
        :raises WaitTimeout: it had not ended after *timeout* seconds.
        """
        from .exceptions import TaskFailed

        final = self._require_backend().wait(self, timeout)
        for name in COLUMNS:
            setattr(self, name, getattr(final, name))
        if self.state is not State.SUCCEEDED:
            raise TaskFailed(self, self.error)
        return self.result

    def parent_results(self) -> list[Any]:
        """The results of this task's parents (a workflow's previous steps,
        or the tasks of ``after=``), in order, read from the database.  A
        parent that did not succeed gives ``None``.
        """
        return self._require_backend().parent_results(self)

    def set_progress(self, progress: Any) -> None:
        """Record progress (any JSON value) for this running task, e.g.
        ``current_task.set_progress({"done": 40, "total": 100})``.

        It is stored on the task row at once, where :meth:`PgTq.get_task` and
        the dashboard read it.  Each call rewrites the row: report every few
        seconds, not every item.

        :raises NotClaimed: the task is not running under this attempt.
        """
        self._require_backend().set_progress(self, progress)
        self.progress = progress


#: The task columns a :class:`Task` holds, in field order.
COLUMNS = tuple(
    f.name
    for f in fields(Task)
    if not f.name.startswith("_") and f.name not in ("is_new", "problem", "meta_changed")
)
