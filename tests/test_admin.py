"""``flask_pgtq.admin``: inspection and operator actions on a real database."""

from __future__ import annotations

import select
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from flask_pgtq import PgTq, State, TaskNotFound
from flask_pgtq.admin import (
    ActionNotAllowed,
    Admin,
)
from flask_pgtq.formatting import (
    error_summary,
    format_age,
    format_time,
    parse_duration,
)
from tests.helpers import poll_until, sql_all, sql_one

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def queue_settings() -> dict[str, Any]:
    return {"PGTQ_RETRY_BACKOFF": 0}


@pytest.fixture
def q(q: PgTq) -> PgTq:
    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    @q.handler(max_attempts=1)
    def boom(message: str) -> None:
        raise RuntimeError(message)

    @q.handler(queue="mail")
    def send(to: str) -> str:
        return to

    return q


@pytest.fixture
def admin(q: PgTq) -> Admin:
    return q.admin


def fail_one(q: PgTq, message: str = "kaput") -> int:
    """Push a ``boom`` task and run it to failure; return its id."""
    task = q.handlers["boom"].options(priority=100).push(message)
    popped = q.pop()
    assert popped is not None and popped.id == task.id
    popped.run()
    return task.id


def run_all(q: PgTq, queue: str | None = None) -> None:
    while (task := q.pop(queue)) is not None:
        task.run()


# -- status ------------------------------------------------------------------------------


def test_status_counts_tasks_by_queue_and_state(q: PgTq, admin: Admin, dsn: str) -> None:
    assert admin.status() == []
    q.push("add", 1, 2)
    q.push("add", 3, 4)
    q.handlers["add"].options(delay=3600).push(0, 0)
    q.push("send", "a@example.com")
    run_all(q, "mail")
    fail_one(q)
    sql_one(
        dsn,
        "UPDATE pgtq_tasks SET run_at = now() - interval '90 seconds' WHERE name = 'add'"
        " AND run_at <= now() RETURNING id",
    )

    by_queue = {s.queue: s for s in admin.status()}
    assert list(by_queue) == ["default", "mail"]
    default = by_queue["default"]
    assert default.counts == {
        "waiting": 0,
        "ready": 2,
        "scheduled": 1,
        "running": 0,
        "succeeded": 0,
        "failed": 1,
        "cancelled": 0,
    }
    assert 89 < default.oldest_wait < 120
    assert by_queue["mail"].counts["succeeded"] == 1
    assert by_queue["mail"].oldest_wait is None


def test_status_counts_live_workers_per_queue(q: PgTq, admin: Admin, dsn: str) -> None:
    bound = q.app_queue()
    bound.store.register_owner(
        "00000000-0000-0000-0000-000000000001", queues=["default", "mail"], concurrency=2
    )
    bound.store.register_owner(
        "00000000-0000-0000-0000-000000000002", queues=["mail"], concurrency=1
    )
    sql_one(
        dsn,
        "INSERT INTO pgtq_workers (id, hostname, pid, queues, concurrency, "
        "lease_expires_at) VALUES (gen_random_uuid(), 'h', 1, '{mail}', 1, "
        "now() - interval '1 minute') RETURNING id",
    )
    workers = {s.queue: s.workers for s in admin.status()}
    assert workers == {"default": 1, "mail": 2}


# -- listing -------------------------------------------------------------------------------


def test_tasks_newest_first_with_filters(q: PgTq, admin: Admin) -> None:
    ids = [q.push("add", i, i).id for i in range(3)]
    mail = q.push("send", "x@example.com").id
    failed = fail_one(q, "bad input")

    page = admin.tasks()
    assert [t.id for t in page.tasks] == [failed, mail, *reversed(ids)]
    assert page.total == 5 and page.older is None and page.newer is None

    assert [t.id for t in admin.tasks(queue="mail").tasks] == [mail]
    assert [t.id for t in admin.tasks(name="add").tasks] == list(reversed(ids))
    only_failed = admin.tasks(state="failed")
    assert [t.id for t in only_failed.tasks] == [failed]
    assert only_failed.tasks[0].error_line == "RuntimeError: bad input"
    assert admin.tasks(state="ready", queue="default").total == 3
    assert admin.tasks(state="queued").total == 4
    assert admin.tasks(state="succeeded").total == 0


