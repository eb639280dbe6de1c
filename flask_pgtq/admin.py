"""Inspection and operator actions: what ``flask pgtq status|tasks|show|retry|
cancel|purge|workers``, the dashboard and the metrics collector use.

Part of the core: no Flask here.  Every write is one compare-and-set
statement on the task's state (see ``sql/admin.sql``), so an action never
overwrites a transition a worker made at the same moment; when the task is
no longer in a state the action applies to, :class:`~flask_pgtq.ActionNotAllowed` says
what state it is in.  Task data is read to be shown: a ``jsonb`` value
nested too deeply for Python to decode comes back as a
:class:`~flask_pgtq.formatting.Unshown` placeholder string.

Get one from the extension, inside the app context::

    admin = q.admin
    admin.status()            # per queue: counts by state, oldest waiting age
    admin.retry(task_id)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

import psycopg2.extras

from . import queries
from .config import validate_name, validate_tags
from .connection import Database
from .control import Control, Pause
from .exceptions import ActionNotAllowed, ConfigurationError, InvalidRequest, TaskNotFound
from .formatting import error_summary, jsonable, loads_for_display
from .task import State, Task
from .workflow import workflow_state

#: States a task can end in; only these can be deleted or purged.
FINAL_STATES = (State.SUCCEEDED.value, State.FAILED.value, State.CANCELLED.value)
#: Keys of :attr:`QueueStatus.counts`, in display order.  ``ready`` and
#: ``scheduled`` split the ``queued`` tasks: due now, or with a later ``run_at``;
#: ``waiting`` tasks wait for their parents (workflows).
COUNT_STATES = ("waiting", "ready", "scheduled", "running", "succeeded", "failed", "cancelled")
#: Most rows one page of :meth:`Admin.tasks` returns.
MAX_PAGE = 500
#: Range of a PostgreSQL ``bigint``: task ids and paging cursors.
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
#: The states each action of :meth:`Admin.bulk` applies to (those of the
#: one-task action): a task in another state is left alone.
BULK_ACTIONS: dict[str, tuple[str, ...]] = {
    "retry": (State.FAILED.value, State.CANCELLED.value),
    "cancel": (State.WAITING.value, State.QUEUED.value, State.RUNNING.value),
    "delete": FINAL_STATES,
}
#: Tasks one statement of :meth:`Admin.bulk` takes.
BULK_BATCH = 500
#: Longest text :meth:`Admin.tasks` searches for.
MAX_SEARCH = 200


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
    #: The task's tags.
    tags: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        row: dict[str, Any] = jsonable(asdict(self))
        return row


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
    #: Tasks matching the filters, by state (``queued``, not ``ready`` and
    #: ``scheduled``).
    counts: dict[str, int] = field(default_factory=dict)

    def actionable(self, action: str) -> int:
        """How many matching tasks :meth:`Admin.bulk` *action* would touch."""
        return sum(self.counts.get(state, 0) for state in BULK_ACTIONS[action])


@dataclass
class BulkResult:
    """What :meth:`Admin.bulk` did."""

    #: ``retry``, ``cancel`` or ``delete``.
    action: str
    #: The tasks it retried, cancelled (or asked to stop) or deleted, by id.
    ids: list[int]
    #: Of the cancelled ones: running tasks whose worker was asked to stop them.
    requested: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HandlerStats:
    """The tasks of one name that ended in a recent window."""

    name: str
    succeeded: int
    failed: int
    cancelled: int
    #: Percentiles of the run time in seconds (``finished_at -
    #: started_at``, the last attempt) of the tasks that succeeded or
    #: failed; ``None`` without one.
    p50: float | None
    p95: float | None
    p99: float | None

    @property
    def failure_rate(self) -> float | None:
        """Failed / (succeeded + failed): cancelled tasks aside; ``None``
        when none ran to an outcome."""
        ran = self.succeeded + self.failed
        return self.failed / ran if ran else None

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "failure_rate": self.failure_rate}


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
    #: When the worker got a stop request and began waiting for its running
    #: tasks (it claims no more); ``None`` while it works.
    stopping_since: datetime | None
    #: Seconds since the last heartbeat.
    heartbeat_age: float
    #: ``False`` once the lease ran out: the worker is presumed dead and its
    #: tasks are rescued by the next worker that looks.
    alive: bool
    #: Running tasks: ``id``, ``name``, ``queue``, ``attempt``,
    #: ``started_at``, ``progress``.
    tasks: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        row: dict[str, Any] = jsonable(asdict(self))
        return row


@dataclass
class WorkflowSummary:
    """A row of the workflow list: progress, no tasks."""

    id: int
    kind: str
    #: ``running``, ``succeeded``, ``failed`` or ``cancelled``.
    state: str
    total: int
    #: Tasks not yet ended.
    pending: int
    failed: int
    cancelled: int
    created_at: datetime | None
    finished_at: datetime | None
    #: Tasks by state now.
    counts: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        row: dict[str, Any] = jsonable(asdict(self))
        return row


@dataclass
class Relative:
    """A parent or a dependent of a task."""

    #: ``parent`` or ``child``.
    kind: str
    position: int
    id: int
    name: str
    queue: str
    state: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WorkflowDetail:
    """A workflow with every task and dependency, for the dashboard."""

    summary: WorkflowSummary
    tasks: list[TaskSummary]
    #: (child id, parent id) pairs.
    edges: list[tuple[int, int]]


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
    :param backend: what returned :class:`~flask_pgtq.Task` objects are bound to.
    """

    def __init__(self, db: Database, backend: Any = None) -> None:
        self.db = db
        self.backend = backend

    def _rows(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.db.connection() as conn, conn.cursor() as cur:
            # What is read here is shown to people: JSON nested too deeply
            # for Python (jsonb takes it) becomes a placeholder, not a
            # RecursionError.  Only this cursor: workers decode as before.
            psycopg2.extras.register_default_jsonb(cur, loads=loads_for_display)
            cur.execute(queries.get(name), params or {})
            if cur.description is None:
                return []
            columns = [d.name for d in cur.description]
            return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]

    # -- reading -------------------------------------------------------------

    def now(self) -> datetime:
        """The database's clock."""
        (row,) = self._rows("database_now")
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

    def tag_counts(self, tags: Sequence[str]) -> dict[str, dict[str, int]]:
        """Tasks by state (the keys of ``COUNT_STATES``) for each of
        *tags*: the metrics' ``pgtq_tagged_tasks``."""
        counts = {tag: dict.fromkeys(COUNT_STATES, 0) for tag in tags}
        if counts:
            for row in self._rows("admin_tag_counts", {"tags": list(counts)}):
                counts[row["tag"]][row["state"]] = int(row["count"])
        return counts

    def pauses(self) -> list[Pause]:
        """The pauses of queues and handlers in force."""
        return Control(self.db).pauses()

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
        tag: str | Sequence[str] | None = None,
        search: str | None = None,
        limit: int = 50,
        before: int | None = None,
        after: int | None = None,
    ) -> TaskPage:
        """A page of tasks, newest first.

        :param state: a task state; or ``"ready"`` (queued, due now) or
            ``"scheduled"`` (queued, to run later).
        :param queue: only this queue.
        :param name: only tasks of this name.
        :param tag: only tasks with this tag; given a list, only tasks with
            every tag of it.  Served by a GIN index.  The total counts the
            same tasks.
        :param search: a whole number: the task with this id; other text:
            tasks whose name contains it, or whose arguments do (as JSON
            text, case-insensitive).  The arguments are not indexed: a
            text search reads every row until it has a page, and the count
            reads every row of the other filters.
        :param limit: most rows (1 to :data:`~flask_pgtq.admin.MAX_PAGE`).
        :param before: only tasks with a smaller id (the next, older page).
        :param after: only tasks with a larger id (the previous, newer page).
        """
        filters = _filters(state, queue, name, search, tag)
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
        if before is not None and after is not None:
            raise InvalidRequest("give before or after, not both")
        for cursor, value in (("before", before), ("after", after)):
            if value is not None:
                check_bigint(value, cursor)
        rows = self._page(filters, before=before, after=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        if after is not None:
            rows.reverse()
        tasks = [_summary(row) for row in rows]
        counts = {
            row["state"]: int(row["count"]) for row in self._rows("admin_count_tasks", filters)
        }
        older = newer = None
        if tasks:
            first, last = tasks[0].id, tasks[-1].id
            if after is None:
                older = last if more else None
                newer = first if before is not None and self._page(filters, after=first) else None
            else:
                newer = first if more else None
                older = last if self._page(filters, before=last) else None
        return TaskPage(tasks, sum(counts.values()), older, newer, counts)

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
        rows = self._rows("get_task", {"id": check_bigint(task_id, "task id")})
        if not rows:
            raise TaskNotFound(f"no task with id {task_id}")
        return Task.from_row(rows[0], self.backend)

    def throughput(self, minutes: int = 60, queue: str | None = None) -> list[dict[str, Any]]:
        """Tasks that ended in each of the last *minutes* minutes, oldest first:
        ``minute`` (a datetime), ``succeeded``, ``failed``, ``cancelled``."""
        if not 1 <= minutes <= 24 * 60:
            raise InvalidRequest("minutes must be between 1 and 1440")
        if queue is not None:
            validate_name(queue, "queue")
        rows = self._rows("admin_throughput", {"minutes": minutes, "queue": queue})
        for row in rows:
            for key in FINAL_STATES:
                row[key] = int(row[key])
        return rows

    def handler_stats(self, seconds: int = 3600) -> list[HandlerStats]:
        """Per task name, by name: the tasks that ended in the last
        *seconds* (outcomes, run-time percentiles)."""
        if not 1 <= seconds <= 7 * 24 * 3600:
            raise InvalidRequest("seconds must be between 1 and 604800")
        stats = []
        for row in self._rows("admin_handler_stats", {"seconds": seconds}):
            p50, p95, p99 = row.pop("durations") or (None, None, None)
            stats.append(HandlerStats(**row, p50=p50, p95=p95, p99=p99))
        return stats

    # -- acting ----------------------------------------------------------------

    def retry(self, task_id: int) -> Task:
        """Put a failed or cancelled task back in the queue, to run now.

        Its ``attempts`` start again from 0, so it gets ``max_attempts``
        fresh attempts; its ``history`` keeps the earlier attempts and a
        ``manual_retry`` entry.

        :raises TaskNotFound: no such task.
        :raises ActionNotAllowed: the task is queued, running or succeeded.
        """
        if not self._retry([check_bigint(task_id, "task id")]):
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
            if state not in BULK_ACTIONS["retry"]:
                raise InvalidRequest(
                    f"only failed or cancelled tasks can be retried, not {state!r}"
                )
        ids = [i for s in states for i in self.bulk("retry", state=s, queue=queue).ids]
        return sorted(ids)

    def bulk(
        self,
        action: str,
        *,
        state: str | None = None,
        queue: str | None = None,
        name: str | None = None,
        search: str | None = None,
        tag: str | Sequence[str] | None = None,
        batch: int = BULK_BATCH,
    ) -> BulkResult:
        """Retry, cancel or delete every task that matches the filters of
        :meth:`tasks`, of those in a state *action* applies to (see
        :data:`BULK_ACTIONS`), as :meth:`retry`, :meth:`cancel` and
        :meth:`delete` do to one.

        Works through the matching tasks newest first, *batch* at a time,
        one statement to find a batch and one to act on it (compare-and-set
        on the state, as for one task).  Tasks pushed after it started are
        left alone.

        :raises InvalidRequest: an unknown action, or a *state* filter it
            does not apply to (e.g. ``retry`` and ``succeeded``).
        """
        if action not in BULK_ACTIONS:
            raise InvalidRequest(f"unknown action {action!r}; known: {', '.join(BULK_ACTIONS)}")
        filters = _filters(state, queue, name, search, tag)
        applies = BULK_ACTIONS[action]
        filters["states"] = [s for s in applies if filters["state"] in (None, s)]
        if not filters["states"]:
            raise InvalidRequest(
                f"{action} applies to {', '.join(applies)} tasks, not to {state} ones"
            )
        result = BulkResult(action, [])
        before = None
        while True:
            rows = self._page(filters, before=before, limit=batch)
            if not rows:
                break
            ids = [row["id"] for row in rows]
            if action == "retry":
                result.ids += self._retry(ids)
            elif action == "delete":
                result.ids += [row["id"] for row in self._rows("admin_delete_tasks", {"ids": ids})]
            else:
                changed = self._cancel(None, None, ids)
                result.ids += [row["id"] for row in changed]
                result.requested += sum(row["state"] == State.RUNNING.value for row in changed)
            if len(rows) < batch:
                break
            before = ids[-1]
        result.ids.sort()
        return result

    def _retry(self, ids: list[int]) -> list[int]:
        (row,) = self._rows("admin_retry_tasks", {"ids": ids})
        return list(row["ids"])

    def cancel(self, task_id: int) -> CancelResult:
        """Cancel a task.

        A queued task becomes ``cancelled`` at once.  A running task gets
        ``cancel_requested_at`` set; the worker running it acts on that
        (its state changes when the worker records the outcome).

        :raises TaskNotFound: no such task.
        :raises ActionNotAllowed: the task has already ended.
        """
        rows = self._cancel(check_bigint(task_id, "task id"), None)
        if not rows:
            task = self.get(task_id)
            raise ActionNotAllowed(
                f"task {task_id} is {task.state.value}: only waiting, queued or running "
                "tasks can be cancelled"
            )
        task = Task.from_row(rows[0], self.backend)
        return CancelResult(task, cancelled=task.state is State.CANCELLED)

    def _cancel(
        self, task_id: int | None, workflow_id: int | None, ids: list[int] | None = None
    ) -> list[dict[str, Any]]:
        # The queue core's statement, so that dependents are released and
        # finished workflows announced as for any other cancel.
        store = getattr(self.backend, "store", None)
        reason = "cancelled by an operator"
        if store is not None:
            rows: list[dict[str, Any]] = store.cancel_rows(task_id, workflow_id, reason, ids)
            return rows
        return self._rows(
            "cancel_task",
            {"id": task_id, "ids": ids, "workflow_id": workflow_id, "reason": reason},
        )

    def cancel_workflow(self, workflow_id: int) -> tuple[int, int]:
        """Cancel every waiting or queued task of a workflow and ask its
        running ones to stop.

        :return: how many were cancelled, and how many asked to stop.
        :raises TaskNotFound: no such workflow.
        """
        self.workflow(workflow_id)
        rows = self._cancel(None, check_bigint(workflow_id, "workflow id"))
        cancelled = sum(1 for row in rows if row["state"] == State.CANCELLED.value)
        return cancelled, len(rows) - cancelled

    # -- workflows ------------------------------------------------------------

    def workflows(self, *, state: str | None = None, limit: int = 50) -> list[WorkflowSummary]:
        """Workflows, newest first, with their progress.

        :param state: ``running`` or ``finished`` (any final state).
        """
        if state not in (None, "running", "finished"):
            raise InvalidRequest(f"state must be running or finished, not {state!r}")
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}, not {limit}")
        rows = self._rows("list_workflows", {"state": state, "limit": limit})
        return [_workflow_summary(row) for row in rows]

    def workflow(self, workflow_id: int) -> WorkflowDetail:
        """One workflow with its tasks (in push order) and dependencies.

        :raises TaskNotFound: no such workflow.
        """
        params = {"id": check_bigint(workflow_id, "workflow id")}
        rows = self._rows("get_workflow", params)
        if not rows:
            raise TaskNotFound(f"no workflow with id {workflow_id}")
        rows[0]["counts"] = {}
        tasks = []
        for task in self._rows("workflow_tasks", params):
            rows[0]["counts"][task["state"]] = rows[0]["counts"].get(task["state"], 0) + 1
            tasks.append(_summary(_summary_row(task)))
        edges = [(r["child_id"], r["parent_id"]) for r in self._rows("workflow_edges", params)]
        return WorkflowDetail(_workflow_summary(rows[0]), tasks, edges)

    def relatives(self, task_id: int) -> list[Relative]:
        """A task's parents (in order) and dependents."""
        rows = self._rows("task_relatives", {"id": check_bigint(task_id, "task id")})
        return [Relative(**row) for row in rows]

    def delete(self, task_id: int) -> None:
        """Delete a task that has ended (succeeded, failed or cancelled).

        :raises TaskNotFound: no such task.
        :raises ActionNotAllowed: the task has not ended; cancel it first.
        """
        if not self._rows("admin_delete_tasks", {"ids": [check_bigint(task_id, "task id")]}):
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
            raise InvalidRequest("give at least one state to purge")
        for state in states:
            if state not in FINAL_STATES:
                raise InvalidRequest(
                    f"only finished tasks can be purged ({', '.join(FINAL_STATES)}), not {state!r}"
                )
        if not math.isfinite(older_than) or older_than < 0:
            raise InvalidRequest("older_than must be a number of seconds >= 0")
        if queue is not None:
            validate_name(queue, "queue")
        params = {"states": states, "older_than": older_than, "queue": queue, "batch": batch}
        if dry_run:
            (row,) = self._rows("admin_count_purgeable", params)
            return int(row["count"])
        total = 0
        while True:
            deleted = len(self._rows("prune_tasks", {**params, "keep": older_than}))
            total += deleted
            if deleted < batch:
                return total


