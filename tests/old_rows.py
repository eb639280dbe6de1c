"""Rows as earlier schema versions wrote them, for the upgrade tests
(``tests/test_schema_upgrade.py``).

:func:`fill` writes, into a database at some schema version, tasks in every
state that version knows and rows in each of its other tables, naming only
the columns that version has (a column of a later one is an error there);
:func:`contents` reads every row back.  One function per migration adds
what that migration brought.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import psycopg2
from psycopg2 import sql
from psycopg2.extras import Json

LIVE_WORKER = str(uuid.UUID(int=1))
DEAD_WORKER = str(uuid.UUID(int=2))
STOPPING_WORKER = str(uuid.UUID(int=3))
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACEBACK = "Traceback (most recent call last):\n  ...\nTypeError: unsupported operand"

#: Task columns written as JSON.
_JSON_COLUMNS = ("args", "kwargs", "result", "progress", "history", "meta")


class Writer:
    """Inserts rows on one cursor; *now* is the database's time."""

    def __init__(self, cur: Any, now: datetime) -> None:
        self.cur = cur
        self.now = now
        self.ago = now - timedelta(minutes=5)
        #: Task ids by role.
        self.ids: dict[str, int] = {}

    def insert(self, table: str, **values: Any) -> Any:
        """Insert one row (column=value) into *table*; return its first column."""
        self.cur.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING *").format(
                sql.Identifier(table),
                sql.SQL(", ").join(map(sql.Identifier, values)),
                sql.SQL(", ").join(sql.Placeholder() * len(values)),
            ),
            list(values.values()),
        )
        return self.cur.fetchone()[0]

    def task(self, role: str, **values: Any) -> int:
        """Insert a task of the queue ``default``, created five minutes ago,
        due since then, unless *values* say otherwise.  Its id comes from the
        identity sequence, as a push's did."""
        row = {"queue": "default", "created_at": self.ago, "run_at": self.ago, **values}
        for column in _JSON_COLUMNS:
            if column in row:
                row[column] = Json(row[column])
        self.ids[role] = int(self.insert("pgtq_tasks", **row))
        return self.ids[role]

    def finished(self, seconds_ago: float = 2) -> dict[str, datetime]:
        """``started_at`` and ``finished_at`` of an attempt that ended then."""
        end = self.now - timedelta(seconds=seconds_ago)
        return {"started_at": end - timedelta(seconds=1), "finished_at": end}

    def attempt(self, number: int, state: str, error: str) -> dict[str, Any]:
        """A history entry as the outcome statements write it."""
        return {
            "attempt": number,
            "state": state,
            "worker": LIVE_WORKER,
            "started_at": (self.now - timedelta(seconds=10)).isoformat(),
            "finished_at": (self.now - timedelta(seconds=9)).isoformat(),
            "error": error,
        }


def initial(w: Writer) -> None:
    """0001: workers (one alive, one whose lease ran out) and a task in each state."""
    for worker, lease in ((LIVE_WORKER, timedelta(hours=1)), (DEAD_WORKER, -timedelta(minutes=2))):
        w.insert(
            "pgtq_workers",
            id=worker,
            hostname="web-1",
            pid=4242,
            queues=["default", "emails"],
            concurrency=4,
            started_at=w.ago,
            heartbeat_at=w.now,
            lease_expires_at=w.now + lease,
        )
    w.task("ready", name="add", args=[2, 3], state="queued", priority=5)
    w.task("ready_by_kwargs", name="add", kwargs={"a": 40, "b": 2}, state="queued")
    w.task("scheduled", name="add", args=[10, 20], state="queued", run_at=w.now + timedelta(days=1))
    w.task(
        "retrying",
        name="send_email",
        args=["zoë@example.com"],
        kwargs={"subject": "Hello ✓", "cc": None},
        state="queued",
        attempts=1,
        max_attempts=5,
        run_at=w.now + timedelta(hours=1),
        error="Traceback ...\nConnectionError: timed out",
        history=[w.attempt(1, "queued", "ConnectionError: timed out")],
    )
    running = {"state": "running", "attempts": 1, "started_at": w.now - timedelta(seconds=5)}
    w.task(
        "running",
        name="slow",
        args=[30, "report"],
        locked_by=LIVE_WORKER,
        progress={"done": 40, "total": 100},
        **running,
    )
    w.task(
        "cancel_requested",
        name="slow",
        args=[60, "export"],
        locked_by=LIVE_WORKER,
        cancel_requested_at=w.now,
        **running,
    )
    # Its worker died: rescue puts it back.
    w.task(
        "lost",
        name="add",
        args=[7, 8],
        state="running",
        attempts=1,
        started_at=w.now - timedelta(minutes=3),
        locked_by=DEAD_WORKER,
    )
    w.task(
        "succeeded",
        name="add",
        args=[4, 5],
        state="succeeded",
        attempts=1,
        result=9,
        **w.finished(),
    )
    w.task(
        "succeeded_after_a_retry",
        name="report",
        args=[{"month": "2026-11"}],
        state="succeeded",
        attempts=2,
        result={"rows": [1, 2, 3], "title": "Zoë's report", "ok": True, "none": None},
        error=TRACEBACK,
        history=[w.attempt(1, "queued", TRACEBACK)],
        **w.finished(),
    )
    w.task(
        "failed",
        name="add",
        args=[1, "x"],
        state="failed",
        attempts=3,
        max_attempts=3,
        error=TRACEBACK,
        history=[w.attempt(n, "queued", TRACEBACK) for n in (1, 2)]
        + [w.attempt(3, "failed", TRACEBACK)],
        **w.finished(),
    )
    w.task(
        "cancelled",
        name="send_email",
        args=["ops@example.com"],
        state="cancelled",
        finished_at=w.now - timedelta(seconds=1),
        error="cancelled by operator",
    )
    w.task("other_queue", queue="emails", name="send_email", args=["a@ex.com"], state="queued")


