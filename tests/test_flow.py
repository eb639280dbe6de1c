"""Scheduling and flow control: delays, priorities and queues, unique tasks,
timeouts, cancellation, periodic tasks, concurrency and rate limits,
retention.  Against a real PostgreSQL, with several worker processes where
it matters."""

from __future__ import annotations

import collections
import threading
import time
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from flask_pgtq import ConfigurationError, PgTq, State
from flask_pgtq.periodic import DEFAULT_MISFIRE_GRACE, Schedule, Scheduler
from tests import worker_app
from tests.helpers import poll_until, sql_all, sql_one
from tests.worker_app import (
    block,
    cooperative,
    exclusive,
    limited,
    mark,
    spin,
    stubborn,
)
from tests.workers import runs


@pytest.fixture
def q(standalone_q: PgTq) -> PgTq:
    return standalone_q


def state(task_id: int) -> State:
    return worker_app.q.get_task(task_id).state


# -- delays -------------------------------------------------------------------


def test_a_delayed_task_starts_on_time(served_app, dsn, start_worker):
    start_worker(settings={"PGTQ_POLL_INTERVAL": 0.2})
    eta = datetime.now(UTC) + timedelta(seconds=1.5)
    delayed = mark.options(delay=timedelta(seconds=1)).push("delayed")
    at_eta = mark.options(eta=eta).push("at-eta")
    poll_until(lambda: state(at_eta.id) is State.SUCCEEDED, 10, 0.02)
    for task in (delayed, at_eta):
        (late,) = sql_one(
            dsn,
            "SELECT extract(epoch FROM started_at - run_at) FROM pgtq_tasks WHERE id = %s",
            (task.id,),
        )
        # Never early, and late by at most the poll interval (plus a margin).
        assert 0 <= float(late) < 0.2 + 0.3


def test_naive_eta_is_refused(q):
    @q.handler()
    def job() -> None:
        pass

    with pytest.raises(ValueError, match="aware"):
        job.options(eta=datetime.now())


# -- priorities and queues ------------------------------------------------------


def test_a_flood_in_one_queue_does_not_starve_another(served_app, dsn, start_worker):
    flood = [mark.options(queue="flood").push(f"f{i}").id for i in range(150)]
    trickle = [mark.options(queue="trickle").push(f"t{i}").id for i in range(5)]
    start_worker("--queue", "flood", "--queue", "trickle")
    poll_until(lambda: all(state(t) is State.SUCCEEDED for t in trickle), 30, 0.05)
    # Claims alternate between the queues, and so do prefetched tasks in the
    # worker: the trickle runs among the first tasks, not after the flood.
    # (Execution order, from the handlers' own records: one thread.)
    order = [row["task_id"] for row in runs(dsn)]
    last_trickle = max(order.index(t) for t in trickle)
    assert last_trickle < 20, f"{last_trickle - 4} flood tasks ran before 5 trickle tasks"
    assert len(flood) == 150


def test_higher_priority_runs_first_in_a_worker(served_app, dsn, start_worker):
    low = [mark.push(f"low{i}").id for i in range(5)]
    high = [mark.options(priority=10).push(f"high{i}").id for i in range(5)]
    worker = start_worker("--burst", ready=False)
    assert worker.wait() == 0
    order = [r["task_id"] for r in runs(dsn)]
    assert order == high + low


# -- unique tasks ---------------------------------------------------------------


def test_unique_key_returns_the_existing_task(q, dsn):
    @q.handler()
    def sync(account: int) -> None:
        pass

    first = sync.options(unique_key="sync:7").push(7)
    again = sync.options(unique_key="sync:7").push(7)
    other = sync.options(unique_key="sync:8").push(8)
    assert first.is_new is True and again.is_new is False
    assert again.id == first.id and other.id != first.id
    assert sync.push(7).is_new is None  # no key: plain push
    # Running still holds the key; finishing frees it.
    task = q.pop()
    assert sync.options(unique_key="sync:7").push(7).id == first.id
    task.run()
    freed = sync.options(unique_key="sync:7").push(7)
    assert freed.is_new is True and freed.id != first.id


def test_unique_for_holds_the_key_after_the_task_ends(q):
    @q.handler()
    def digest() -> None:
        pass

    first = digest.options(unique_key="digest", unique_for=3600).push()
    q.pop().run()
    again = digest.options(unique_key="digest", unique_for=3600).push()
    assert again.is_new is False and again.id == first.id
    short = digest.options(unique_key="short", unique_for=0.2).push()
    q.pop().run()
    poll_until(
        lambda: digest.options(unique_key="short", unique_for=0.2).push().is_new,
        5,
        0.05,
        "the short unique_for to run out",
    )
    assert short.id


