"""The queue core: every state change of a task, as one named SQL statement.

Knows nothing about Flask or handlers.  Each method borrows a pooled
connection for one statement (autocommit: one round trip, committed before it
returns) and gives back :class:`~flask_pgtq.task.Task` objects.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from . import queries
from .config import Config
from .connection import Database, translated_errors
from .exceptions import DatabaseError, TaskNotFound, WaitTimeout
from .task import State, Task
from .values import Insert, Limit, Outcome

T = TypeVar("T")

#: Statements run often enough to be prepared once per connection (server
#: side), saving their parsing and planning: the push and the worker's round.
PREPARED = frozenset({"push_task", "finish_and_claim"})

#: Sent before each statement on a pooled connection, in the same implicit
#: transaction: no JIT compilation.  Estimates grow with the table, and past
#: jit_above_cost PostgreSQL compiled the worker's round on every run: 80 to
#: 150 ms of a 13 ms round with 2,000,000 tasks in the table.
NO_JIT = "SET LOCAL jit = off; "

#: The worker's statements, whose every read is by an index (task ids, the
#: claim's order, a worker's tasks): sent after :data:`NO_JIT` with
#: :data:`INDEX_SCANS_ONLY`.  A plan kept while the table looked empty
#: (a prepared statement's generic plan, made before autovacuum first
#: analyzed a filling table) read the whole table for each outcome of a
#: round: a 2-process drain ran at 700 tasks/s instead of 35,000.
BY_INDEX = frozenset({"finish_and_claim", "rescue_tasks", "release_tasks"})

#: Sequential and bitmap scans priced out.  Behind a backlog of one
#: handler's tasks, "name <> ALL(the paused handlers)" looks false for
#: nearly every row (one name; the array unknown when planning), so the
#: claim expected one task and read every queued one with a bitmap scan,
#: then sorted them on disk, each round: a 100,000-task backlog drained at
#: 7,700 tasks/s instead of 29,000.  A bitmap scan has no order to stop at.
INDEX_SCANS_ONLY = "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; "


#: Most tasks a claim under per-key limits takes ahead of the free threads
#: (of the worker's prefetch).  Such a claim ranks the front of the
#: handler's ready tasks by key, a front that grows with what it is asked
#: for, and walks every key when the front holds too few keys with room;
#: tasks claimed ahead also hold their key's slots while they wait.  With
#: 1,000 ahead (PGTQ_PREFETCH's default), a drain over 1,000 keys at
#: key_concurrency=1 ran at 51-58 % of a plain drain; at most 500, 59-64 %
#: (bench/keys.py).
KEYED_AHEAD = 500


#: Statements that read no table (they insert the rows they are given):
#: never costly enough to be compiled, so sent without :data:`NO_JIT`,
#: whose round of parsing was ~5 % of a single push.
READ_NOTHING = frozenset({"push_task", "push_tasks"})


def sent(name: str, text: str) -> str:
    """What goes to the server for statement *name* (*text*: its SQL, or
    the ``EXECUTE`` of its prepared form) on a pooled connection."""
    if name in BY_INDEX:
        return NO_JIT + INDEX_SCANS_ONLY + text
    if name in READ_NOTHING:
        return text
    return NO_JIT + text


def _fetch(cur: Any) -> list[dict[str, Any]]:
    if cur.description is None:
        return []
    columns = [d.name for d in cur.description]
    return [dict(zip(columns, row, strict=True)) for row in cur.fetchall()]


def _tuples(cur: Any) -> list[tuple[Any, ...]]:
    return cur.fetchall() if cur.description is not None else []


@functools.cache
def _positions(columns: tuple[str, ...]) -> dict[str, int]:
    return {name: i for i, name in enumerate(columns)}


#: The columns of a claimed task's row (finish_and_claim, claim_limited_tasks).
CLAIMED_COLUMNS = (
    "id", "name", "args", "kwargs", "priority", "attempts", "max_attempts", "run_at",
    "created_at", "cancel_requested_at", "snoozes", "workflow_id", "meta", "tags", "key",
)  # fmt: skip


def _indexed(cur: Any) -> tuple[dict[str, int], list[tuple[Any, ...]]]:
    """Rows as plain tuples, with each column's position by name (cheaper
    than dicts or named tuples on the worker's hot path)."""
    if cur.description is None:
        return {}, []
    return _positions(tuple(d.name for d in cur.description)), cur.fetchall()


