"""Results, waiting and progress."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from flask import Flask

from flask_pgtq import NotClaimed, PgTq, State, TaskFailed, WaitTimeout, current_task
from tests import worker_app
from tests.helpers import poll_until


@pytest.fixture
def queue_settings() -> dict[str, Any]:
    return {"PGTQ_POLL_INTERVAL": 30.0}  # a wait must not rely on polling


@pytest.fixture
def q(standalone_q: PgTq) -> PgTq:
    return standalone_q


def run_soon(q: PgTq, delay: float = 0.3) -> threading.Thread:
    """Claim and run the next task in another thread, after *delay* seconds."""

    def work() -> None:
        time.sleep(delay)  # noqa: TID251 - let the waiter start waiting first
        task = poll_until(q.pop, 5, 0.01)
        task.run()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_wait_returns_the_result_woken_by_notify(q: PgTq) -> None:
    @q.handler()
    def add(a: int, b: int) -> int:
        return a + b

    task = add.push(2, 3)
    worker = run_soon(q)
    started = time.monotonic()
    assert task.wait(timeout=10) == 5
    waited = time.monotonic() - started
    worker.join()
    assert task.state is State.SUCCEEDED and task.result == 5
    # The poll interval is 30 s: only NOTIFY explains a return this soon.
    assert waited < 5


def test_wait_on_a_finished_task_returns_at_once(q: PgTq) -> None:
    @q.handler()
    def hello() -> str:
        return "hi"

    task = hello.push()
    q.pop().run()
    assert task.wait(timeout=1) == "hi"


def test_wait_raises_task_failed_with_the_error(q: PgTq) -> None:
    @q.handler(max_attempts=1)
    def broken() -> None:
        raise ValueError("no luck")

    task = broken.push()
    worker = run_soon(q)
    with pytest.raises(TaskFailed) as info:
        task.wait(timeout=10)
    worker.join()
    assert "ValueError: no luck" in info.value.error
    assert info.value.task.state is State.FAILED


def test_wait_raises_for_a_cancelled_task(q: PgTq) -> None:
    from flask_pgtq import Cancel

    @q.handler()
    def nope() -> None:
        raise Cancel("not needed")

    task = nope.push()
    q.pop().run()
    with pytest.raises(TaskFailed, match="cancelled"):
        task.wait(timeout=1)


def test_wait_times_out(q: PgTq) -> None:
    @q.handler()
    def never_run() -> None:
        pass

    task = never_run.push()
    started = time.monotonic()
    with pytest.raises(WaitTimeout):
        task.wait(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 3
    assert isinstance(WaitTimeout("x"), TimeoutError)


def test_wait_keeps_waiting_through_a_retry(q: PgTq) -> None:
    @q.handler(max_attempts=2, retry_backoff=0)
    def second_time_lucky() -> int:
        if current_task.attempts == 1:
            raise RuntimeError("first attempt fails")
        return current_task.attempts

    task = second_time_lucky.push()

    def work() -> None:
        for _ in range(2):
            poll_until(q.pop, 5, 0.01).run()

    thread = threading.Thread(target=work)
    thread.start()
    assert task.wait(timeout=10) == 2
    thread.join()


def test_refresh_reloads_the_task(q: PgTq) -> None:
    @q.handler()
    def job() -> str:
        return "done"

    task = job.push()
    q.pop().run()
    assert task.state is State.QUEUED
    assert task.refresh() is task
    assert task.state is State.SUCCEEDED and task.result == "done"


def test_progress_is_stored_and_read_back(q: PgTq) -> None:
    seen = []

    @q.handler()
    def long_job(total: int) -> int:
        for done in range(0, total + 1, 5):
            current_task.set_progress({"done": done, "total": total})
            seen.append(q.get_task(current_task.id).progress)
        return total

    task = long_job.push(10)
    q.pop().run()
    assert seen == [{"done": d, "total": 10} for d in (0, 5, 10)]
    assert q.get_task(task.id).progress == {"done": 10, "total": 10}


def test_progress_must_be_json_and_needs_a_running_task(q: PgTq) -> None:
    from flask_pgtq import ArgumentsNotSerializable

    @q.handler()
    def job() -> None:
        current_task.set_progress({"when": object()})

    task = job.push()
    ran = q.pop().run()
    assert ran.state is State.QUEUED  # the handler's error is an ordinary failure
    assert "progress cannot be stored as JSON" in ran.error
    with pytest.raises(NotClaimed):
        q.get_task(task.id).set_progress(50)
    with pytest.raises(ArgumentsNotSerializable):
        ran.set_progress(float("nan"))


def test_a_worker_process_result_is_waited_for(dsn: str, start_worker, monkeypatch) -> None:
    monkeypatch.setenv("PGTQ_TEST_APP_DSN", dsn)
    app: Flask = worker_app.create_app()
    with app.app_context():
        task = worker_app.add.push(20, 22)
        start_worker()
        assert task.wait(timeout=20) == 42
