"""Signals: who sends them, when, with what payload, and what a failing receiver changes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from blinker import Signal
from flask import Flask, current_app, g

from flask_pgtq import Cancel, PgTq, State, Task, signals
from tests.helpers import poll_until, sql_one

TASK_SIGNALS = {
    "task_pushed": signals.task_pushed,
    "task_started": signals.task_started,
    "task_succeeded": signals.task_succeeded,
    "task_retrying": signals.task_retrying,
    "task_failed": signals.task_failed,
    "task_cancelled": signals.task_cancelled,
}


class Recorder:
    """Connects to every task signal and keeps what each one was sent."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, dict[str, Any]]] = []
        self._receivers: list[Callable[..., None]] = []

    def connect(self, stack: ExitStack) -> None:
        for name, signal in TASK_SIGNALS.items():
            receiver = self._receiver(name)
            self._receivers.append(receiver)  # blinker keeps weak references
            stack.enter_context(signal.connected_to(receiver))

    def _receiver(self, name: str) -> Callable[..., None]:
        def receive(sender: Any, **payload: Any) -> None:
            context_app = current_app._get_current_object() if current_app else None
            self.events.append((name, sender, {**payload, "_app": context_app}))

        return receive

    def names(self) -> list[str]:
        return [name for name, _, _ in self.events]

    def payload(self, name: str) -> dict[str, Any]:
        (found,) = [payload for n, _, payload in self.events if n == name]
        return found

    def clear(self) -> None:
        self.events.clear()


@pytest.fixture
def queue_settings() -> dict[str, Any]:
    return {"PGTQ_RETRY_BACKOFF": 0.05, "PGTQ_RETRY_BACKOFF_MAX": 0.05}


@pytest.fixture
def q(q: PgTq) -> PgTq:
    failures: dict[int, int] = {}

    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    @q.handler(max_attempts=2)
    def flaky() -> str:
        from flask_pgtq import current_task

        if failures.setdefault(current_task.id, 0) == 0:
            failures[current_task.id] += 1
            raise RuntimeError("first attempt fails")
        return "second time lucky"

    @q.handler(max_attempts=2)
    def broken() -> None:
        time.sleep(0.02)  # so that the failed attempt has a measurable duration
        raise RuntimeError("always broken")

    @q.handler()
    def give_up() -> None:
        raise Cancel("not needed any more")

    return q


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    recorder = Recorder()
    with ExitStack() as stack:
        recorder.connect(stack)
        yield recorder


def pop_and_run(q: PgTq, task_id: int) -> Task:
    """Pop the task (waiting until it is ready) and run it."""
    task = poll_until(q.pop, timeout=5, message=f"task {task_id} to be ready")
    assert task.id == task_id
    return task.run()


def db_state(dsn: str, task_id: int) -> str:
    row = sql_one(dsn, "SELECT state FROM pgtq_tasks WHERE id = %s", (task_id,))
    assert row is not None
    return str(row[0])


# -- what fires, with what --------------------------------------------------------------


def test_push_sends_task_pushed(app: Flask, q: PgTq, recorder: Recorder, dsn: str) -> None:
    task = q.push("add", 2, 3)
    assert recorder.names() == ["task_pushed"]
    (_, sender, payload) = recorder.events[0]
    assert sender is app
    assert payload["task"] == task
    assert payload["task"].args == [2, 3]
    assert db_state(dsn, task.id) == "queued", "sent after the insert"


def test_success_sends_started_then_succeeded(
    app: Flask, q: PgTq, recorder: Recorder, dsn: str
) -> None:
    pushed = q.push("add", 2, 3)
    recorder.clear()
    pop_and_run(q, pushed.id)
    assert recorder.names() == ["task_started", "task_succeeded"]
    assert all(sender is app for _, sender, _ in recorder.events)

    started = recorder.payload("task_started")
    assert started["task"].id == pushed.id
    assert started["_app"] is app, "task_started is sent inside the app context"

    succeeded = recorder.payload("task_succeeded")
    assert succeeded["task"].id == pushed.id
    assert succeeded["result"] == 5
    assert isinstance(succeeded["duration"], float) and succeeded["duration"] >= 0
    assert set(succeeded) == {"task", "result", "duration", "_app"}
    assert db_state(dsn, pushed.id) == "succeeded"


def test_failure_then_success_sends_retrying(
    app: Flask, q: PgTq, recorder: Recorder, dsn: str
) -> None:
    pushed = q.push("flaky")
    recorder.clear()

    pop_and_run(q, pushed.id)
    assert recorder.names() == ["task_started", "task_retrying"]
    retrying = recorder.payload("task_retrying")
    assert retrying["task"].id == pushed.id
    assert "first attempt fails" in retrying["error"]
    assert "Traceback" in retrying["error"]
    assert 0 <= retrying["delay"] <= 0.05
    assert retrying["duration"] >= 0
    assert set(retrying) == {"task", "error", "delay", "duration", "_app"}
    assert db_state(dsn, pushed.id) == "queued"

    recorder.clear()
    done = pop_and_run(q, pushed.id)
    assert recorder.names() == ["task_started", "task_succeeded"]
    assert recorder.payload("task_succeeded")["result"] == "second time lucky"
    assert done.attempts == 2
    assert db_state(dsn, pushed.id) == "succeeded"


