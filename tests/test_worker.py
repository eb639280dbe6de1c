"""Worker lifecycle, with real ``flask pgtq worker`` processes."""

from __future__ import annotations

import collections
import signal
import time

import pytest

from flask_pgtq import State
from tests import worker_app
from tests.helpers import poll_until, sql_all, sql_one
from tests.worker_app import add, flaky, mark, probe_context, slow
from tests.workers import runs


def state_of(dsn: str, task_id: int) -> str:
    return sql_one(dsn, "SELECT state FROM pgtq_tasks WHERE id = %s", (task_id,))[0]


def wait_for_state(dsn: str, task_id: int, state: str, timeout: float = 20.0) -> None:
    poll_until(
        lambda: state_of(dsn, task_id) == state,
        timeout,
        0.02,
        f"task {task_id} to be {state}",
    )


@pytest.mark.slow
def test_three_workers_drain_1000_tasks_each_exactly_once(served_app, dsn, start_worker):
    ids = [mark.push(f"t{i}").id for i in range(1000)]
    workers = [start_worker("--concurrency", "2") for _ in range(3)]

    poll_until(
        lambda: (
            sql_one(dsn, "SELECT count(*) FROM pgtq_tasks WHERE state = 'succeeded'")[0] == 1000
        ),
        timeout=120,
        interval=0.1,
        message="all 1000 tasks to succeed",
    )
    executions = collections.Counter(row["task_id"] for row in runs(dsn))
    assert set(executions) == set(ids)
    assert set(executions.values()) == {1}, "a task ran more than once"
    pids = {row["pid"] for row in runs(dsn)}
    assert pids <= {w.pid for w in workers}
    assert len(pids) > 1, "the work was not shared"
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks WHERE attempts <> 1")[0] == 0
    for w in workers:
        w.terminate()
    assert [w.wait() for w in workers] == [0, 0, 0]


def test_result_is_stored_and_read_back(served_app, dsn, start_worker):
    task = add.push(2, 3)
    start_worker()
    wait_for_state(dsn, task.id, "succeeded")
    fresh = worker_app.q.get_task(task.id)
    assert fresh.state is State.SUCCEEDED
    assert fresh.result == 5
    assert fresh.attempts == 1
    assert fresh.started_at <= fresh.finished_at


def test_killed_worker_task_runs_again_on_another(served_app, dsn, start_worker):
    first = start_worker()
    task = slow.push(1.0, "victim")
    poll_until(lambda: runs(dsn, "victim"), 10, 0.02, "the task to start")
    first.kill()
    assert state_of(dsn, task.id) == "running"

    killed_at = time.monotonic()
    second = start_worker()
    wait_for_state(dsn, task.id, "succeeded", timeout=30)
    # Lease 3 s, heartbeat 0.5 s: rescued within the lease plus a few seconds.
    assert time.monotonic() - killed_at < 3.0 + 5.0

    events = [(r["pid"], r["attempt"], r["event"]) for r in runs(dsn, "victim")]
    assert events[0] == (first.pid, 1, "started")
    assert (second.pid, 2, "finished") in events
    assert (first.pid, 1, "finished") not in events
    fresh = worker_app.q.get_task(task.id)
    assert fresh.attempts == 2


def test_sigterm_lets_the_running_task_finish(served_app, dsn, start_worker):
    worker = start_worker()
    task = slow.push(1.5, "graceful")
    poll_until(lambda: runs(dsn, "graceful"), 10, 0.02, "the task to start")
    worker.terminate()
    assert worker.wait() == 0
    assert state_of(dsn, task.id) == "succeeded"
    assert [r["event"] for r in runs(dsn, "graceful")] == ["started", "finished"]
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_workers")[0] == 0


def test_tasks_left_after_the_grace_period_are_released_at_once(served_app, dsn, start_worker):
    worker = start_worker(settings={"PGTQ_SHUTDOWN_GRACE": 0.5})
    task = slow.push(30, "too-long")
    poll_until(lambda: runs(dsn, "too-long"), 10, 0.02, "the task to start")
    stopped = time.monotonic()
    worker.terminate()
    assert worker.wait(10) == 0
    assert time.monotonic() - stopped < 5
    state, attempts, locked_by, history = sql_one(
        dsn,
        "SELECT state, attempts, locked_by, history FROM pgtq_tasks WHERE id = %s",
        (task.id,),
    )
    # Back in the queue now (not after the lease).  The interrupted attempt
    # counts, so a task that never gets to finish cannot come back forever,
    # and the history shows the released run.
    assert (state, attempts, locked_by) == ("queued", 1, None)
    assert [(h["attempt"], h["state"]) for h in history] == [(1, "released")]
    assert "released 1 unfinished task" in worker.output()


