"""``async def`` handlers: on one event loop per worker, counted in
``--concurrency`` with the sync ones, with timeouts, cancels, ``Retry``,
progress and a fresh app context each; run to completion with
``asyncio.run`` by ``PGTQ_EAGER``, ``Task.run`` and ``drain``."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime
from typing import Any

import pytest
from flask import Flask, g

from flask_pgtq import ConfigurationError, PgTq, Retry, SetupError, State, current_task, signals
from tests.helpers import poll_until, sql_all
from tests.workers import runs


def ended(task_id: int) -> Any:
    """The task once it has ended, else ``None``."""
    from tests import worker_app

    task = worker_app.q.get_task(task_id)
    return task if task.state.is_final else None


def intervals(dsn: str, tags: str = "%") -> list[tuple[datetime, datetime]]:
    """(started, finished) of each task in test_runs whose tag is LIKE *tags*."""
    rows = sql_all(
        dsn,
        "SELECT task_id, attempt, event, at FROM test_runs "
        "WHERE event IN ('started', 'finished') AND tag LIKE %s ORDER BY at",
        (tags,),
    )
    starts: dict[tuple[int, int], datetime] = {}
    spans = []
    for task_id, attempt, event, at in rows:
        if event == "started":
            starts[(task_id, attempt)] = at
        else:
            spans.append((starts.pop((task_id, attempt)), at))
    return spans


def most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    events = sorted(
        itertools.chain(((s, 1) for s, _ in spans), ((e, -1) for _, e in spans)),
        key=lambda item: (item[0], item[1]),  # an end before a start at the same time
    )
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_async_tasks_overlap_on_one_loop_while_sync_tasks_run(
    served_app: Flask, dsn: str, start_worker: Any
) -> None:
    from tests import worker_app

    start_worker("--concurrency", "20")
    sync = [worker_app.slow.push(0.3, f"sync-{i}").id for i in range(4)]
    ids = worker_app.async_sleep.push_many([(0.5, f"async-{i}") for i in range(20)])
    tasks = [poll_until(lambda i=i: ended(i), 20, 0.05) for i in ids + sync]
    assert {t.state for t in tasks} == {State.SUCCEEDED}
    assert [t.result for t in tasks[:20]] == [f"async-{i}" for i in range(20)]
    assert tasks[0].progress == {"tag": "async-0"}

    rows = sql_all(
        dsn,
        "SELECT min(at) FILTER (WHERE event = 'started'), max(at) FILTER (WHERE event = "
        "'finished'), count(DISTINCT pid) FROM test_runs WHERE tag LIKE 'async-%'",
    )
    first_start, last_end, pids = rows[0]
    # Twenty sleeps of 0.5 s overlapped (at most two rounds, the sync tasks
    # holding 4 of the 20 slots for 0.3 s): far less than 10 s in a row.
    assert 0.5 <= (last_end - first_start).total_seconds() < 1.5
    assert pids == 1
    assert most_at_once(intervals(dsn, "async-%")) >= 16
    assert most_at_once(intervals(dsn)) <= 20


def test_concurrency_counts_sync_and_async_tasks_together(
    served_app: Flask, dsn: str, start_worker: Any
) -> None:
    from tests import worker_app

    start_worker("--concurrency", "3")
    ids = worker_app.async_sleep.push_many([(0.3, f"a{i}") for i in range(6)])
    ids += worker_app.slow.push_many([(0.3, f"s{i}") for i in range(6)])
    for task_id in ids:
        assert poll_until(lambda i=task_id: ended(i), 30, 0.05).state == "succeeded"
    spans = intervals(dsn)
    assert len(spans) == 12
    assert most_at_once(spans) == 3


def test_an_async_handler_past_its_timeout_is_cancelled_and_retried(
    served_app: Flask, dsn: str, start_worker: Any
) -> None:
    from tests import worker_app

    start_worker()
    task_id = worker_app.async_too_slow.push("slow").id
    task = poll_until(lambda: ended(task_id), 20, 0.05)
    assert task.state is State.FAILED and task.attempts == 2
    assert "TaskTimeout: ran longer than its timeout of 0.5s" in task.error
    assert [h["state"] for h in task.history] == ["queued", "failed"]
    assert [r["event"] for r in runs(dsn, "slow")] == ["started", "started"]


def test_a_cancelled_async_handler_is_stopped_after_the_grace(
    served_app: Flask, dsn: str, start_worker: Any
) -> None:
    from tests import worker_app

    worker = start_worker(settings={"PGTQ_CANCEL_GRACE": 0.5})
    task_id = worker_app.async_stubborn.push("stubborn").id
    poll_until(lambda: runs(dsn, "stubborn"), 10, 0.02, "the task to start")
    worker_app.q.cancel(task_id)
    task = poll_until(lambda: ended(task_id), 10, 0.05)
    assert task.state is State.CANCELLED
    assert task.error == "cancelled while running: stopped by the worker"
    # The worker goes on: the loop runs the next async task.
    assert worker_app.async_sleep.push(0, "after").wait(10) == "after"
    assert "did not stop" not in worker.output()


def test_an_async_handler_sees_the_cancel_request(
    served_app: Flask, dsn: str, start_worker: Any
) -> None:
    from tests import worker_app

    start_worker(settings={"PGTQ_CANCEL_GRACE": 30})
    task_id = worker_app.async_polite.push("polite").id
    poll_until(lambda: runs(dsn, "polite"), 10, 0.02, "the task to start")
    worker_app.q.cancel(task_id)
    task = poll_until(lambda: ended(task_id), 10, 0.05)
    assert task.state is State.CANCELLED and task.error == "stopped when asked"
    assert [r["event"] for r in runs(dsn, "polite")] == ["started", "saw cancel"]


def test_retry_from_an_async_handler(served_app: Flask, dsn: str, start_worker: Any) -> None:
    from tests import worker_app

    start_worker()
    task = worker_app.async_retry.push("again")
    assert task.wait(20) == 3
    assert [h["error"] for h in task.history] == ["Retry: attempt 1", "Retry: attempt 2"]
    assert len(runs(dsn, "again")) == 3


# -- in this process ------------------------------------------------------------


@pytest.fixture
def q(q: PgTq) -> PgTq:
    @q.handler(max_attempts=2)
    async def fetch(n: int) -> dict[str, Any]:
        g.n = n
        await asyncio.sleep(0)
        if n < 0:
            raise Retry(reason="negative")
        return {"n": g.n, "task": current_task.id, "attempt": current_task.attempts}

    return q


def test_a_plain_call_returns_the_coroutine(q: PgTq) -> None:
    coroutine = q.handlers["fetch"](1)
    assert asyncio.iscoroutine(coroutine)
    with pytest.raises(SetupError, match="not inside a flask_pgtq task handler"):
        asyncio.run(coroutine)


def test_drain_and_task_run_use_asyncio_run(q: PgTq, app: Flask) -> None:
    seen: list[str] = []

    def started(sender: Any, task: Any) -> None:
        seen.append(f"started {task.id}")

    def succeeded(sender: Any, task: Any, **extra: Any) -> None:
        seen.append(f"succeeded {task.id}")

    with signals.task_started.connected_to(started), signals.task_succeeded.connected_to(succeeded):
        first = q.push("fetch", 1)
        q.push("fetch", -1)
        ran = q.drain(now=True)
    assert ran[0].result == {"n": 1, "task": first.id, "attempt": 1}
    assert [t.state for t in ran] == [State.SUCCEEDED, State.QUEUED, State.FAILED]
    assert ran[2].error == "Retry: negative"
    assert seen == [f"started {first.id}", f"succeeded {first.id}"] + [f"started {ran[1].id}"] * 2


def test_eager_runs_an_async_handler_to_completion(dsn: str) -> None:
    q = PgTq(dsn=dsn, eager=True)

    @q.handler()
    async def double(n: int) -> int:
        await asyncio.sleep(0)
        return 2 * n

    assert double.push(21).result == 42

    async def inside_a_loop() -> None:
        double.push(1)

    with pytest.raises(SetupError, match="cannot run to completion in a thread whose event"):
        asyncio.run(inside_a_loop())
    q.close()


def test_isolated_async_handlers_are_refused(q: PgTq) -> None:
    async def crunch() -> None: ...

    with pytest.raises(ConfigurationError, match="is async: isolated=True is for handlers"):
        q.handler(isolated=True)(crunch)
