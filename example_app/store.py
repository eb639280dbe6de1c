"""The example app's own tables, in the same database as the queue."""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.extras
from flask import current_app

SCHEMA = """
SELECT pg_advisory_xact_lock(424242);
CREATE TABLE IF NOT EXISTS example_signups (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL,
    task_id    bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS example_outbox (
    task_id    bigint PRIMARY KEY,
    address    text NOT NULL,
    body       text NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now()
);
"""


def _connect() -> Any:
    conn = psycopg2.connect(current_app.config["PGTQ_DSN"])
    with conn, conn.cursor() as cur:
        cur.execute(SCHEMA)
    return conn


def _query(sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    conn = _connect()
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, params)
            return [dict(row) for row in cur.fetchall()] if cur.description else []
    finally:
        conn.close()


def add_signup(email: str, task_id: int) -> None:
    _query("INSERT INTO example_signups (email, task_id) VALUES (%s, %s)", (email, task_id))


def recent_signups(limit: int = 20) -> list[dict[str, Any]]:
    return _query("SELECT * FROM example_signups ORDER BY id DESC LIMIT %s", (limit,))


def write_outbox(task_id: int, address: str, body: str) -> bool:
    """Store the email once per task; ``False`` when it was already sent."""
    rows = _query(
        "INSERT INTO example_outbox (task_id, address, body) VALUES (%s, %s, %s) "
        "ON CONFLICT (task_id) DO NOTHING RETURNING task_id",
        (task_id, address, body),
    )
    return bool(rows)


def recent_outbox(limit: int = 20) -> list[dict[str, Any]]:
    return _query("SELECT * FROM example_outbox ORDER BY sent_at DESC LIMIT %s", (limit,))