def test_tasks_ready_and_scheduled_split_queued(q: PgTq, admin: Admin) -> None:
    now = q.push("add", 1, 1).id
    later = q.handlers["add"].options(delay=600).push(1, 1).id
    assert [t.id for t in admin.tasks(state="ready").tasks] == [now]
    scheduled = admin.tasks(state="scheduled").tasks
    assert [t.id for t in scheduled] == [later]
    assert scheduled[0].scheduled is True


def test_tasks_page_through_both_ways(q: PgTq, admin: Admin) -> None:
    ids = [q.push("add", i, i).id for i in range(7)]
    newest_first = list(reversed(ids))

    first = admin.tasks(limit=3)
    assert [t.id for t in first.tasks] == newest_first[:3]
    assert first.newer is None and first.older == newest_first[2]
    second = admin.tasks(limit=3, before=first.older)
    assert [t.id for t in second.tasks] == newest_first[3:6]
    assert second.newer == newest_first[3]
    last = admin.tasks(limit=3, before=second.older)
    assert [t.id for t in last.tasks] == newest_first[6:]
    assert last.older is None and last.newer == newest_first[6]

    back = admin.tasks(limit=3, after=last.newer)
    assert [t.id for t in back.tasks] == newest_first[3:6]
    assert back.older == newest_first[5] and back.newer == newest_first[3]
    top = admin.tasks(limit=3, after=back.newer)
    assert [t.id for t in top.tasks] == newest_first[:3]
    assert top.newer is None and top.older == newest_first[2]
    assert all(page.total == 7 for page in (first, second, last, back, top))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"state": "bogus"},
        {"queue": "two words"},
        {"name": "x'; drop"},
        {"limit": 0},
        {"before": 1, "after": 2},
    ],
)
def test_tasks_refuses_bad_filters(admin: Admin, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        admin.tasks(**kwargs)


def test_get_returns_everything_and_unknown_ids_raise(q: PgTq, admin: Admin) -> None:
    task_id = q.push("add", 2, 3).id
    task = admin.get(task_id)
    assert (task.args, task.kwargs, task.state) == ([2, 3], {}, State.QUEUED)
    with pytest.raises(TaskNotFound):
        admin.get(10**9)


# -- retry ---------------------------------------------------------------------------------


def test_retry_requeues_a_failed_task_with_fresh_attempts_and_keeps_history(
    q: PgTq, admin: Admin
) -> None:
    task_id = fail_one(q, "first failure")
    before = admin.get(task_id)
    assert (before.state, before.attempts, len(before.history)) == (State.FAILED, 1, 1)

    retried = admin.retry(task_id)
    assert retried.state is State.QUEUED
    assert retried.attempts == 0
    assert retried.finished_at is None and retried.started_at is None
    assert retried.run_at <= admin.now()
    assert [h["state"] for h in retried.history] == ["failed", "manual_retry"]
    assert "first failure" in retried.history[0]["error"]

    popped = q.pop()
    assert popped is not None and popped.id == task_id
    popped.run()
    again = admin.get(task_id)
    assert again.state is State.FAILED and again.attempts == 1
    assert [h["state"] for h in again.history] == ["failed", "manual_retry", "failed"]


def test_retry_wakes_listening_workers(q: PgTq, admin: Admin, dsn: str) -> None:
    task_id = fail_one(q)
    listener = psycopg2.connect(dsn)
    try:
        listener.autocommit = True
        with listener.cursor() as cur:
            cur.execute("LISTEN pgtq")
        admin.retry(task_id)
        assert select.select([listener], [], [], 5)[0], "no NOTIFY after retry"
        listener.poll()
        assert [n.payload for n in listener.notifies] == ["default"]
    finally:
        listener.close()


def test_retry_refuses_tasks_that_are_not_failed_or_cancelled(q: PgTq, admin: Admin) -> None:
    queued = q.push("add", 1, 1).id
    with pytest.raises(ActionNotAllowed, match="is queued"):
        admin.retry(queued)
    running = q.pop()
    assert running is not None
    with pytest.raises(ActionNotAllowed, match="is running"):
        admin.retry(running.id)
    assert admin.get(running.id).state is State.RUNNING
    running.run()
    with pytest.raises(ActionNotAllowed, match="is succeeded"):
        admin.retry(running.id)
    with pytest.raises(TaskNotFound):
        admin.retry(10**9)


def test_retry_all_takes_the_failed_tasks_of_a_queue(q: PgTq, admin: Admin, dsn: str) -> None:
    failed = [fail_one(q, f"f{i}") for i in range(3)]
    mail_failed = sql_one(
        dsn,
        "INSERT INTO pgtq_tasks (queue, name, state) VALUES ('mail', 'send', 'failed') "
        "RETURNING id",
    )[0]
    cancelled = admin.cancel(q.push("add", 0, 0).id).task.id

    assert admin.retry_all(queue="default") == failed
    assert admin.get(mail_failed).state is State.FAILED
    assert admin.get(cancelled).state is State.CANCELLED
    assert admin.retry_all(states=["cancelled"]) == [cancelled]
    assert admin.retry_all() == [mail_failed]
    with pytest.raises(ValueError):
        admin.retry_all(states=["succeeded"])


# -- cancel --------------------------------------------------------------------------------


def test_cancel_a_queued_task_at_once(q: PgTq, admin: Admin) -> None:
    task_id = q.push("add", 1, 1).id
    outcome = admin.cancel(task_id)
    assert outcome.cancelled is True
    task = admin.get(task_id)
    assert task.state is State.CANCELLED
    assert task.finished_at is not None
    assert task.error == "cancelled by an operator"
    assert q.pop() is None


def test_cancel_a_running_task_requests_it(q: PgTq, admin: Admin, dsn: str) -> None:
    q.push("add", 1, 1)
    running = q.pop()
    assert running is not None
    listener = psycopg2.connect(dsn)
    try:
        listener.autocommit = True
        with listener.cursor() as cur:
            cur.execute("LISTEN pgtq_cancel")
        outcome = admin.cancel(running.id)
        assert select.select([listener], [], [], 5)[0], "the worker was not told"
        listener.poll()
        assert [n.payload for n in listener.notifies] == [str(running.id)]
    finally:
        listener.close()
    assert outcome.cancelled is False
    task = admin.get(running.id)
    assert task.state is State.RUNNING
    assert task.cancel_requested_at is not None
    first_request = task.cancel_requested_at
    assert admin.cancel(running.id).task.cancel_requested_at == first_request


def test_cancel_refuses_finished_tasks(q: PgTq, admin: Admin) -> None:
    task_id = fail_one(q)
    with pytest.raises(ActionNotAllowed, match="is failed"):
        admin.cancel(task_id)
    with pytest.raises(TaskNotFound):
        admin.cancel(10**9)


def test_actions_are_compare_and_set_against_a_concurrent_worker(
    q: PgTq, admin: Admin, dsn: str
) -> None:
    """A worker's transition that commits while an action waits for the row
    wins: the action re-reads the row and finds the task no longer cancellable."""
    q.push("add", 1, 1)
    running = q.pop()
    assert running is not None
    worker = psycopg2.connect(dsn)
    try:
        with worker.cursor() as cur:  # a transaction, like the worker's finish
            cur.execute(
                "UPDATE pgtq_tasks SET state = 'succeeded', finished_at = now(), "
                "locked_by = NULL WHERE id = %s",
                (running.id,),
            )
        errors: list[BaseException] = []

        def cancel() -> None:
            try:
                admin.cancel(running.id)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=cancel)
        thread.start()
        poll_until(
            lambda: sql_one(
                dsn, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            )[0],
            5,
            message="the cancel to wait for the row lock",
        )
        worker.commit()
        thread.join(5)
    finally:
        worker.close()
    assert len(errors) == 1 and isinstance(errors[0], ActionNotAllowed)
    task = admin.get(running.id)
    assert task.state is State.SUCCEEDED and task.cancel_requested_at is None