def test_a_second_signal_stops_at_once(served_app, dsn, start_worker):
    worker = start_worker(settings={"PGTQ_SHUTDOWN_GRACE": 60})
    task = slow.push(60, "stubborn")
    poll_until(lambda: runs(dsn, "stubborn"), 10, 0.02, "the task to start")
    worker.terminate()
    poll_until(lambda: "stopping" in worker.output(), 10, 0.02, "the worker to stop claiming")
    worker.send(signal.SIGINT)
    assert worker.wait(10) == 0
    assert state_of(dsn, task.id) == "queued"


def test_retries_then_success_in_a_worker(served_app, dsn, start_worker):
    task = flaky.push(2, "flaky")
    start_worker()
    wait_for_state(dsn, task.id, "succeeded")
    assert [r["attempt"] for r in runs(dsn, "flaky")] == [1, 2, 3]
    assert worker_app.q.get_task(task.id).result == 3


def test_each_task_gets_a_fresh_app_context_and_teardown(served_app, dsn, start_worker):
    tasks = [probe_context.push(f"ctx{i}") for i in range(5)]
    worker = start_worker("--burst", ready=False)
    assert worker.wait() == 0
    for task in tasks:
        assert state_of(dsn, task.id) == "succeeded", worker_app.q.get_task(task.id).error
    teardowns = [r["tag"] for r in runs(dsn) if r["event"] == "teardown"]
    assert sorted(teardowns) == sorted(f"ctx{i}" for i in range(5))


def test_unknown_task_name_fails_and_the_worker_goes_on(served_app, dsn, start_worker):
    (bogus,) = sql_one(
        dsn,
        "INSERT INTO pgtq_tasks (queue, name) VALUES ('default', 'os.system') RETURNING id",
    )
    good = mark.push("after-bogus")
    worker = start_worker("--burst", ready=False)
    assert worker.wait() == 0
    failed = worker_app.q.get_task(bogus)
    assert failed.state is State.FAILED
    assert failed.attempts == 1
    assert "no handler is registered for task name 'os.system'" in failed.error
    assert state_of(dsn, good.id) == "succeeded"


def test_notify_wakes_an_idle_worker_long_before_the_poll(served_app, dsn, start_worker):
    start_worker(settings={"PGTQ_POLL_INTERVAL": 30.0})
    # The worker has polled once and now sleeps on LISTEN.
    pushed = time.monotonic()
    task = mark.push("wake-up")
    wait_for_state(dsn, task.id, "succeeded", timeout=10)
    assert time.monotonic() - pushed < 5, "the task waited for the poll, not NOTIFY"


def test_polling_alone_runs_tasks_when_listen_is_off(served_app, dsn, start_worker):
    start_worker(settings={"PGTQ_LISTEN": False, "PGTQ_POLL_INTERVAL": 0.2})
    task = mark.push("polled")
    wait_for_state(dsn, task.id, "succeeded", timeout=10)


def test_burst_runs_what_is_ready_and_exits(served_app, dsn, start_worker):
    tasks = [mark.push(f"b{i}") for i in range(10)]
    later = mark.options(delay=3600).push("later")
    worker = start_worker("--burst", "--concurrency", "3", ready=False)
    assert worker.wait() == 0
    assert all(state_of(dsn, t.id) == "succeeded" for t in tasks)
    assert state_of(dsn, later.id) == "queued"


def test_max_tasks_exits_between_tasks(served_app, dsn, start_worker):
    for i in range(5):
        mark.push(f"m{i}")
    worker = start_worker("--max-tasks", "2", ready=False)
    assert worker.wait() == 0
    states = collections.Counter(row[0] for row in sql_all(dsn, "SELECT state FROM pgtq_tasks"))
    assert states == {"succeeded": 2, "queued": 3}


def test_worker_serves_only_its_queues(served_app, dsn, start_worker):
    mine = mark.options(queue="mine").push("mine")
    other = mark.options(queue="other").push("other")
    worker = start_worker("--queue", "mine", "--burst", ready=False)
    assert worker.wait() == 0
    assert state_of(dsn, mine.id) == "succeeded"
    assert state_of(dsn, other.id) == "queued"