def test_concurrent_pushes_of_one_key_make_one_task(q, dsn):
    @q.handler()
    def once() -> None:
        pass

    barrier = threading.Barrier(8)
    results: list[tuple[int, bool]] = []

    def pusher() -> None:
        barrier.wait()
        task = once.options(unique_key="race").push()
        results.append((task.id, task.is_new))

    threads = [threading.Thread(target=pusher) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({task_id for task_id, _ in results}) == 1
    assert sorted(is_new for _, is_new in results) == [False] * 7 + [True]
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == 1


def test_a_pusher_that_rolls_back_frees_the_key(q, dsn):
    @q.handler()
    def once() -> None:
        pass

    conn = psycopg2.connect(dsn)
    try:
        held = once.options(unique_key="rb", connection=conn).push()
        assert held.is_new
        result: list = []
        waiter = threading.Thread(
            target=lambda: result.append(once.options(unique_key="rb").push())
        )
        waiter.start()
        # The second pusher waits on the uncommitted key...
        poll_until(
            lambda: sql_one(
                dsn,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()",
            )[0],
            5,
            0.02,
            "the second push to wait for the first",
        )
        conn.rollback()
        waiter.join(5)
    finally:
        conn.close()
    # ...and gets a new task once the first rolled back.
    (task,) = result
    assert task.is_new is True
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == 1


def test_unique_for_needs_a_key(q):
    @q.handler()
    def job() -> None:
        pass

    with pytest.raises(ConfigurationError):
        job.options(unique_for=10)


# -- timeouts -------------------------------------------------------------------


def test_a_busy_handler_is_stopped_at_its_timeout(served_app, dsn, start_worker):
    worker = start_worker()
    task = spin.push(30, "spinner")
    poll_until(lambda: state(task.id) is State.FAILED, 20, 0.05, "both attempts to time out")
    final = worker_app.q.get_task(task.id)
    assert final.attempts == 2
    assert "TaskTimeout" in final.error
    assert [r["event"] for r in runs(dsn, "spinner")] == ["started", "started"]
    (ran_for,) = sql_one(
        dsn,
        "SELECT extract(epoch FROM finished_at - started_at) FROM pgtq_tasks WHERE id = %s",
        (task.id,),
    )
    assert float(ran_for) < 2.0
    # Stopped by an exception in its thread: the worker process carries on.
    later = mark.push("after-spin")
    poll_until(lambda: state(later.id) is State.SUCCEEDED, 10, 0.05)
    assert runs(dsn, "after-spin")[0]["pid"] == worker.pid
    assert "restarting" not in worker.output()


def test_a_blocked_handler_is_ended_by_restarting_the_worker(served_app, dsn, start_worker):
    worker = start_worker()
    task = block.push(60, "blocked")
    poll_until(lambda: state(task.id) is State.FAILED, 20, 0.05, "the timeout to be recorded")
    assert "TaskTimeout" in worker_app.q.get_task(task.id).error
    poll_until(lambda: "restarting" in worker.output(), 15, 0.05, "the worker to restart")
    # The same process (exec keeps the pid) comes back and serves again.
    later = mark.push("after-restart")
    poll_until(lambda: state(later.id) is State.SUCCEEDED, 20, 0.05)
    assert runs(dsn, "after-restart")[0]["pid"] == worker.pid
    assert [r["event"] for r in runs(dsn, "blocked")] == ["started"]
    worker.terminate()
    assert worker.wait() == 0


# -- cancellation ---------------------------------------------------------------


def test_cancel_a_queued_task_at_once(q):
    @q.handler()
    def job() -> None:
        pass

    task = job.push()
    cancelled = q.cancel(task.id, reason="not needed")
    assert cancelled.state is State.CANCELLED
    assert cancelled.error == "not needed"
    assert q.pop() is None
    assert q.cancel(task.id).state is State.CANCELLED  # idempotent


def test_cancel_a_running_task_that_checks(served_app, dsn, start_worker):
    start_worker(settings={"PGTQ_CANCEL_GRACE": 30})
    task = cooperative.push("polite")
    poll_until(lambda: runs(dsn, "polite"), 10, 0.02, "the task to start")
    asked = time.monotonic()
    assert worker_app.q.cancel(task.id).state is State.RUNNING
    poll_until(lambda: state(task.id) is State.CANCELLED, 10, 0.02)
    assert time.monotonic() - asked < 3, "woken by NOTIFY, not after the grace period"
    assert [r["event"] for r in runs(dsn, "polite")] == ["started", "noticed"]


def test_cancel_a_running_task_that_ignores_it(served_app, dsn, start_worker):
    worker = start_worker(settings={"PGTQ_CANCEL_GRACE": 0.5})
    task = stubborn.push("deaf")
    poll_until(lambda: runs(dsn, "deaf"), 10, 0.02, "the task to start")
    worker_app.q.cancel(task.id)
    poll_until(lambda: state(task.id) is State.CANCELLED, 10, 0.02)
    assert "stopped by the worker" in worker_app.q.get_task(task.id).error
    later = mark.push("after-cancel")
    poll_until(lambda: state(later.id) is State.SUCCEEDED, 10, 0.05)
    assert runs(dsn, "after-cancel")[0]["pid"] == worker.pid


def test_cancel_of_a_finished_or_missing_task(q):
    from flask_pgtq import TaskNotFound

    @q.handler()
    def job() -> str:
        return "done"

    task = job.push()
    q.pop().run()
    assert q.cancel(task.id).state is State.SUCCEEDED
    with pytest.raises(TaskNotFound):
        q.cancel(123456)


# -- periodic tasks -------------------------------------------------------------


@pytest.mark.slow
def test_each_fire_time_makes_exactly_one_task_with_several_workers(served_app, dsn, start_worker):
    workers = [start_worker("--queue", "periodic") for _ in range(3)]
    poll_until(lambda: len(runs(dsn, "tick")) >= 4, 20, 0.1, "four ticks")
    for w in workers:
        w.terminate()
    assert [w.wait() for w in workers] == [0, 0, 0]
    fires = sql_all(dsn, "SELECT fire_at, task_id FROM pgtq_periodic ORDER BY fire_at")
    tasks = [
        row[0]
        for row in sql_all(dsn, "SELECT id FROM pgtq_tasks WHERE name = 'every_second' ORDER BY id")
    ]
    # One task per fire time, whole seconds apart, each run once.
    assert sorted(task_id for _, task_id in fires) == tasks
    seconds = [fire_at for fire_at, _ in fires]
    assert all(f.microsecond == 0 for f in seconds)
    assert len(set(seconds)) == len(seconds) >= 4
    executions = collections.Counter(r["task_id"] for r in runs(dsn, "tick"))
    assert set(executions.values()) == {1}
    assert set(executions) <= set(tasks)


def test_a_fire_time_is_not_repeated_after_its_task_is_deleted(q, dsn):
    @q.periodic("0 3 * * *", tz="Europe/Paris", args=[1])
    def nightly(n: int) -> None:
        pass

    (schedule,) = q.schedules.values()
    fire = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)  # 03:00 Paris, DST day
    store = q.app_queue().store
    params = schedule.task_params("default", 3)
    first = store.fire_periodic(schedule.key, fire, params)
    assert first is not None
    assert store.fire_periodic(schedule.key, fire, params) is None
    sql_one(dsn, "DELETE FROM pgtq_tasks RETURNING id")
    assert store.fire_periodic(schedule.key, fire, params) is None


