"""Helpers for tests: wait for a condition, run a query."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2

T = TypeVar("T")


def poll_until(
    condition: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | None = None,
) -> T:
    """Call *condition* until it returns a truthy value, and return that value.

    Use it instead of sleeping: it returns as soon as the condition holds.

    :param condition: called with no arguments, at least once.
    :param timeout: seconds to wait before giving up.
    :param interval: seconds between calls.
    :param message: what was awaited, for the failure message.
    :raise AssertionError: when *condition* is still falsy after *timeout*.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            what = message or getattr(condition, "__name__", repr(condition))
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what} (last value: {result!r})"
            )
        time.sleep(interval)


def sql_all(dsn: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run *query* on a new autocommit connection to *dsn*; return all rows.

    A statement that returns no rows (``UPDATE`` without ``RETURNING``)
    gives ``[]``.
    """
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(query, params)
            if cur.description is None:
                return []
            rows: list[tuple[Any, ...]] = cur.fetchall()
            return rows
    finally:
        conn.close()


def sql_one(dsn: str, query: str, params: Any = None) -> tuple[Any, ...] | None:
    """Like :func:`sql_all`, but return the first row, or ``None``."""
    rows = sql_all(dsn, query, params)
    return rows[0] if rows else None


def python_blocks(rst: str) -> list[str]:
    """The code of each ``.. code-block:: python`` in *rst* text, dedented."""
    blocks = []
    for block in rst.split(".. code-block:: python\n")[1:]:
        lines = []
        for line in block.splitlines()[1:]:
            if line and not line.startswith("    "):
                break
            lines.append(line[4:])
        blocks.append("\n".join(lines).strip() + "\n")
    return blocks