def _decode_arguments(args: str, kwargs: str) -> tuple[Any, Any]:
    """A claimed task's arguments from their JSON text.  Arguments this
    process cannot decode (nested too deeply for its stack, stored by other
    means than a push) come back as ``None`` and ``{"problem": why}``: the
    task is then failed without running, instead of ending the worker."""
    try:
        return json.loads(args), ({} if kwargs == "{}" else json.loads(kwargs))
    except (ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        return None, {
            "problem": f"the task's stored arguments ({len(args) + len(kwargs)} bytes of "
            f"JSON) cannot be decoded: {why}; failed without running the handler"
        }


def decode_claimed(task: Task) -> None:
    """Decode a claimed task's arguments, read as JSON text (a worker does
    it in the handler thread that runs the task, not in the thread that
    sends the rounds).  Undecodable ones set :attr:`~flask_pgtq.Task.problem`:
    the task is then failed without running.  Idempotent."""
    if task._encoded is None:
        return
    (args, kwargs), task._encoded = _decode_arguments(*task._encoded), None
    if args is None:
        task.args, task.problem = [], kwargs["problem"]
    else:
        task.args, task.kwargs = args, kwargs


def new_owner_id() -> str:
    """A fresh id for a worker (or a process that pops)."""
    return str(uuid.uuid4())


class TaskStore:
    """Task state transitions against one database.

    :param config: validated settings.
    :param db: the connection pool.
    :param backend: what tasks read from this store are bound to, so that
        :meth:`~flask_pgtq.Task.refresh` and :meth:`~flask_pgtq.Task.run` work.
    """

    def __init__(self, config: Config, db: Database, backend: Any = None) -> None:
        self.config = config
        self.db = db
        self.backend = backend
        #: Called with the ids of the workflows a statement of this store
        #: finished (its last task ended), once per workflow; set by the
        #: runner to send :data:`~flask_pgtq.signals.workflow_finished`.
        self.on_workflows_finished: Callable[[list[int]], None] | None = None

    def _workflows_finished(self, ids: Sequence[int] | None) -> None:
        if ids and self.on_workflows_finished is not None:
            self.on_workflows_finished(list(ids))

    def _rows(self, name: str, params: dict[str, Any], conn: Any = None) -> list[dict[str, Any]]:
        """Run one named statement; on a pooled connection (committed at
        once) or, when given, on the caller's *conn* (in its transaction)."""
        rows: list[dict[str, Any]] = self._execute(name, params, conn, _fetch)
        return rows

    def _execute(self, name: str, params: dict[str, Any], conn: Any, fetch: Any) -> Any:
        if conn is not None:
            with translated_errors(self.db), contextlib.closing(conn.cursor()) as cur:
                cur.execute(queries.get(name), params)
                return fetch(cur)
        with self.db.connection() as pooled, pooled.cursor() as cur:
            if name in PREPARED and self.config.prepared_statements:
                prepare, execute = queries.prepared(name)
                if name not in pooled.prepared:
                    cur.execute(prepare)
                    pooled.prepared.add(name)
                # On any error the pool discards the connection, with what
                # it prepared: no borrower inherits a half-known state.
                cur.execute(sent(name, execute), params)
            else:
                cur.execute(sent(name, queries.get(name)), params)
            return fetch(cur)

    def _tasks(self, name: str, params: dict[str, Any], conn: Any = None) -> list[Task]:
        return [Task.from_row(row, self.backend) for row in self._rows(name, params, conn)]

    # -- producing ---------------------------------------------------------

    def push(
        self,
        spec: Insert,
        args_json: str,
        kwargs_json: str,
        conn: Any = None,
        meta_json: str | None = None,
    ) -> Task:
        """Insert one task whose arguments are already validated JSON text.

        With ``spec.unique_key``, return the task holding the key instead of
        inserting, if there is one (``Task.is_new`` says which).

        :param conn: a DB-API connection whose open transaction the insert
            joins (nothing is committed here); default: a pooled connection,
            committed at once.
        :param meta_json: the task's :attr:`~flask_pgtq.Task.meta` as JSON
            text, or ``None``.
        """
        params = {**spec.params(), "args": args_json, "kwargs": kwargs_json, "meta": meta_json}
        if spec.unique_key is not None:
            return self._push_unique(params, conn)
        # Only the columns the database decides come back; the rest we sent.
        ((task_id, run_at, created_at, _),) = self._execute("push_task", params, conn, _tuples)
        return Task(
            task_id,
            spec.name,
            spec.queue,
            json.loads(args_json),
            {} if kwargs_json == "{}" else json.loads(kwargs_json),
            State.QUEUED,
            spec.priority,
            0,
            spec.max_attempts,
            run_at,
            created_at,
            key=spec.key,
            meta=None if meta_json is None else json.loads(meta_json),
            tags=list(spec.tags),
            _backend=self.backend,
        )

    def _push_unique(self, params: dict[str, Any], conn: Any) -> Task:
        # A concurrent holder may commit (or roll back) while we wait on the
        # unique index; a new statement then sees what it left.
        for _ in range(5):
            tasks = self._tasks("push_unique_task", params, conn)
            if not tasks and not params["replace"]:
                # (A replacing push asks again instead: it must update the
                # holder it waited for, not just return it.)
                tasks = self._tasks("find_unique_task", params, conn)
            if tasks:
                task = tasks[0]
                task.is_new = bool(task.is_new)
                return task
        raise DatabaseError(f"could not push unique key {params['unique_key']!r}: contended")

    def push_many(
        self,
        spec: Insert,
        args_json: str,
        kwargs_json: str,
        conn: Any = None,
        meta_json: str | None = None,
    ) -> list[int]:
        """Insert many tasks of one handler in one statement; return their
        ids in input order.

        :param args_json: a JSON array with each task's positional arguments
            (validated, e.g. by ``flask_pgtq.codec.encode_batch()``).
        :param kwargs_json: a JSON array with each task's keyword arguments,
            or ``[]`` when no task has any.
        :param meta_json: the :attr:`~flask_pgtq.Task.meta` of every task, as
            JSON text, or ``None``.
        """
        if args_json == "[]":
            return []
        params = {**spec.params(), "args": args_json, "kwargs": kwargs_json, "meta": meta_json}
        rows = self._rows("push_tasks", params, conn)
        return list(rows[0]["ids"])

    def set_progress(self, task: Task, progress_json: str) -> bool:
        """Store a running task's progress; ``False`` if the attempt no
        longer holds the task (lease lost)."""
        return bool(
            self._rows(
                "set_progress",
                {
                    "id": task.id,
                    "attempt": task.attempts,
                    "owner": task.locked_by,
                    "progress": progress_json,
                },
            )
        )

    def wait(self, task_id: int, timeout: float | None) -> Task:
        """Block until the task reaches a final state and return it.

        Woken by NOTIFY on :data:`~flask_pgtq.queries.FINISHED` (one dedicated connection for the
        wait), with a poll every ``poll_interval`` as the fallback.

        :raises WaitTimeout: not final after *timeout* seconds.
        """

        def final() -> Task | None:
            task = self.get(task_id)
            return task if task.state.is_final else None

        return self.wait_until(final, {task_id}, timeout, f"task {task_id} has not ended")

    def wait_until(
        self,
        check: Callable[[], T | None],
        ids: set[int] | None,
        timeout: float | None,
        what: str,
    ) -> T:
        """Block until *check* returns something other than ``None``, and
        return that.  *check* runs at the start, when a task of *ids* ends
        (any task, for ``None``) and every ``poll_interval``.

        :raises WaitTimeout: *what*, after *timeout* seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        wanted = None if ids is None else {str(i) for i in ids}
        listener = self.db.connect()
        try:
            with listener.cursor() as cur:
                cur.execute(queries.listen([queries.FINISHED]))
            recheck = True
            while True:
                if recheck:
                    found = check()
                    if found is not None:
                        return found
                wait = self.config.poll_interval
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise WaitTimeout(f"{what} after {timeout}s")
                    wait = min(wait, left)
                ready = select.select([listener], [], [], wait)[0]
                recheck = not ready
                if ready:
                    with translated_errors(self.db):
                        listener.poll()
                    for note in listener.notifies:
                        if (
                            wanted is None
                            or not note.payload
                            or not wanted.isdisjoint(note.payload.split(","))
                        ):
                            recheck = True
                    listener.notifies.clear()
        finally:
            listener.close()

    def get(self, task_id: int) -> Task:
        """The task with this id, fresh from the database."""
        tasks = self._tasks("get_task", {"id": task_id})
        if not tasks:
            raise TaskNotFound(f"no task with id {task_id}")
        return tasks[0]

    # -- consuming ---------------------------------------------------------

    def register_owner(
        self, owner: str, *, queues: Sequence[str] = (), concurrency: int = 0
    ) -> None:
        """Create or renew the lease row of *owner* (a worker or a popping process)."""
        self._rows(
            "register_owner",
            {
                "owner": owner,
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "queues": list(queues),
                "concurrency": concurrency,
                "lease": self.config.lease,
            },
        )

    def heartbeat(self, owner: str) -> bool:
        """Renew *owner*'s lease.  ``False`` when the row is gone: the lease
        was lost and the owner's tasks were (or will be) rescued."""
        return bool(self._rows("heartbeat", {"owner": owner, "lease": self.config.lease}))

    def unregister_owner(self, owner: str) -> None:
        self._rows("unregister_owner", {"owner": owner})

    def claim(self, owner: str, queue: str, limit: int, limits: Sequence[Limit] = ()) -> list[Task]:
        """Claim up to *limit* ready tasks of *queue* for *owner*, best first.

        Tasks of handlers in *limits* are claimed only within their limits
        (each under a lock shared by all workers, one transaction each).
        """
        return self.finish_and_claim(owner, (), queue, limit, limits)[1]

    def finish(self, owner: str, outcomes: Iterable[Outcome]) -> set[int]:
        """Record outcomes in one statement.

        :return: the ids whose outcome was recorded; any other id had been
            taken from *owner* (lease lost) and was left untouched.
        """
        outcomes = list(outcomes)
        if not outcomes:
            return set()
        return self.finish_and_claim(owner, outcomes, "", 0)[0]

    def finish_and_claim(
        self,
        owner: str,
        outcomes: Iterable[Outcome],
        queue: str,
        limit: int,
        limits: Sequence[Limit] = (),
        excluded: Sequence[Limit] | None = None,
        prefetch: int = 0,
        decode: bool = True,
    ) -> tuple[set[int], list[Task]]:
        """Record *outcomes* and claim up to *limit* tasks of *queue*, in one
        round trip.

        Tasks of the handlers in *limits* are then claimed within their
        limits; tasks of the handlers of *excluded* (default: *limits*) are
        never claimed by the plain claim, except those without a key of a
        handler limited per key only.  Up to *prefetch* more tasks are
        claimed to wait for a thread, among those with an attempt to spare.
        Without *decode*, the tasks' arguments are left for
        ``decode_claimed()``.

        :return: the ids whose outcome was recorded (any other had been taken
            from *owner*: lease lost), and the claimed tasks, best first.
        """
        texts = [o.as_json_text() for o in outcomes]
        if excluded is None:
            excluded = limits
        at, rows = self._execute(
            "finish_and_claim",
            {
                "owner": owner,
                "outcomes": "[" + ",".join(texts) + "]",
                "durable": bool(texts),
                "queue": queue,
                "limit": limit,
                "prefetch": prefetch,
                "limited": [lim.name for lim in excluded],
                "key_only": [lim.name for lim in excluded if lim.key_only],
            },
            None,
            _indexed,
        )
        done: set[int] = set()
        started_at = None
        kind = at.get("kind")
        claimed = []
        for row in rows:
            if row[kind] == 0:
                done, started_at = set(row[at["done_ids"]]), row[at["started_at"]]
                self._workflows_finished(row[at["workflows_finished"]])
            else:
                claimed.append(row)
        tasks = self._claimed_tasks(owner, queue, at, claimed, started_at, decode)
        for lim in limits:
            # Per-key limits spread a handler's tasks over many keys: claim
            # ahead for them too, as the plain claim does (up to KEYED_AHEAD).
            room = limit - len(tasks) + (min(prefetch, KEYED_AHEAD) if lim.by_key else 0)
            if room <= 0:
                continue
            tasks += self._claim_limited(owner, queue, room, lim, decode)
        tasks.sort(key=lambda t: (-t.priority, t.run_at, t.id))
        return done, tasks

    def _claimed_tasks(
        self,
        owner: str,
        queue: str,
        at: dict[str, int],
        rows: Sequence[tuple[Any, ...]],
        started_at: datetime | None,
        decode: bool = True,
    ) -> list[Task]:
        """The tasks of claimed rows (the columns finish_and_claim returns,
        at the positions *at* gives), running for *owner* since
        *started_at*; their arguments decoded unless not *decode*."""
        if not rows:
            return []
        (
            id_, name, args, kwargs, priority, attempts, max_attempts, run_at, created_at,
            cancel_requested_at, snoozes, workflow_id, meta, tags, key,
        ) = map(at.__getitem__, CLAIMED_COLUMNS)  # fmt: skip
        backend = self.backend
        tasks = [
            Task(
                row[id_],
                row[name],
                queue,
                [],
                {},
                State.RUNNING,
                row[priority],
                row[attempts],
                row[max_attempts],
                row[run_at],
                row[created_at],
                started_at,
                locked_by=owner,
                cancel_requested_at=row[cancel_requested_at],
                snoozes=row[snoozes],
                workflow_id=row[workflow_id],
                meta=row[meta],
                tags=row[tags],
                key=row[key],
                _backend=backend,
                _encoded=(row[args], row[kwargs]),
            )
            for row in rows
        ]
        if decode:
            for task in tasks:
                decode_claimed(task)
        return tasks

    def _claim_limited(
        self, owner: str, queue: str, limit: int, lim: Limit, decode: bool = True
    ) -> list[Task]:
        params = {
            "owner": owner,
            "queue": queue,
            "limit": limit,
            "name": lim.name,
            "concurrency": lim.concurrency,
            "rate": lim.rate,
            "period": lim.period,
            "by_key": lim.by_key,
            "key_concurrency": lim.key_concurrency,
            "key_rate": lim.key_rate,
            "key_period": lim.key_period,
            "unkeyed": not lim.key_only,
            # How far the claim reads the best ready keyed tasks before it
            # walks every key (see claim_limited_tasks).
            "scan": 4 * limit + 64,
        }
        with self.db.connection() as conn, conn.cursor() as cur:
            # One message, so one implicit transaction (the connection is
            # in autocommit): the lock, then the claim, committed together;
            # the rows are the claim's, the last statement's.  On an error
            # the server rolls it all back.
            cur.execute(
                queries.get("lock_limit") + "\n" + queries.get("claim_limited_tasks"), params
            )
            at, rows = _indexed(cur)
        started_at = rows[0][at["started_at"]] if rows else None
        return self._claimed_tasks(owner, queue, at, rows, started_at, decode)

    def sync_limited(
        self, queues: Sequence[str], limits: Sequence[Limit], batch: int = 5000
    ) -> tuple[int, int]:
        """Mark the queued tasks of *queues* that only the limited claim may
        take, by *limits* (the handlers' limits of this process), and unmark
        the others: a push marks them itself, this corrects what limits
        changed since.  One batch each way per statement, until done.

        :return: how many were marked and unmarked.
        """
        params = {
            "queues": list(queues),
            "limited": [lim.name for lim in limits if not lim.key_only],
            "key_only": [lim.name for lim in limits if lim.key_only],
            "batch": batch,
        }
        marked = unmarked = 0
        while True:
            row = self._rows("sync_limited", params)[0]
            marked += row["marked"]
            unmarked += row["unmarked"]
            if row["marked"] < batch and row["unmarked"] < batch:
                return marked, unmarked

    def release(
        self, owner: str, task_ids: Sequence[int], interrupted: Sequence[int] = ()
    ) -> list[int]:
        """Put *owner*'s running tasks back in the queue at once.

        :param task_ids: tasks that never started (prefetched): their
            attempt is not counted.
        :param interrupted: tasks whose handler started but did not finish:
            the attempt counts (a task with none left fails), and the
            history records the released run.
        :return: the ids released (queued or failed).
        """
        if not task_ids and not interrupted:
            return []
        rows = self._rows(
            "release_tasks",
            {"owner": owner, "ids": list(task_ids), "interrupted": list(interrupted)},
        )
        if not rows:
            return []
        self._workflows_finished(rows[0]["workflows_finished"])
        return list(rows[0]["array"])

    def rescue(self) -> list[dict[str, Any]]:
        """Requeue (or fail) tasks whose owner's lease expired.

        :return: one row per rescued task: ``id``, ``name``, ``queue``,
            ``state``, ``attempts``.
        """
        rows = self._rows(
            "rescue_tasks",
            {
                "backoff": self.config.retry_backoff,
                "backoff_max": self.config.retry_backoff_max,
            },
        )
        if rows:
            self._workflows_finished(rows[0].pop("workflows_finished"))
            for row in rows[1:]:
                del row["workflows_finished"]
        return rows

    def prune(self) -> int:
        """Delete finished tasks past their retention, one batch per state
        group; return how many were deleted."""
        deleted = 0
        config = self.config
        for states, keep in (
            (["succeeded"], config.keep_succeeded),
            (["failed", "cancelled"], config.keep_failed),
        ):
            if keep is None:
                continue
            with self.db.connection() as conn, conn.cursor() as cur:
                cur.execute(
                    sent("prune_tasks", queries.get("prune_tasks")),
                    {"states": states, "keep": keep, "batch": config.prune_batch, "queue": None},
                )
                deleted += cur.rowcount
        return deleted

    # -- flow control --------------------------------------------------------

    def cancel(self, task_id: int, reason: str) -> Task:
        """Cancel a queued task, or ask a running one to stop; return the
        task as it is now (a finished task is left as it is).

        :raises TaskNotFound: no such task.
        """
        rows = self.cancel_rows(task_id, None, reason)
        return Task.from_row(rows[0], self.backend) if rows else self.get(task_id)

    def cancel_rows(
        self,
        task_id: int | None,
        workflow_id: int | None,
        reason: str,
        ids: list[int] | None = None,
    ) -> list[dict[str, Any]]:
        """Cancel task *task_id*, the tasks *ids* or every task of workflow
        *workflow_id* (queued or waiting: at once; running: a request);
        return the rows changed (none for tasks that had ended)."""
        rows = self._rows(
            "cancel_task",
            {"id": task_id, "ids": ids, "workflow_id": workflow_id, "reason": reason},
        )
        if rows:
            self._workflows_finished(rows[0]["workflows_finished"])
        return rows

    # -- workflows -------------------------------------------------------------

    def push_workflow(self, params: dict[str, Any], conn: Any = None) -> dict[str, Any]:
        """Insert tasks and their dependencies in one statement (see
        ``push_workflow`` in ``sql/workflow.sql`` for *params*); return its
        one row: ``ok``, ``workflow_id``, ``ids``, ``states``, ``run_ats``,
        ``created_at`` and ``problems`` (when not ok: nothing was stored)."""
        return self._rows("push_workflow", params, conn)[0]

    def workflow_row(self, workflow_id: int) -> dict[str, Any] | None:
        """The ``pgtq_workflows`` row, or ``None``."""
        rows = self._rows("get_workflow", {"id": workflow_id})
        return rows[0] if rows else None

    def workflow_tasks(self, workflow_id: int) -> list[Task]:
        """The tasks of a workflow, in the order they were pushed."""
        return self._tasks("workflow_tasks", {"id": workflow_id})

    def parent_results(self, task_id: int) -> list[dict[str, Any]]:
        """The parents of a task in order: ``id``, ``state``, ``result``."""
        return self._rows("parent_results", {"id": task_id})

    def owned_running(self, owner: str) -> set[int]:
        """Ids of the running tasks *owner* holds, as the database sees them."""
        return {row["id"] for row in self._rows("owned_running_tasks", {"owner": owner})}

    def cancel_requests(self, owner: str) -> set[int]:
        """Ids of *owner*'s running tasks that were asked to stop."""
        return {row["id"] for row in self._rows("cancel_requests", {"owner": owner})}

    def fire_periodic(self, schedule: str, fire_at: datetime, task: dict[str, Any]) -> int | None:
        """Push the task of *schedule* for *fire_at*, unless some worker did;
        return the new task's id, or ``None``."""
        rows = self._rows("fire_periodic", {"schedule": schedule, "fire_at": fire_at, **task})
        return rows[0]["id"] if rows else None

    def mark_stopping(self, owner: str) -> None:
        """Record that worker *owner* is stopping (it claims no more)."""
        self._rows("mark_worker_stopping", {"owner": owner})

    def make_scheduled_due(self, queues: Sequence[str]) -> int:
        """Make the queued tasks of *queues* that wait for a later time due
        now (a testing aid); return how many."""
        with self.db.connection() as conn, conn.cursor() as cur:
            cur.execute(queries.get("make_scheduled_due"), {"queues": list(queues)})
            count: int = cur.rowcount
        return count

    def database_now(self) -> datetime:
        """The database's clock: the one every time in flask_pgtq follows."""
        now: datetime = self._rows("database_now", {})[0]["now"]
        return now