# -- delete and purge ----------------------------------------------------------------------


def test_delete_only_finished_tasks(q: PgTq, admin: Admin) -> None:
    queued = q.push("add", 1, 1).id
    with pytest.raises(ActionNotAllowed, match="cancel it first"):
        admin.delete(queued)
    failed = fail_one(q)
    admin.delete(failed)
    with pytest.raises(TaskNotFound):
        admin.get(failed)
    with pytest.raises(TaskNotFound):
        admin.delete(failed)


def test_purge_by_state_age_and_queue(q: PgTq, admin: Admin, dsn: str) -> None:
    for i in range(4):
        q.push("add", i, i)
    q.push("send", "old@example.com")
    run_all(q)
    run_all(q, "mail")
    failed = fail_one(q)
    waiting = q.push("add", 9, 9).id
    sql_all(
        dsn,
        "UPDATE pgtq_tasks SET finished_at = now() - interval '10 days' "
        "WHERE finished_at IS NOT NULL",
    )
    young = q.push("add", 5, 5).id
    run_all(q)

    week = 7 * 86400
    assert admin.purge(states=["succeeded"], older_than=week, dry_run=True) == 5
    assert admin.purge(states=["succeeded"], older_than=week, queue="mail") == 1
    assert admin.purge(states=["succeeded"], older_than=week, batch=2) == 4
    left = {row[0] for row in sql_all(dsn, "SELECT id FROM pgtq_tasks")}
    assert left == {failed, waiting, young}
    assert admin.purge(states=["failed", "cancelled"], older_than=0) == 1
    with pytest.raises(ValueError, match="only finished"):
        admin.purge(states=["queued"], older_than=0)
    with pytest.raises(ValueError):
        admin.purge(states=["succeeded"], older_than=-1)