def test_exhausted_attempts_send_failed(app: Flask, q: PgTq, recorder: Recorder, dsn: str) -> None:
    pushed = q.push("broken")
    pop_and_run(q, pushed.id)
    recorder.clear()
    pop_and_run(q, pushed.id)
    assert recorder.names() == ["task_started", "task_failed"]
    assert all(sender is app for _, sender, _ in recorder.events)
    failed = recorder.payload("task_failed")
    assert failed["task"].id == pushed.id
    assert "always broken" in failed["error"]
    assert 0.02 <= failed["duration"] < 5
    assert set(failed) == {"task", "error", "duration", "_app"}
    assert db_state(dsn, pushed.id) == "failed"


def test_cancel_sends_cancelled(app: Flask, q: PgTq, recorder: Recorder, dsn: str) -> None:
    pushed = q.push("give_up")
    recorder.clear()
    pop_and_run(q, pushed.id)
    assert recorder.names() == ["task_started", "task_cancelled"]
    cancelled = recorder.payload("task_cancelled")
    assert cancelled["task"].id == pushed.id
    assert cancelled["reason"] == "not needed any more"
    assert cancelled["duration"] >= 0
    assert set(cancelled) == {"task", "reason", "duration", "_app"}
    assert db_state(dsn, pushed.id) == "cancelled"


def test_task_started_runs_in_the_tasks_own_app_context(app: Flask, q: PgTq) -> None:
    seen: list[tuple[Any, bool]] = []

    def look(sender: Any, **payload: Any) -> None:
        seen.append((current_app._get_current_object(), "outer" in g))

    g.outer = True
    pushed = q.push("add", 1, 1)
    with signals.task_started.connected_to(look):
        pop_and_run(q, pushed.id)
    assert seen == [(app, False)]


def test_outcome_signals_fire_after_the_state_is_committed(app: Flask, q: PgTq, dsn: str) -> None:
    seen: list[str] = []

    def look(sender: Any, task: Task, **extra: Any) -> None:
        seen.append(db_state(dsn, task.id))

    pushed = q.push("add", 1, 1)
    with signals.task_succeeded.connected_to(look):
        pop_and_run(q, pushed.id)
    assert seen == ["succeeded"]


def test_receivers_can_listen_to_one_app_only(dsn: str, app: Flask, q: PgTq) -> None:
    other = Flask("other")
    got: list[Any] = []

    def receiver(sender: Any, **payload: Any) -> None:
        got.append(sender)

    with signals.task_pushed.connected_to(receiver, sender=other):
        q.push("add", 1, 2)
    assert got == []
    with signals.task_pushed.connected_to(receiver, sender=app):
        q.push("add", 1, 2)
    assert got == [app]


# -- a receiver that raises -----------------------------------------------------------------


def raising(sender: Any, **payload: Any) -> None:
    raise ValueError("receiver blew up")


@pytest.mark.parametrize(
    "signal",
    [signals.task_started, signals.task_succeeded],
    ids=["task_started", "task_succeeded"],
)
def test_a_raising_receiver_is_logged_and_changes_nothing(
    app: Flask, q: PgTq, dsn: str, caplog: pytest.LogCaptureFixture, signal: Signal
) -> None:
    pushed = q.push("add", 2, 3)
    caplog.set_level(logging.ERROR, logger="flask_pgtq")
    with signal.connected_to(raising):
        done = pop_and_run(q, pushed.id)
    assert done.state == State.SUCCEEDED
    assert done.result == 5
    assert db_state(dsn, pushed.id) == "succeeded"
    errors = [r for r in caplog.records if r.name.startswith("flask_pgtq")]
    assert any(r.exc_info and r.exc_info[1].args == ("receiver blew up",) for r in errors)


def test_a_raising_push_receiver_does_not_undo_the_push(
    app: Flask, q: PgTq, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="flask_pgtq")
    with signals.task_pushed.connected_to(raising):
        task = q.push("add", 2, 3)
    assert db_state(dsn, task.id) == "queued"
    assert any(r.exc_info and r.exc_info[1].args == ("receiver blew up",) for r in caplog.records)


# -- without Flask --------------------------------------------------------------------------


def test_standalone_sender_is_the_extension(dsn: str, recorder: Recorder) -> None:
    q = PgTq(dsn=dsn)

    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    pushed = add.push(2, 3)
    pop_and_run(q, pushed.id)
    assert recorder.names() == ["task_pushed", "task_started", "task_succeeded"]
    assert all(sender is q for _, sender, _ in recorder.events)
    assert recorder.payload("task_succeeded")["result"] == 5