def test_worker_refuses_to_start_on_an_old_schema(dsn, start_worker):
    sql_one(dsn, "DELETE FROM pgtq_schema_version RETURNING version")
    worker = start_worker(ready=False)
    assert worker.wait() != 0
    assert "flask pgtq init-db" in worker.output()


def claim_sizes(dsn: str, name: str) -> list[int]:
    """How many tasks of *name* each claim took: a claim statement stamps
    every task it takes with the same ``started_at`` (its ``now()``)."""
    rows = sql_all(
        dsn, "SELECT count(*) FROM pgtq_tasks WHERE name = %s GROUP BY started_at", (name,)
    )
    return [row[0] for row in rows]


@pytest.mark.slow
def test_short_tasks_are_prefetched_up_to_the_cap(served_app, dsn, start_worker):
    add.push_many([(i, i) for i in range(600)])
    worker = start_worker("--burst", settings={"PGTQ_PREFETCH": 100}, ready=False)
    assert worker.wait() == 0
    sizes = claim_sizes(dsn, "add")
    assert sum(sizes) == 600
    # One handler thread: any claim of more than one task prefetched.
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 1 + 100, sizes


def test_slow_tasks_and_tasks_without_a_spare_attempt_are_not_prefetched(
    served_app, dsn, start_worker
):
    for i in range(4):
        slow.push(0.1, f"s{i}")  # 0.1 s each: two would take longer than 50 ms
    add.options(max_attempts=1).push_many([(i, i) for i in range(100)])
    worker = start_worker("--burst", ready=False)
    assert worker.wait() == 0
    assert claim_sizes(dsn, "slow") == [1, 1, 1, 1]
    assert set(claim_sizes(dsn, "add")) == {1}


@pytest.mark.slow
def test_a_stopping_worker_says_what_it_waits_for_and_shows_as_stopping(
    served_app, dsn, start_worker
):
    worker = start_worker(settings={"PGTQ_SHUTDOWN_GRACE": 30})
    task = slow.push(60, "waited-for")
    poll_until(lambda: runs(dsn, "waited-for"), 10, 0.02, "the task to start")
    cli = served_app.test_cli_runner()
    before = cli.invoke(args=["pgtq", "workers"]).output
    assert " alive " in before and "stopping" not in before
    worker.terminate()
    expected = f"waiting up to 30s for task {task.id}; Ctrl-C again to requeue now"
    poll_until(lambda: expected in worker.output(), 10, 0.02, "the waiting line")
    (row,) = cli.invoke(args=["pgtq", "workers"]).output.splitlines()[1:]
    assert row.split()[6] == "stopping", row
    (listed,) = worker_app.q.admin.workers()
    assert listed.stopping_since is not None
    worker.send(signal.SIGINT)
    assert worker.wait(10) == 0
    assert state_of(dsn, task.id) == "queued"


@pytest.mark.slow
def test_a_requeued_task_forgets_the_progress_of_its_last_run(served_app, dsn, start_worker):
    from tests.worker_app import report_then_sleep

    settings = {"PGTQ_SHUTDOWN_GRACE": 0.2, "PGTQ_LEASE": 2.0, "PGTQ_HEARTBEAT_INTERVAL": 0.3}
    task = report_then_sleep.push(60, "requeue")
    worker = start_worker(settings=settings)
    poll_until(lambda: runs(dsn, "requeue"), 10, 0.02, "the task to start")
    progress = lambda: sql_one(dsn, "SELECT progress FROM pgtq_tasks WHERE id = %s", (task.id,))[0]  # noqa: E731
    assert progress() == {"step": 1, "of": 2}
    worker.terminate()  # released at shutdown
    assert worker.wait(10) == 0
    assert progress() is None
    # Rescued after its worker was killed: the lost run is in the history
    # too (the rescue clears progress the same way; the next run sets it).
    worker = start_worker(settings=settings)
    poll_until(lambda: len(runs(dsn, "requeue")) == 2, 10, 0.02, "the second run")
    assert progress() == {"step": 1, "of": 2}
    worker.kill()
    rescuer = start_worker(settings=settings)
    poll_until(lambda: len(runs(dsn, "requeue")) == 3, 20, 0.05, "the rescued run")
    history = sql_one(dsn, "SELECT history FROM pgtq_tasks WHERE id = %s", (task.id,))[0]
    assert [h["state"] for h in history] == ["released", "lost"]
    rescuer.kill()
