"""Claiming, running and recording tasks in-process (pop + Task.run)."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import psycopg2
import pytest

from flask_pgtq import Cancel, NotClaimed, PgTq, Retry, State, Task, current_task
from flask_pgtq.queue import new_owner_id
from flask_pgtq.runner import backoff_delay
from tests.helpers import poll_until, sql_one


@pytest.fixture
def queue_settings() -> dict[str, Any]:
    return {"PGTQ_RETRY_BACKOFF": 0.2, "PGTQ_LEASE": 1.0, "PGTQ_HEARTBEAT_INTERVAL": 0.2}


@pytest.fixture
def q(standalone_q: PgTq) -> PgTq:
    return standalone_q


def test_pop_returns_none_when_nothing_is_ready(q: PgTq) -> None:
    assert q.pop() is None


def test_pop_takes_highest_priority_then_oldest(q: PgTq) -> None:
    @q.handler()
    def job(n: int) -> int:
        return n

    job.push(1)
    job.options(priority=5).push(2)
    job.push(3)
    job.options(priority=5).push(4)
    job.options(priority=-1).push(5)
    order = [q.pop().args[0] for _ in range(5)]
    assert order == [2, 4, 1, 3, 5]
    assert q.pop() is None


def test_pop_skips_tasks_not_yet_due_and_other_queues(q: PgTq) -> None:
    @q.handler()
    def job() -> None:
        pass

    job.options(delay=3600).push()
    job.options(queue="elsewhere").push()
    assert q.pop() is None
    assert q.pop("elsewhere").queue == "elsewhere"


def test_a_claimed_task_is_running_under_a_lease(q: PgTq, dsn: str) -> None:
    @q.handler()
    def job() -> None:
        pass

    pushed = job.push()
    task = q.pop()
    assert task == pushed
    assert task.state is State.RUNNING
    assert task.attempts == 1
    assert task.locked_by is not None
    (owners,) = sql_one(dsn, "SELECT count(*) FROM pgtq_workers WHERE id = %s", (task.locked_by,))
    assert owners == 1


def test_two_owners_popping_in_turn_take_distinct_tasks(q: PgTq, dsn: str) -> None:
    # In turn, not at once: test_concurrent_claimers_never_share_a_task races them.
    other = PgTq(dsn=dsn)

    @q.handler()
    def job(n: int) -> None:
        pass

    for n in range(20):
        job.push(n)
    seen = []
    for _ in range(10):
        seen.append(q.pop().id)
        seen.append(other.pop().id)
    assert len(set(seen)) == 20


def test_concurrent_claimers_never_share_a_task(dsn: str) -> None:
    # Each claimer is another process's queue (its own pool and lease owner),
    # claiming as a worker does: a batch for free threads plus a prefetch.
    claimers = [PgTq(dsn=dsn) for _ in range(6)]
    producer = claimers[0]

    @producer.handler()
    def job(n: int) -> None:
        pass

    job.push_many([[n] for n in range(300)])
    start = threading.Barrier(len(claimers))
    claimed: list[list[tuple[int, int]]] = [[] for _ in claimers]
    errors: list[BaseException] = []

    def claim(index: int) -> None:
        store = claimers[index].app_queue().store
        owner = new_owner_id()
        try:
            store.register_owner(owner)
            start.wait(10)
            while True:
                _, tasks = store.finish_and_claim(owner, (), "default", 2, prefetch=2)
                if not tasks:
                    return
                claimed[index] += [(t.id, t.attempts) for t in tasks]
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(claimers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for claimer in claimers:
        claimer.close()
    assert errors == []
    assert sum(1 for c in claimed if c) >= 2, "one claimer took everything: no race"
    ids = [task_id for c in claimed for task_id, _ in c]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    assert twice == [], f"claimed more than once: {twice}"
    assert len(ids) == 300
    assert {attempt for c in claimed for _, attempt in c} == {1}
    assert sql_one(
        dsn, "SELECT count(*), max(attempts) FROM pgtq_tasks WHERE state = 'running'"
    ) == (300, 1)


def test_a_claim_skips_tasks_another_claimer_has_locked(q: PgTq, dsn: str) -> None:
    @q.handler()
    def job(n: int) -> None:
        pass

    first, second = job.push(1), job.push(2)
    # Another claimer's transaction holds the first task's row, as a claim
    # in progress does: this claim takes the next task instead of waiting.
    holder = psycopg2.connect(dsn)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT id FROM pgtq_tasks WHERE id = %s FOR UPDATE", (first.id,))
        popped: list[Any] = []
        popper = threading.Thread(target=lambda: popped.append(q.pop()), daemon=True)
        popper.start()
        popper.join(5)
        waited = popper.is_alive()
    finally:
        holder.rollback()
        holder.close()
    popper.join(10)
    assert not waited, "the claim waited for the locked task instead of skipping it"
    assert [t.id for t in popped] == [second.id]
    assert q.pop().id == first.id


def test_run_records_the_result(q: PgTq) -> None:
    @q.handler()
    def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b, "attempt": current_task.attempts}

    add.push(2, b=3)
    task = q.pop().run()
    assert task.state is State.SUCCEEDED
    assert task.result == {"sum": 5, "attempt": 1}
    assert task.locked_by is None
    assert task.finished_at >= task.started_at
    assert q.get_task(task.id).result == {"sum": 5, "attempt": 1}


def test_run_of_an_unclaimed_task_is_refused(q: PgTq) -> None:
    @q.handler()
    def job() -> None:
        pass

    with pytest.raises(NotClaimed):
        job.push().run()


def test_failures_retry_with_backoff_then_fail_with_the_traceback(q: PgTq, dsn: str) -> None:
    @q.handler(max_attempts=3)
    def broken() -> None:
        raise ValueError("broken on purpose")

    pushed = broken.push()
    for attempt in (1, 2):
        task = poll_until(q.pop, 5, 0.01, f"attempt {attempt} to be ready")
        task.run()
        assert task.state is State.QUEUED
        assert task.attempts == attempt
        assert "ValueError: broken on purpose" in task.error
        # The database decided run_at: the wait is jittered in the upper half
        # of 0.2 * 2**(attempt - 1) seconds after the attempt ended.
        (wait,) = sql_one(
            dsn,
            "SELECT extract(epoch FROM run_at - started_at) FROM pgtq_tasks WHERE id = %s",
            (pushed.id,),
        )
        ceiling = 0.2 * 2 ** (attempt - 1)
        assert ceiling / 2 <= float(wait) <= ceiling + 0.25
        assert q.pop() is None, "a retry ran before its backoff"
    task = poll_until(q.pop, 5, 0.01, "the last attempt to be ready")
    task.run()
    assert task.state is State.FAILED
    assert task.attempts == 3
    assert "ValueError: broken on purpose" in task.error
    assert task.finished_at is not None
    assert [(h["attempt"], h["state"]) for h in task.history] == [
        (1, "queued"),
        (2, "queued"),
        (3, "failed"),
    ]
    assert all("broken on purpose" in h["error"] for h in task.history)
    assert q.pop() is None


def test_retry_with_a_delay(q: PgTq, dsn: str) -> None:
    @q.handler()
    def later() -> None:
        raise Retry(delay=60, reason="remote busy")

    pushed = later.push()
    task = q.pop().run()
    assert task.state is State.QUEUED
    assert task.error == "Retry: remote busy"
    (wait,) = sql_one(
        dsn,
        "SELECT extract(epoch FROM run_at - now()) FROM pgtq_tasks WHERE id = %s",
        (pushed.id,),
    )
    assert 55 < float(wait) <= 60


def test_retry_counts_against_max_attempts(q: PgTq) -> None:
    @q.handler(max_attempts=1)
    def later() -> None:
        raise Retry(delay=0)

    later.push()
    assert q.pop().run().state is State.FAILED


def test_cancel_ends_the_task(q: PgTq) -> None:
    @q.handler()
    def nope() -> None:
        raise Cancel("account deleted")

    nope.push()
    task = q.pop().run()
    assert task.state is State.CANCELLED
    assert task.error == "account deleted"
    assert q.pop() is None


def test_unknown_names_and_bad_signatures_fail_without_retry(q: PgTq, dsn: str) -> None:
    @q.handler(max_attempts=5)
    def two(a: int, b: int) -> int:
        return a + b

    insert = (
        "INSERT INTO pgtq_tasks (queue, name, args, max_attempts) "
        "VALUES ('default', %s, %s, 5) RETURNING id"
    )
    sql_one(dsn, insert, ("builtins.eval", "[]"))
    sql_one(dsn, insert, ("two", "[1]"))
    unknown = q.pop().run()
    assert unknown.state is State.FAILED
    assert "no handler is registered for task name 'builtins.eval'" in unknown.error
    mismatch = q.pop().run()
    assert mismatch.state is State.FAILED
    assert "do not match the signature" in mismatch.error
    assert mismatch.attempts == 1


def test_a_fitting_argument_shape_does_not_let_other_shapes_through(q: PgTq, dsn: str) -> None:
    @q.handler()
    def greet(name: str, *, loud: bool = False) -> str:
        return name.upper() if loud else name

    def run(args: list[Any], kwargs: dict[str, Any]) -> Task:
        # Stored as another producer might: push() would refuse a bad shape.
        (task_id,) = sql_one(
            dsn,
            "INSERT INTO pgtq_tasks (queue, name, args, kwargs) "
            "VALUES ('default', 'greet', %s, %s) RETURNING id",
            (json.dumps(args), json.dumps(kwargs)),
        )
        task = q.pop()
        assert task is not None and task.id == task_id
        return task.run()

    # Accepted shapes are remembered; each other shape is still checked.
    assert run(["a"], {}).result == "a"
    assert run(["b"], {"loud": True}).result == "B"
    assert run(["c"], {}).result == "c"
    for args, kwargs in [(["x", "y"], {}), ([], {}), (["x"], {"shout": True})]:
        task = run(args, kwargs)
        assert task.state is State.FAILED
        assert "do not match the signature" in task.error


def test_a_result_that_is_not_json_fails_the_task(q: PgTq) -> None:
    @q.handler(max_attempts=3)
    def weird() -> object:
        return object()

    weird.push()
    task = q.pop().run()
    assert task.state is State.FAILED
    assert "cannot be stored as JSON" in task.error


def test_expired_lease_is_rescued_and_the_stale_outcome_is_rejected(
    q: PgTq, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    ran = []

    @q.handler()
    def job() -> str:
        ran.append(current_task.attempts)
        return f"attempt {current_task.attempts}"

    job.push()
    stale = q.pop()
    # Nobody renews the popping process's lease: wait until the database says
    # it has expired, then let another owner rescue and rerun the task.
    poll_until(
        lambda: sql_one(dsn, "SELECT count(*) FROM pgtq_workers WHERE lease_expires_at < now()")[0],
        5,
        0.05,
        "the lease to expire",
    )
    rescuer = PgTq(dsn=dsn, retry_backoff=0.0)
    rescuer.handler(job.func)
    rescued = rescuer.app_queue().store.rescue()
    assert [(r["id"], r["state"]) for r in rescued] == [(stale.id, "queued")]
    fresh = rescuer.pop()
    assert fresh.id == stale.id and fresh.attempts == 2
    assert fresh.run().result == "attempt 2"

    with caplog.at_level(logging.WARNING, logger="flask_pgtq"):
        with pytest.raises(NotClaimed):
            stale.run()
    assert "lease lost" in caplog.text
    final = q.get_task(stale.id)
    assert final.state is State.SUCCEEDED
    assert final.result == "attempt 2"
    assert [(h["attempt"], h["state"]) for h in final.history] == [(1, "lost")]
    assert final.attempts == 2
    assert ran == [2, 1]


def test_rescue_fails_a_task_with_no_attempt_left(q: PgTq, dsn: str) -> None:
    @q.handler(max_attempts=1)
    def job() -> None:
        pass

    job.push()
    task = q.pop()
    # (The lease of the owner of this task: another test's expired worker
    # row may still be there.)
    poll_until(
        lambda: sql_one(
            dsn,
            "SELECT count(*) FROM pgtq_workers WHERE lease_expires_at < now() "
            "AND id = (SELECT locked_by FROM pgtq_tasks WHERE id = %s)",
            (task.id,),
        )[0],
        5,
        0.05,
        "the lease to expire",
    )
    q.app_queue().store.rescue()
    final = q.get_task(task.id)
    assert final.state is State.FAILED
    assert "lease expired" in final.error


def test_run_keeps_the_lease_while_the_handler_runs(q: PgTq, dsn: str) -> None:
    @q.handler()
    def long() -> str:
        # Outlive the 1 s lease several times over; heartbeats keep it.
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert not q.app_queue().store.rescue()
            time.sleep(0.1)
        return "done"

    long.push()
    assert q.pop().run().result == "done"


def test_rescue_leaves_live_workers_alone(q: PgTq) -> None:
    @q.handler()
    def job() -> None:
        pass

    job.push()
    task = q.pop()
    assert q.app_queue().store.rescue() == []
    assert q.get_task(task.id).state is State.RUNNING


def test_backoff_is_exponential_jittered_and_capped() -> None:
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)]:
        delays = [backoff_delay(attempt, 2.0, 60.0) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100, "no jitter"
