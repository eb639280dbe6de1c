"""Run-time control: pauses of queues and handlers, obeyed by every worker."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from flask_pgtq import ConfigurationError, signals
from tests import worker_app
from tests.helpers import poll_until, sql_all, sql_one
from tests.worker_app import add, mark
from tests.workers import runs


def state(dsn: str, task_id: int) -> str:
    return str(sql_one(dsn, "SELECT state FROM pgtq_tasks WHERE id = %s", (task_id,))[0])


@pytest.mark.slow
def test_a_paused_queue_is_claimed_by_no_worker_until_resumed(served_app, dsn, start_worker):
    workers = [start_worker("-q", "default", "-q", "other") for _ in range(3)]
    q = worker_app.q
    pause = q.pause("default", reason="maintenance")
    assert (pause.kind, pause.target, pause.reason, pause.until) == (
        "queue",
        "default",
        "maintenance",
        None,
    )
    assert "@" in (pause.paused_by or "")
    held = mark.push("held")
    # Workers are alive and claiming: a task of another queue runs...
    probes = [mark.options(queue="other").push(f"probe{i}") for i in range(10)]
    for probe in probes:
        poll_until(lambda p=probe: state(dsn, p.id) == "succeeded", 15, 0.05, "a probe to run")
    # ...but nothing of the paused queue started on any of the 3 workers.
    assert state(dsn, held.id) == "queued"
    assert runs(dsn, "held") == []
    assert [(p.kind, p.target) for p in q.pauses()] == [("queue", "default")]
    resumed_at = time.monotonic()
    assert q.resume("default") is True
    poll_until(lambda: state(dsn, held.id) == "succeeded", 15, 0.02, "the resumed task")
    # Woken by NOTIFY, not by a poll (the workers poll every 30 s).
    assert time.monotonic() - resumed_at < 5
    assert q.resume("default") is False
    assert all(w.proc.poll() is None for w in workers)


@pytest.mark.slow
def test_a_paused_handler_is_skipped_while_others_of_its_queue_run(served_app, dsn, start_worker):
    start_worker()
    q = worker_app.q
    q.pause(handler="add")
    held = add.push(1, 2)
    ran = [mark.push(f"m{i}") for i in range(5)]
    for task in ran:
        poll_until(lambda t=task: state(dsn, t.id) == "succeeded", 15, 0.05, "mark to run")
    assert state(dsn, held.id) == "queued"
    q.resume(handler="add")
    poll_until(lambda: state(dsn, held.id) == "succeeded", 15, 0.02, "the resumed handler")


@pytest.mark.slow
def test_a_timed_pause_ends_by_itself(served_app, dsn, start_worker):
    start_worker(settings={"PGTQ_HEARTBEAT_INTERVAL": 0.2, "PGTQ_LEASE": 2.0})
    q = worker_app.q
    ended: list[dict] = []
    pause = q.pause("default", until=timedelta(seconds=1.5))
    assert pause.until is not None
    task = mark.push("timed")
    poll_until(lambda: state(dsn, task.id) == "succeeded", 15, 0.02, "the task after the pause")
    (started,) = sql_one(dsn, "SELECT started_at FROM pgtq_tasks WHERE id = %s", (task.id,))
    assert started >= pause.until  # never before the pause's end
    # A worker removed the pause that ran out.
    poll_until(lambda: not sql_all(dsn, "SELECT 1 FROM pgtq_pauses"), 10, 0.05, "the row to go")
    assert q.pauses() == []
    assert ended == []


def test_pause_arguments_are_checked(served_app) -> None:
    q = worker_app.q
    with pytest.raises(ConfigurationError):
        q.pause()
    with pytest.raises(ConfigurationError):
        q.pause("default", handler="add")
    with pytest.raises(ConfigurationError):
        q.pause("bad queue name!")
    with pytest.raises(ConfigurationError):
        q.pause("default", until=-5)


def test_pause_and_resume_send_signals(served_app) -> None:
    q = worker_app.q
    seen: list[tuple[str, dict]] = []

    def on_paused(sender, **payload):
        seen.append(("paused", payload))

    def on_resumed(sender, **payload):
        seen.append(("resumed", payload))

    with (
        signals.paused.connected_to(on_paused, served_app),
        signals.resumed.connected_to(on_resumed, served_app),
    ):
        q.pause(handler="mark", until=60, reason="deploy", by="ops")
        q.resume(handler="mark")
    assert [kind for kind, _ in seen] == ["paused", "resumed"]
    assert seen[0][1]["paused_by"] == "ops" and seen[0][1]["until"] is not None
    assert seen[1][1] == {"kind": "handler", "target": "mark", "ended": "resumed"}


def test_pushes_to_a_paused_queue_are_accepted_and_pop_skips_them(served_app, dsn) -> None:
    q = worker_app.q
    q.pause("default")
    task = mark.push("held")
    assert state(dsn, task.id) == "queued"
    assert q.pop() is None
    q.resume("default")
    popped = q.pop()
    assert popped is not None and popped.id == task.id


@pytest.mark.slow
def test_snooze_five_times_then_succeed_spends_one_attempt(served_app, dsn, start_worker):
    from tests.worker_app import sleepy

    start_worker()
    task = sleepy.push(5, "sleepy")  # max_attempts=1: a spent attempt would fail it
    poll_until(lambda: state(dsn, task.id) == "succeeded", 20, 0.05, "the task to succeed")
    attempts, snoozes, result, history, error = sql_one(
        dsn,
        "SELECT attempts, snoozes, result, history, error FROM pgtq_tasks WHERE id = %s",
        (task.id,),
    )
    assert (attempts, snoozes, result) == (1, 5, 5)
    assert [h["state"] for h in history] == ["snoozed"] * 5
    assert all(h["error"] == "Snooze: not yet" for h in history)
    assert error is None
    assert len(runs(dsn, "sleepy")) == 6


@pytest.mark.slow
def test_endless_snoozing_fails_with_a_clear_reason(served_app, dsn, start_worker):
    from tests.worker_app import sleepy

    start_worker()
    task = sleepy.push(1000, "endless")
    poll_until(lambda: state(dsn, task.id) == "failed", 30, 0.05, "the task to fail")
    (error, snoozes) = sql_one(
        dsn, "SELECT error, snoozes FROM pgtq_tasks WHERE id = %s", (task.id,)
    )
    assert snoozes == 10
    assert "more than max_snoozes (10)" in error
