"""The example's task handlers: one per pattern worth copying."""

from __future__ import annotations

import time
from typing import Any

from flask import current_app

from flask_pgtq import Cancel, PgTq, current_task

from . import store

q = PgTq()


@q.handler(max_attempts=5)
def send_welcome_email(address: str) -> dict[str, Any]:
    """Write the welcome email to the outbox (a stand-in for SMTP).

    Idempotent, as handlers should be: a second run of the same task does not
    send twice.
    """
    body = f"Welcome aboard, {address}!"
    sent = store.write_outbox(current_task.id, address, body)
    return {"to": address, "sent": sent}


@q.handler()
def build_report(rows: int) -> dict[str, Any]:
    """A long task that reports its progress as it goes."""
    step = current_app.config.get("EXAMPLE_STEP_SECONDS", 0.2)
    for done in range(1, rows + 1):
        time.sleep(step)  # stands in for real work on one row
        if done % 5 == 0 or done == rows:
            current_task.set_progress({"done": done, "total": rows})
    return {"rows": rows, "total": rows * (rows + 1) // 2}


@q.handler(max_attempts=4, retry_backoff=1)
def call_flaky_api(failures: int) -> str:
    """Fails its first *failures* attempts, then succeeds: each failure is
    retried after a backoff (1 s, then 2 s, ...), up to 4 attempts in all."""
    if current_task.attempts <= failures:
        raise ConnectionError(f"the partner API did not answer (attempt {current_task.attempts})")
    return f"answered on attempt {current_task.attempts}"


@q.handler(max_attempts=1)
def import_contacts(filename: str) -> int:
    """Fails for good: bad data does not fix itself, so no retry
    (``max_attempts=1``).  The task ends ``failed`` with the traceback, for
    the page, the dashboard and its **Retry all** to show."""
    rows = ["name,email,phone", "Ada,ada@example.com,555-0100", "Bob,bob@example.com"]
    for number, row in enumerate(rows, 1):
        if len(row.split(",")) != 3:
            raise ValueError(f"{filename}, line {number}: expected 3 columns, found 2")
    return len(rows) - 1


@q.handler()
def export_archive(chunks: int) -> dict[str, Any]:
    """A long task that stops as soon as it is cancelled: it checks
    ``current_task.cancel_requested`` between chunks and raises ``Cancel``,
    instead of being stopped by the worker after ``PGTQ_CANCEL_GRACE``."""
    step = current_app.config.get("EXAMPLE_STEP_SECONDS", 0.2)
    for done in range(chunks):
        if current_task.cancel_requested:
            raise Cancel(f"stopped on request after {done} of {chunks} chunks")
        time.sleep(step)  # stands in for writing one chunk
        if (done + 1) % 5 == 0:
            current_task.set_progress({"done": done + 1, "total": chunks})
    return {"chunks": chunks}


#: Every 15 seconds (croniter's sixth field is the second), so the page shows
#: it running; a real schedule would be more like "0 3 * * *".
TICK_SCHEDULE = "* * * * * */15"


@q.periodic(TICK_SCHEDULE)
def tick() -> int:
    """A periodic task: each worker serving its queue schedules it, and each
    fire time makes exactly one task, however many workers run."""
    return store.record_tick(current_task.id)