def test_a_missed_fire_time_fires_once_within_the_grace_and_never_past_it(q, dsn):
    # Cron times on the database's clock: one missed by more than the grace
    # (no worker was running then), one missed by less.
    now = q.app_queue().store.database_now()
    grace = timedelta(seconds=DEFAULT_MISFIRE_GRACE)
    too_old = (now - grace - timedelta(minutes=10)).replace(second=0, microsecond=0)
    in_grace = (now - grace + timedelta(minutes=10)).replace(second=0, microsecond=0)

    @q.periodic(f"{too_old.minute} {too_old.hour} * * *", name="too_old")
    def too_old_job() -> None:
        pass

    @q.periodic(f"{in_grace.minute} {in_grace.hour} * * *", name="in_grace")
    def in_grace_job() -> None:
        pass

    # Missed every minute for hours: only the latest minute fires.
    @q.periodic("* * * * *", name="every_minute")
    def every_minute_job() -> None:
        pass

    # A worker comes up, and another one: each fire time makes one task.
    for _ in range(2):
        scheduler = Scheduler(q.app_queue().store, list(q.schedules.values()))
        scheduler.tick()
        scheduler.tick()
    fired = sql_all(
        dsn,
        "SELECT t.name, p.fire_at FROM pgtq_periodic AS p "
        "JOIN pgtq_tasks AS t ON t.id = p.task_id ORDER BY t.name",
    )
    names = [name for name, _ in fired]
    assert "too_old" not in names, "a fire time older than the misfire grace fired"
    assert names == ["every_minute", "in_grace"]
    assert dict(fired)["in_grace"] == in_grace
    assert (now - dict(fired)["every_minute"]) < timedelta(minutes=1)
    assert sql_one(dsn, "SELECT count(*) FROM pgtq_tasks")[0] == 2


