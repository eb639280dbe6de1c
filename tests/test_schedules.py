"""Schedules stored in the database, edited while workers run."""

from __future__ import annotations

import time

import pytest

from flask_pgtq import ConfigurationError, UnknownTask
from flask_pgtq.schedules import ScheduleNotFound
from tests import worker_app
from tests.helpers import poll_until, sql_all
from tests.workers import runs


def fired(dsn: str, name: str) -> list[tuple]:
    return sql_all(
        dsn,
        "SELECT fire_at, task_id FROM pgtq_periodic WHERE schedule = %s ORDER BY fire_at",
        (f"db:{name}",),
    )


@pytest.mark.slow
def test_a_schedule_added_at_run_time_fires_once_per_time_across_workers(
    served_app, dsn, start_worker
):
    workers = [start_worker(settings={"PGTQ_POLL_INTERVAL": 30}) for _ in range(3)]
    q = worker_app.q
    added = time.monotonic()
    info = q.schedules.add("tick", "* * * * * *", "mark", args=["tick"])
    assert (info.source, info.enabled, info.handler) == ("database", True, "mark")
    assert info.next_fire is not None
    poll_until(lambda: fired(dsn, "tick"), 10, 0.05, "the first fire")
    assert time.monotonic() - added < 3  # picked up within about a second
    poll_until(lambda: len(fired(dsn, "tick")) >= 4, 15, 0.1, "four fire times")
    q.schedules.disable("tick")
    # Let any fire in flight land, then nothing more fires.
    time.sleep(1.5)  # the schedule fires every second: waiting is the point
    count = len(fired(dsn, "tick"))
    time.sleep(2.5)
    assert len(fired(dsn, "tick")) == count
    times = [row[0] for row in fired(dsn, "tick")]
    assert len(times) == len(set(times))  # one task per fire time
    ids = {row[1] for row in fired(dsn, "tick")}
    poll_until(lambda: len(runs(dsn, "tick")) == len(ids), 15, 0.1, "every fired task to run")
    assert sorted(r["task_id"] for r in runs(dsn, "tick")) == sorted(ids)  # each ran once
    listed = {s.name: s for s in q.schedules.list()}
    assert listed["tick"].enabled is False and listed["tick"].next_fire is None
    assert listed["tick"].last_task_id in ids
    assert all(w.proc.poll() is None for w in workers)


@pytest.mark.slow
def test_update_enable_run_now_and_remove(served_app, dsn, start_worker):
    start_worker()
    q = worker_app.q
    q.schedules.add("nightly", "0 3 * * *", "mark", args=["night"], tz="Europe/Paris")
    info = q.schedules.update("nightly", cron="* * * * * *", args=["updated"])
    assert info.cron == "* * * * * *" and info.args == ["updated"] and info.tz == "Europe/Paris"
    poll_until(lambda: runs(dsn, "updated"), 10, 0.05, "the updated schedule to fire")
    q.schedules.disable("nightly")
    q.schedules.enable("nightly")
    assert {s.name: s.enabled for s in q.schedules.list()}["nightly"] is True
    q.schedules.update("nightly", cron="0 3 1 1 *", args=["now"])
    task = q.schedules.run_now("nightly")
    poll_until(lambda: runs(dsn, "now"), 10, 0.05, "run_now's task")
    assert runs(dsn, "now")[0]["task_id"] == task.id
    q.schedules.remove("nightly")
    assert "nightly" not in {s.name for s in q.schedules.list()}
    with pytest.raises(ScheduleNotFound):
        q.schedules.remove("nightly")


def test_bad_schedules_are_refused_and_not_stored(served_app, dsn) -> None:
    q = worker_app.q
    with pytest.raises(UnknownTask):
        q.schedules.add("a", "* * * * *", "no_such_handler")
    with pytest.raises(ConfigurationError, match="cron"):
        q.schedules.add("b", "every day", "mark", args=["x"])
    with pytest.raises(ConfigurationError, match="time zone"):
        q.schedules.add("c", "* * * * *", "mark", args=["x"], tz="Mars/Olympus")
    with pytest.raises(ConfigurationError, match="do not fit"):
        q.schedules.add("d", "* * * * *", "mark", args=["x", "y"])
    assert sql_all(dsn, "SELECT name FROM pgtq_schedules") == []
    q.schedules.add("e", "* * * * *", "mark", args=["x"])
    with pytest.raises(ConfigurationError, match="exists already"):
        q.schedules.add("e", "* * * * *", "mark", args=["x"])
    with pytest.raises(ConfigurationError, match="cron"):
        q.schedules.update("e", cron="never")
    with pytest.raises(ScheduleNotFound):
        q.schedules.disable("missing")