# -- helpers shared by the CLI and the dashboard ---------------------------------------


#: States :meth:`Admin.tasks` filters on: the task states, plus ``ready``
#: and ``scheduled`` (the two kinds of ``queued``).
FILTER_STATES = ("waiting", "queued", "ready", "scheduled", "running", *FINAL_STATES)


def check_bigint(value: int, what: str) -> int:
    """*value*, an id or paging cursor, if PostgreSQL can compare it with a
    ``bigint`` column.

    :raises ValueError: naming *what* and the range (the database would
        answer ``bigint out of range``).
    """
    if not BIGINT_MIN <= value <= BIGINT_MAX:
        raise InvalidRequest(
            f"{what} {value} is out of range: it must be between {BIGINT_MIN} and {BIGINT_MAX}"
        )
    return value


def _filters(
    state: str | None,
    queue: str | None,
    name: str | None,
    search: str | None = None,
    tag: str | Sequence[str] | None = None,
) -> dict[str, Any]:
    """The parameters of ``admin_list_tasks`` and ``admin_count_tasks``."""
    due = None
    if state is not None:
        if state not in FILTER_STATES:
            raise InvalidRequest(f"unknown state {state!r}; known: {', '.join(FILTER_STATES)}")
        if state in ("ready", "scheduled"):
            due = state == "ready"
            state = State.QUEUED.value
    if queue is not None:
        validate_name(queue, "queue")
    if name is not None:
        validate_name(name, "task name")
    tags = None
    if tag is not None:
        try:
            tags = list(validate_tags([tag] if isinstance(tag, str) else list(tag), "tag filter"))
        except ConfigurationError as exc:
            raise InvalidRequest(str(exc)) from None
    search_id = pattern = None
    search = (search or "").strip() or None
    if search is not None:
        if len(search) > MAX_SEARCH:
            raise InvalidRequest(f"search at most {MAX_SEARCH} characters, not {len(search)}")
        if search.isascii() and search.isdigit() and int(search) <= BIGINT_MAX:
            search_id = int(search)
        else:
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            pattern = f"%{escaped}%"
    return {
        "state": state,
        "states": None,
        "due": due,
        "queue": queue,
        "name": name,
        "search_id": search_id,
        "pattern": pattern,
        "tags": tags or None,
    }


def _summary_row(task: dict[str, Any]) -> dict[str, Any]:
    """A whole task row cut to what a :class:`TaskSummary` holds."""
    keep = {f.name for f in fields(TaskSummary)} - {"error_line", "scheduled"}
    row = {k: v for k, v in task.items() if k in keep}
    row["error_tail"] = (task["error"] or "")[-1500:] or None
    row["scheduled"] = False
    return row


def _workflow_summary(row: dict[str, Any]) -> WorkflowSummary:
    return WorkflowSummary(
        id=row["id"],
        kind=row["kind"],
        state=workflow_state(row["finished_at"], row["failed"], row["cancelled"]),
        total=row["total"],
        pending=row["pending"],
        failed=row["failed"],
        cancelled=row["cancelled"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        counts={k: int(v) for k, v in (row.get("counts") or {}).items()},
    )


def _summary(row: dict[str, Any]) -> TaskSummary:
    tail = row.pop("error_tail")
    row["error_line"] = error_summary(tail)
    row["scheduled"] = bool(row["scheduled"]) and row["state"] == State.QUEUED.value
    return TaskSummary(**row)