def flow_control(w: Writer) -> None:
    """0002: unique keys (one held by a queued task, one by a finished task
    within its unique_for), a rate limit's recent starts, a periodic fire."""
    w.task("unique_queued", name="add", args=[1, 1], state="queued", unique_key="add:1+1")
    w.task(
        "unique_held",
        name="report",
        args=[{"month": "2026-10"}],
        state="succeeded",
        attempts=1,
        result="sent",
        unique_key="report:2026-10",
        unique_until=w.now + timedelta(hours=1),
        **w.finished(),
    )
    w.insert("pgtq_limits", name="slow", recent=[w.now - timedelta(seconds=s) for s in (10, 5)])
    w.insert(
        "pgtq_periodic",
        schedule="nightly",
        fire_at=w.now.replace(hour=3, minute=0, second=0, microsecond=0),
        task_id=w.ids["succeeded"],
    )


def worker_stopping(w: Writer) -> None:
    """0004: a worker that began to stop."""
    w.insert(
        "pgtq_workers",
        id=STOPPING_WORKER,
        hostname="web-2",
        pid=4343,
        queues=["default"],
        concurrency=1,
        started_at=w.ago,
        heartbeat_at=w.now,
        lease_expires_at=w.now + timedelta(hours=1),
        stopping_since=w.now,
    )


def control(w: Writer) -> None:
    """0005: pauses of a queue and of a handler, a stored schedule, a
    snoozed task with a key."""
    w.task(
        "snoozed",
        name="sync_account",
        args=[42],
        state="queued",
        key="account:42",
        snoozes=2,
        run_at=w.now + timedelta(seconds=30),
    )
    w.insert(
        "pgtq_pauses",
        kind="queue",
        target="emails",
        reason="mail server maintenance",
        paused_by="ops@web-1",
        paused_at=w.now,
        until=w.now + timedelta(hours=1),
    )
    w.insert("pgtq_pauses", kind="handler", target="slow", paused_at=w.now)
    w.insert(
        "pgtq_schedules",
        name="nightly",
        cron="0 3 * * *",
        tz="Europe/Paris",
        handler="report",
        kwargs=Json({"full": True}),
        created_at=w.ago,
        updated_at=w.ago,
    )


def workflows(w: Writer) -> None:
    """0006: ``chain(add.s(1, 2), add.s(10))`` with its first step queued and
    the second waiting for its result; a group's on_finish task waiting for
    a task due tomorrow."""
    workflow = w.insert(
        "pgtq_workflows",
        kind="chain",
        created_at=w.ago,
        total=2,
        pending=2,
        outputs=[],
        single=True,
    )
    first = w.task("chain_first", name="add", args=[1, 2], state="queued", workflow_id=workflow)
    second = w.task(
        "chain_second",
        name="add",
        args=[10],
        state="waiting",
        workflow_id=workflow,
        waiting_for=1,
        pass_result="previous",
    )
    w.insert("pgtq_dependencies", child_id=second, position=0, parent_id=first)
    w.cur.execute(
        "UPDATE pgtq_workflows SET outputs = ARRAY[%s::bigint] WHERE id = %s", (second, workflow)
    )
    on_finish = w.task(
        "on_finish",
        name="report",
        state="waiting",
        waiting_for=1,
        run_on_failure=True,
        pass_result="summary",
    )
    w.insert("pgtq_dependencies", child_id=on_finish, position=0, parent_id=w.ids["scheduled"])


def task_meta(w: Writer) -> None:
    """0007: a task pushed while tracing, with its trace context."""
    w.task(
        "traced",
        name="add",
        args=[6, 7],
        state="succeeded",
        attempts=1,
        result=13,
        meta={"trace": {"traceparent": TRACEPARENT}},
        **w.finished(),
    )


#: What each schema version added, by the version that added it.  0003 (an
#: index and table settings) added no column or table.
WRITERS: dict[int, Callable[[Writer], None]] = {
    1: initial,
    2: flow_control,
    4: worker_stopping,
    5: control,
    6: workflows,
    7: task_meta,
}


def fill(dsn: str, version: int) -> dict[str, int]:
    """Write the rows of every version up to *version* into *dsn*'s database,
    in one transaction.

    :return: the task ids by role (``"ready"``, ``"lost"``, ``"chain_first"``...).
    """
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT now()")
            writer = Writer(cur, cur.fetchone()[0])
            for since, write in WRITERS.items():
                if since <= version:
                    write(writer)
    finally:
        conn.close()
    return writer.ids


def contents(dsn: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table but the version table, by table.  Rows are
    ordered by their first two columns, which hold each table's primary key
    (migrations add columns at the end)."""
    conn = psycopg2.connect(dsn)
    try:
        found = {}
        with conn.cursor() as cur:
            cur.execute(
                "SELECT tablename FROM pg_tables"
                " WHERE schemaname = 'public' AND tablename <> 'pgtq_schema_version'"
            )
            for (table,) in cur.fetchall():
                cur.execute(sql.SQL("SELECT * FROM {} ORDER BY 1, 2").format(sql.Identifier(table)))
                names = [d.name for d in cur.description]
                found[table] = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        return found
    finally:
        conn.close()