def test_schedules_follow_their_time_zone(q):
    @q.periodic("30 2 * * *", tz="America/New_York")
    def early() -> None:
        pass

    (schedule,) = q.schedules.values()
    assert isinstance(schedule, Schedule)
    now = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    assert schedule.latest_fire(now) == datetime(2026, 1, 15, 7, 30, tzinfo=UTC)
    summer = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)
    assert schedule.latest_fire(summer) == datetime(2026, 7, 15, 6, 30, tzinfo=UTC)

    def other() -> None:
        pass

    with pytest.raises(ConfigurationError):
        q.periodic("not cron", name="a")(other)
    with pytest.raises(ConfigurationError):
        q.periodic("* * * * *", tz="Mars/Olympus", name="b")(other)


# -- concurrency and rate limits ---------------------------------------------------


@pytest.mark.slow
def test_concurrency_one_never_runs_two_at_once_anywhere(served_app, dsn, start_worker):
    # Frequent polls: every worker keeps trying, so the lock is contended.
    settings = {"PGTQ_POLL_INTERVAL": 0.05}
    workers = [start_worker("--concurrency", "3", settings=settings) for _ in range(3)]
    ids = [exclusive.push(f"x{i}").id for i in range(8)]
    poll_until(lambda: all(state(i) is State.SUCCEEDED for i in ids), 60, 0.05)
    events = sorted(
        (r["at"], r["event"])
        for r in sql_all(dsn, "SELECT at, event FROM test_runs WHERE tag LIKE 'x%%'")
        for r in [dict(zip(("at", "event"), r, strict=True))]
    )
    running = peak = 0
    for _, event in events:
        running += 1 if event == "started" else -1
        peak = max(peak, running)
    # While one task ran, the two other workers polled every 50 ms and were
    # woken by each push: none of them started a second one.
    assert peak == 1
    for w in workers:
        w.terminate()
        w.wait()


@pytest.mark.slow
def test_rate_limit_caps_starts_per_period_across_workers(served_app, dsn, start_worker):
    settings = {"PGTQ_POLL_INTERVAL": 0.05}
    workers = [start_worker("--concurrency", "2", settings=settings) for _ in range(3)]
    ids = [limited.push(f"r{i}").id for i in range(12)]
    poll_until(lambda: all(state(i) is State.SUCCEEDED for i in ids), 60, 0.05)
    starts = [
        row[0]
        for row in sql_all(
            dsn, "SELECT started_at FROM pgtq_tasks WHERE name = 'limited' ORDER BY started_at"
        )
    ]
    for i, start in enumerate(starts):
        in_window = [s for s in starts[i:] if (s - start).total_seconds() < 1.0]
        assert len(in_window) <= 4, f"{len(in_window)} starts within one second"
    for w in workers:
        w.terminate()
        w.wait()


def test_limits_apply_to_pop_too(q):
    @q.handler(concurrency=1)
    def solo() -> None:
        pass

    solo.push()
    solo.push()
    first = q.pop()
    assert first is not None
    assert q.pop() is None, "a second task of a concurrency=1 handler was claimed"
    first.run()
    assert q.pop() is not None


def test_bad_limits_are_refused(q):
    def job() -> None:
        pass

    with pytest.raises(ConfigurationError, match="rate_limit"):
        q.handler(rate_limit="lots")(job)
    with pytest.raises(ConfigurationError, match="concurrency"):
        q.handler(concurrency=0)(job)


# -- retention --------------------------------------------------------------------


def test_workers_delete_finished_tasks_past_retention(served_app, dsn, start_worker):
    settings = {"PGTQ_KEEP_SUCCEEDED": 0.5, "PGTQ_PRUNE_INTERVAL": 0.3}
    ids = [mark.push(f"keep{i}").id for i in range(20)]
    failing = worker_app.flaky.options(max_attempts=1).push(5, "kept")
    start_worker(settings=settings)
    poll_until(
        lambda: sql_one(dsn, "SELECT count(*) FROM pgtq_tasks WHERE id = ANY(%s)", (ids,))[0] == 0,
        20,
        0.1,
        "succeeded tasks to be deleted",
    )
    assert state(failing.id) is State.FAILED  # failed ones are kept (KEEP_FAILED=None)
