"""The example app's own tables, in the same database as the queue.

Plain psycopg2, one short-lived connection per call, so that the code shows
where transactions begin and end.  A real app would use its ORM (the README
shows the same push with Flask-SQLAlchemy's ``db.session``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extras
from flask import current_app

SCHEMA = """
SELECT pg_advisory_xact_lock(424242);
CREATE TABLE IF NOT EXISTS example_signups (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    task_id    bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS example_outbox (
    task_id    bigint PRIMARY KEY,
    address    text NOT NULL,
    body       text NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now()
);
-- Tasks pushed from the page, to list them with their state.
CREATE TABLE IF NOT EXISTS example_jobs (
    task_id    bigint PRIMARY KEY,
    label      text NOT NULL
);
-- One row per run of the periodic task.
CREATE TABLE IF NOT EXISTS example_ticks (
    task_id    bigint PRIMARY KEY,
    ran_at     timestamptz NOT NULL DEFAULT now()
);
"""

_ready: set[str] = set()
_ready_lock = threading.Lock()


def _connect() -> Any:
    dsn = current_app.config["PGTQ_DSN"]
    conn = psycopg2.connect(dsn)
    if dsn not in _ready:
        with _ready_lock, conn, conn.cursor() as cur:
            cur.execute(SCHEMA)
            _ready.add(dsn)
    return conn


@contextlib.contextmanager
def transaction() -> Iterator[Any]:
    """A psycopg2 connection in a transaction: committed at the end of the
    block, rolled back if it raises."""
    conn = _connect()
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def _query(sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with transaction() as conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(sql, params)
        return [dict(row) for row in cur.fetchall()] if cur.description else []


def add_signup(conn: Any, email: str, task_id: int) -> None:
    """Insert a sign-up on *conn*, in the caller's transaction.

    :raises psycopg2.errors.UniqueViolation: the address signed up before.
    """
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO example_signups (email, task_id) VALUES (%s, %s)", (email, task_id)
        )


def recent_signups(limit: int = 10) -> list[dict[str, Any]]:
    return _query("SELECT * FROM example_signups ORDER BY id DESC LIMIT %s", (limit,))


def write_outbox(task_id: int, address: str, body: str) -> bool:
    """Store the email once per task; ``False`` when it was already sent."""
    rows = _query(
        "INSERT INTO example_outbox (task_id, address, body) VALUES (%s, %s, %s) "
        "ON CONFLICT (task_id) DO NOTHING RETURNING task_id",
        (task_id, address, body),
    )
    return bool(rows)


def recent_outbox(limit: int = 10) -> list[dict[str, Any]]:
    return _query("SELECT * FROM example_outbox ORDER BY sent_at DESC LIMIT %s", (limit,))


def add_job(task_id: int, label: str) -> None:
    _query("INSERT INTO example_jobs (task_id, label) VALUES (%s, %s)", (task_id, label))


def recent_jobs(limit: int = 10) -> list[dict[str, Any]]:
    return _query("SELECT * FROM example_jobs ORDER BY task_id DESC LIMIT %s", (limit,))


def record_tick(task_id: int) -> int:
    """Record a run of the periodic task (once per task); return the count."""
    _query("INSERT INTO example_ticks (task_id) VALUES (%s) ON CONFLICT DO NOTHING", (task_id,))
    return int(_query("SELECT count(*) AS n FROM example_ticks")[0]["n"])


def ticks() -> dict[str, Any]:
    """How many times the periodic task ran, and when last."""
    return _query("SELECT count(*) AS count, max(ran_at) AS last FROM example_ticks")[0]
