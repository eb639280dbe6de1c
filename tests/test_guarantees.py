"""Fences: an attempt that no longer holds its task writes nothing.

Whoever took the task over (a worker after the lease expired, the same
owner after it came back, an operator's retry that starts the attempts
again from 0), the stale attempt's outcome and progress are refused, and
the task keeps the state of the attempt that holds it now.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flask_pgtq import NotClaimed, PgTq, State, Task, current_task
from tests.helpers import poll_until


def make_queue(dsn: str) -> PgTq:
    # A 1 s lease nobody renews between pop() and run(): it soon expires.
    queue = PgTq(dsn=dsn, lease=1.0, heartbeat_interval=0.2, retry_backoff=0.0)

    @queue.handler()
    def job() -> list[object]:
        return [current_task.attempts, current_task.locked_by]

    return queue


@pytest.fixture
def q(dsn: str) -> Iterator[PgTq]:
    queue = make_queue(dsn)
    yield queue
    queue.close()


@pytest.fixture
def other(dsn: str) -> Iterator[PgTq]:
    """A second process's queue: another lease owner."""
    queue = make_queue(dsn)
    yield queue
    queue.close()


#: How the task is taken from the attempt that *q* claimed first.
TAKEOVERS = [
    # Lease expired, task requeued, another owner claims attempt 2.
    "rescued-then-claimed-by-another-owner",
    # Lease expired, the owner comes back (a thawed worker keeps its id)
    # and claims attempt 2: same owner, newer attempt.
    "rescued-then-claimed-by-the-same-owner",
    # Lease expired on the last attempt: failed; an operator retries it
    # (attempts start again from 0) and another owner claims attempt 1:
    # the stale attempt's number again, another owner.
    "failed-then-retried-by-an-operator",
]


def take_over(how: str, q: PgTq, other: PgTq) -> tuple[Task, Task]:
    """Push a task, claim it with *q*, let another attempt take it over.

    :return: the stale claim and the claim that holds the task now.
    """
    max_attempts = 1 if how == "failed-then-retried-by-an-operator" else 3
    q.handlers["job"].options(max_attempts=max_attempts).push()
    stale = q.pop()
    assert stale is not None and stale.attempts == 1
    rescued = poll_until(
        other.app_queue().store.rescue, 10, 0.05, "the expired lease to be rescued"
    )
    assert [r["id"] for r in rescued] == [stale.id]
    if how == "failed-then-retried-by-an-operator":
        assert rescued[0]["state"] == "failed"
        other.admin.retry(stale.id)
    holder = q if how == "rescued-then-claimed-by-the-same-owner" else other
    fresh = holder.pop()
    assert fresh is not None and fresh.id == stale.id
    if how == "rescued-then-claimed-by-another-owner":
        assert fresh.attempts == 2 and fresh.locked_by != stale.locked_by
    elif how == "rescued-then-claimed-by-the-same-owner":
        assert fresh.attempts == 2 and fresh.locked_by == stale.locked_by
    else:
        assert fresh.attempts == stale.attempts == 1 and fresh.locked_by != stale.locked_by
    return stale, fresh


@pytest.mark.parametrize("how", TAKEOVERS)
def test_a_stale_attempts_late_outcome_is_refused(q: PgTq, other: PgTq, how: str) -> None:
    stale, fresh = take_over(how, q, other)
    with pytest.raises(NotClaimed):
        stale.run()
    now = q.get_task(stale.id)
    assert now.state is State.RUNNING, "the stale outcome was recorded"
    assert (now.attempts, now.locked_by) == (fresh.attempts, fresh.locked_by)
    assert now.result is None and now.finished_at is None
    holder = [fresh.attempts, fresh.locked_by]
    done = fresh.run()
    assert done.state is State.SUCCEEDED
    assert done.result == holder


@pytest.mark.parametrize("how", TAKEOVERS)
def test_a_stale_attempts_progress_is_refused(q: PgTq, other: PgTq, how: str) -> None:
    stale, fresh = take_over(how, q, other)
    fresh.set_progress({"by": "fresh"})
    with pytest.raises(NotClaimed):
        stale.set_progress({"by": "stale"})
    assert q.get_task(stale.id).progress == {"by": "fresh"}
