"""Inspection and operator actions: what ``flask pgtq status|tasks|show|retry|
cancel|purge|workers``, the dashboard and the metrics collector use.

Part of the core: no Flask here.  Every write is one compare-and-set
statement on the task's state (see ``sql/admin.sql``), so an action never
overwrites a transition a worker made at the same moment; when the task is
no longer in a state the action applies to, :class:`ActionNotAllowed` says
what state it is in.

Get one from the extension, inside the app context::

    admin = q.admin
    admin.status()            # per queue: counts by state, oldest waiting age
    admin.retry(task_id)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import queries
from .config import validate_name
from .connection import Database
from .exceptions import PgTqError, TaskNotFound
from .task import State, Task

#: States a task can end in; only these can be deleted or purged.
FINAL_STATES = (State.SUCCEEDED.value, State.FAILED.value, State.CANCELLED.value)
#: Keys of :attr:`QueueStatus.counts`, in display order.  ``ready`` and
#: ``scheduled`` split the ``queued`` tasks: due now, or with a later ``run_at``.
COUNT_STATES = ("ready", "scheduled", "running", "succeeded", "failed", "cancelled")
#: Most rows one page of :meth:`Admin.tasks` returns.
MAX_PAGE = 500


class ActionNotAllowed(PgTqError, ValueError):
    """The task is not in a state this action applies to (say, retrying a
    task that succeeded).  Nothing was changed."""


@dataclass
class QueueStatus:
    """One queue at one moment."""

    queue: str
    #: Tasks by state; see :data:`COUNT_STATES`.
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_STATES, 0))
    #: Seconds the oldest ready task has been waiting, or ``None``.
    oldest_wait: float | None = None
    #: Live workers serving this queue.
    workers: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TaskSummary:
    """A row of a task list: no arguments or result (they may be large)."""

    id: int
    name: str
    queue: str
    state: str
    priority: int
    attempts: int
    max_attempts: int
    run_at: datetime | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    #: What the last error was, in one line (for a traceback: the exception).
    error_line: str | None
    #: Queued with a ``run_at`` in the future.
    scheduled: bool = False

    def as_json(self) -> dict[str, Any]:
        return jsonable(asdict(self))


@dataclass
class TaskPage:
    """One page of tasks, newest first, with the ids to ask for the next ones."""

    tasks: list[TaskSummary]
    #: Tasks matching the filters, on every page.
    total: int
    #: Pass as ``before=`` for the next (older) page; ``None`` on the last.
    older: int | None
    #: Pass as ``after=`` for the previous (newer) page; ``None`` on the first.
    newer: int | None


@dataclass
class WorkerInfo:
    """A registered worker (or a process that claimed with ``pop()``)."""

    id: str
    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime
    lease_expires_at: datetime
    #: Seconds since the last heartbeat.
    heartbeat_age: float
    #: ``False`` once the lease ran out: the worker is presumed dead and its
    #: tasks are rescued by the next worker that looks.
    alive: bool
    #: Running tasks: ``id``, ``name``, ``queue``, ``attempt``,
    #: ``started_at``, ``progress``.
    tasks: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return jsonable(asdict(self))


@dataclass
class CancelResult:
    """What :meth:`Admin.cancel` did."""

    task: Task
    #: ``True``: the task was queued and is now cancelled.  ``False``: it is
    #: running, and its worker was asked to stop it.
    cancelled: bool


class Admin:
    """Read and steer the tasks of one database.

    :param db: the connection pool.
    :param backend: what returned :class:`Task` objects are bound to.
    """

    def __init__(self, db: Database, backend: Any = None) -> None:
        self.db = db
        self.backend = backend

    def _rows(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.db.connection() as conn, conn.cursor() as cur:
            cur.execute(queries.get(name), params or {})
            if cur.description is None:
                return []
            columns = [d.name for d in cur.description]
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]

    # -- reading -------------------------------------------------------------

    def now(self) -> datetime:
        """The database's clock."""
        (row,) = self._rows("admin_now")
        return row["now"]  # type: ignore[no-any-return]

    def status(self) -> list[QueueStatus]:
        """Every queue that has tasks or live workers, by name."""
        by_queue: dict[str, QueueStatus] = {}
        for row in self._rows("admin_counts"):
            status = by_queue.setdefault(row["queue"], QueueStatus(row["queue"]))
            status.counts[row["state"]] = int(row["count"])
            if row["oldest_wait"] is not None:
                status.oldest_wait = max(0.0, float(row["oldest_wait"]))
        for worker in self.workers():
            if not worker.alive:
                continue
            for name in worker.queues:
                by_queue.setdefault(name, QueueStatus(name)).workers += 1
        return [by_queue[name] for name in sorted(by_queue)]

    def workers(self) -> list[WorkerInfo]:
        """Registered workers, oldest first, with the tasks each runs now."""
        workers = []
        for row in self._rows("admin_live_workers"):
            row["heartbeat_age"] = max(0.0, float(row["heartbeat_age"]))
            row["queues"] = list(row["queues"])
            workers.append(WorkerInfo(**row))
        return workers

    def tasks(
        self,
        *,
        state: str | None = None,
        queue: str | None = None,
        name: str | None = None,
        limit: int = 50,
        before: int | None = None,
        after: int | None = None,
    ) -> TaskPage:
        """A page of tasks, newest first.

        :param state: a task state; or ``"ready"`` (queued, due now) or
            ``"scheduled"`` (queued, to run later).
        :param queue: only this queue.
        :param name: only tasks of this name.
        :param limit: most rows (1 to :data:`MAX_PAGE`).
        :param before: only tasks with a smaller id (the next, older page).
        :param after: only tasks with a larger id (the previous, newer page).
        """
        filters = _filters(state, queue, name)
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
        if before is not None and after is not None:
            raise ValueError("give before or after, not both")
        rows = self._page(filters, before=before, after=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        if after is not None:
            rows.reverse()
        tasks = [_summary(row) for row in rows]
        (count,) = self._rows("admin_count_tasks", filters)
        older = newer = None
        if tasks:
            first, last = tasks[0].id, tasks[-1].id
            if after is None:
                older = last if more else None
                newer = first if before is not None and self._page(filters, after=first) else None
            else:
                newer = first if more else None
                older = last if self._page(filters, before=last) else None
        return TaskPage(tasks, int(count["count"]), older, newer)

    def _page(
        self,
        filters: dict[str, Any],
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 1,
    ) -> list[dict[str, Any]]:
        params = {**filters, "before": before, "after": after, "limit": limit}
        return self._rows("admin_list_tasks", params)

    def get(self, task_id: int) -> Task:
        """The whole task, fresh from the database.

        :raises TaskNotFound: no such task.
        """
        rows = self._rows("get_task", {"id": task_id})
        if not rows:
            raise TaskNotFound(f"no task with id {task_id}")
        return Task.from_row(rows[0], self.backend)

    def throughput(self, minutes: int = 60, queue: str | None = None) -> list[dict[str, Any]]:
        """Tasks that ended in each of the last *minutes* minutes, oldest first:
        ``minute`` (a datetime), ``succeeded``, ``failed``, ``cancelled``."""
        if not 1 <= minutes <= 24 * 60:
            raise ValueError("minutes must be between 1 and 1440")
        if queue is not None:
            validate_name(queue, "queue")
        rows = self._rows("admin_throughput", {"minutes": minutes, "queue": queue})
        for row in rows:
            for key in FINAL_STATES:
                row[key] = int(row[key])
        return rows

    # -- acting ----------------------------------------------------------------

    def retry(self, task_id: int) -> Task:
        """Put a failed or cancelled task back in the queue, to run now.

        Its ``attempts`` start again from 0, so it gets ``max_attempts``
        fresh attempts; its ``history`` keeps the earlier attempts and a
        ``manual_retry`` entry.

        :raises TaskNotFound: no such task.
        :raises ActionNotAllowed: the task is queued, running or succeeded.
        """
        (row,) = self._rows(
            "admin_retry_tasks", {"ids": [task_id], "states": None, "queue": None}
        )
        if not row["ids"]:
            task = self.get(task_id)
            raise ActionNotAllowed(
                f"task {task_id} is {task.state.value}: only failed or cancelled tasks "
                "can be retried"
            )
        return self.get(task_id)

    def retry_all(
        self, *, states: Sequence[str] = ("failed",), queue: str | None = None
    ) -> list[int]:
        """Retry every task in *states* (``failed``, ``cancelled``), optionally
        of one queue, like :meth:`retry`.  Returns their ids."""
        states = list(states)
        for state in states:
            if state not in ("failed", "cancelled"):
                raise ValueError(f"only failed or cancelled tasks can be retried, not {state!r}")
        if queue is not None:
            validate_name(queue, "queue")
        (row,) = self._rows("admin_retry_tasks", {"ids": None, "states": states, "queue": queue})
        return list(row["ids"])

    def cancel(self, task_id: int) -> CancelResult:
        """Cancel a task.

        A queued task becomes ``cancelled`` at once.  A running task gets
        ``cancel_requested_at`` set; the worker running it acts on that
        (its state changes when the worker records the outcome).

        :raises TaskNotFound: no such task.
        :raises ActionNotAllowed: the task has already ended.
        """
        rows = self._rows("admin_cancel_task", {"id": task_id})
        if not rows:
            task = self.get(task_id)
            raise ActionNotAllowed(
                f"task {task_id} is {task.state.value}: only queued or running tasks can "
                "be cancelled"
            )
        task = Task.from_row(rows[0], self.backend)
        return CancelResult(task, cancelled=task.state is State.CANCELLED)

    def delete(self, task_id: int) -> None:
        """Delete a task that has ended (succeeded, failed or cancelled).

        :raises TaskNotFound: no such task.
        :raises ActionNotAllowed: the task has not ended; cancel it first.
        """
        if not self._rows("admin_delete_task", {"id": task_id}):
            task = self.get(task_id)
            raise ActionNotAllowed(
                f"task {task_id} is {task.state.value}: only finished tasks can be "
                "deleted (cancel it first)"
            )

    def purge(
        self,
        *,
        states: Iterable[str],
        older_than: float,
        queue: str | None = None,
        dry_run: bool = False,
        batch: int = 5000,
    ) -> int:
        """Delete finished tasks in *states* that ended more than
        *older_than* seconds ago, in batches.  Returns how many (with
        ``dry_run``: how many would be).

        :raises ValueError: a state that is not final, or a negative age.
        """
        states = sorted(set(states))
        if not states:
            raise ValueError("give at least one state to purge")
        for state in states:
            if state not in FINAL_STATES:
                raise ValueError(
                    f"only finished tasks can be purged ({', '.join(FINAL_STATES)}), "
                    f"not {state!r}"
                )
        if not math.isfinite(older_than) or older_than < 0:
            raise ValueError("older_than must be a number of seconds >= 0")
        if queue is not None:
            validate_name(queue, "queue")
        params = {"states": states, "older_than": older_than, "queue": queue, "batch": batch}
        if dry_run:
            (row,) = self._rows("admin_count_purgeable", params)
            return int(row["count"])
        total = 0
        while True:
            deleted = len(self._rows("admin_purge_tasks", params))
            total += deleted
            if deleted < batch:
                return total


# -- helpers shared by the CLI and the dashboard ---------------------------------------


#: States :meth:`Admin.tasks` filters on: the task states, plus ``ready``
#: and ``scheduled`` (the two kinds of ``queued``).
FILTER_STATES = ("queued", "ready", "scheduled", "running", *FINAL_STATES)


def _filters(state: str | None, queue: str | None, name: str | None) -> dict[str, Any]:
    due = None
    if state is not None:
        if state not in FILTER_STATES:
            raise ValueError(f"unknown state {state!r}; known: {', '.join(FILTER_STATES)}")
        if state in ("ready", "scheduled"):
            due = state == "ready"
            state = State.QUEUED.value
    if queue is not None:
        validate_name(queue, "queue")
    if name is not None:
        validate_name(name, "task name")
    return {"state": state, "due": due, "queue": queue, "name": name}


def _summary(row: dict[str, Any]) -> TaskSummary:
    tail = row.pop("error_tail")
    row["error_line"] = error_summary(tail)
    row["scheduled"] = bool(row["scheduled"]) and row["state"] == State.QUEUED.value
    return TaskSummary(**row)


_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(: .*)?")


def error_summary(text: str | None) -> str | None:
    """One line that says what went wrong: for a traceback, the exception
    line (``ValueError: nope``, even when more lines follow it); otherwise
    the last non-blank line."""
    if not text:
        return None
    lines = text.rstrip().splitlines()
    frames = [
        i
        for i, line in enumerate(lines)
        if line.startswith(("Traceback (most recent", '  File "'))
    ]
    if frames:
        for line in lines[frames[-1] + 1 :]:
            if line and not line[0].isspace() and _EXCEPTION_LINE.fullmatch(line):
                return line.strip()
    stripped = [line.strip() for line in lines if line.strip()]
    return stripped[-1] if stripped else None


def jsonable(value: Any) -> Any:
    """*value* with datetimes as ISO 8601 strings, for ``json.dumps``."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def task_as_json(task: Task) -> dict[str, Any]:
    """Every column of *task*, JSON-ready."""
    from .task import _COLUMNS

    return jsonable({name: _plain(getattr(task, name)) for name in _COLUMNS})


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, State) else value


#: How history entries' ``state`` reads for people: an attempt recorded as
#: ``queued`` failed and was retried; ``lost`` was rescued after its worker
#: died; ``manual_retry`` marks :meth:`Admin.retry`.
HISTORY_LABELS = {"queued": "retried", "manual_retry": "manual retry", "lost": "lost"}


def history_label(state: str | None) -> str:
    """What a history entry's *state* means, in a word or two."""
    return HISTORY_LABELS.get(state or "", state or "-")


def format_time(value: datetime | str | None) -> str:
    """``2024-05-01 12:03:04Z`` (UTC), or ``-``.  Takes a datetime or an ISO
    8601 string (as the timestamps in ``history`` are)."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        moment = value
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_age(seconds: float | None) -> str:
    """A short human age: ``"45s"``, ``"3m 12s"``, ``"2h 5m"``, ``"3d 4h"``."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"15m"``, ``"12h"``, ``"7d"``, ``"2w"``
    or a sum such as ``"1h30m"``.

    :raises ValueError: anything else.
    """
    pos, total = 0, 0.0
    text = text.strip()
    if not text:
        raise ValueError("empty duration")
    while pos < len(text):
        match = _DURATION.match(text, pos)
        if match is None or match.end() == pos:
            raise ValueError(
                f"not a duration: {text!r} (use seconds or e.g. 90s, 15m, 12h, 7d, 2w)"
            )
        total += float(match.group(1)) * _UNITS[match.group(2).lower()]
        pos = match.end()
    return total


def dumps(value: Any) -> str:
    """Pretty JSON for people (arguments, results, progress)."""
    return json.dumps(jsonable(value), indent=2, ensure_ascii=False, sort_keys=False)