# -- workers and throughput -----------------------------------------------------------------


def test_workers_show_heartbeat_and_running_tasks(q: PgTq, admin: Admin) -> None:
    task_id = q.push("add", 1, 1).id
    running = q.pop()
    assert running is not None
    (worker,) = admin.workers()
    assert worker.alive and worker.heartbeat_age < 5
    assert [t["id"] for t in worker.tasks] == [task_id]
    assert worker.tasks[0]["name"] == "add"
    assert worker.as_json()["started_at"].startswith(str(worker.started_at.year))


def test_throughput_counts_ended_tasks_per_minute(q: PgTq, admin: Admin, dsn: str) -> None:
    for i in range(3):
        q.push("add", i, i)
    run_all(q)
    fail_one(q)
    sql_all(
        dsn,
        "UPDATE pgtq_tasks SET finished_at = now() - interval '2 hours' "
        "WHERE id = (SELECT min(id) FROM pgtq_tasks)",
    )
    series = admin.throughput(60)
    assert len(series) == 60
    assert series[-1]["minute"] <= admin.now()
    assert sum(r["succeeded"] for r in series) == 2
    assert sum(r["failed"] for r in series) == 1
    assert admin.throughput(60, queue="mail")[-1]["succeeded"] == 0


# -- helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("12h", 43200),
        ("7d", 604800),
        ("2w", 1209600),
        ("1h30m", 5400),
        ("0", 0),
        ("1.5h", 5400),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5y", "-3d", "1h-"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_formatting_helpers() -> None:
    assert [format_age(s) for s in (None, 5, 75, 3700, 90000)] == [
        "-",
        "5s",
        "1m 15s",
        "1h 1m",
        "1d 1h",
    ]
    assert format_time("2024-05-01T14:03:04.5+02:00") == "2024-05-01 12:03:04Z"
    assert format_time(None) == "-"
    assert error_summary("Traceback:\n  File x\nValueError: nope\n\n") == "ValueError: nope"
    psycopg_error = (
        'Traceback (most recent call last):\n  File "x.py", line 1, in f\n    run()\n'
        'psycopg2.errors.UndefinedTable: relation "t" does not exist\n'
        "LINE 1: INSERT INTO t VALUES (1)\n                    ^\n"
    )
    assert error_summary(psycopg_error) == (
        'psycopg2.errors.UndefinedTable: relation "t" does not exist'
    )
    assert error_summary(None) is None


def test_admin_logs_and_metrics_do_not_import_flask() -> None:
    code = (
        "import sys, flask_pgtq.admin, flask_pgtq.formatting, flask_pgtq.logs, flask_pgtq.metrics\n"
        "print(sorted(m for m in sys.modules if m == 'flask' or m.startswith('flask.')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
