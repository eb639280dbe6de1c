"""Middleware: functions wrapping every run of a handler.

Real worker processes run the ``mw_*`` handlers of ``tests/worker_app.py``,
whose extension has two layers (``outer_layer``, ``inner_layer``) and whose
handlers have one of their own (``handler_layer``); every step writes an
event to ``test_runs``.  Then in-process runs: ``Task.run``/``drain`` and
``PGTQ_EAGER``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask, g

from flask_pgtq import ConfigurationError, PgTq, Retry, State, Task, current_task
from tests import worker_app
from tests.helpers import poll_until
from tests.worker_app import mw_isolated, mw_task
from tests.workers import runs

#: Every layer and the handler, when nothing cuts the chain short.
FULL_RUN = [
    "outer-before",
    "inner-before",
    "handler-layer",
    "ran",
    "inner-after",
    "outer-after",
]


@pytest.fixture
def app(served_app: Flask) -> Flask:
    """The app the workers serve (conftest's ``served_app``)."""
    return served_app


def final(task: Task) -> Task:
    """The task once it reached a final state."""
    return poll_until(lambda: (t := worker_app.q.get_task(task.id)).state.is_final and t, 15, 0.05)


def events(dsn: str, tag: str, attempt: int | None = None) -> list[str]:
    return [r["event"] for r in runs(dsn, tag) if attempt is None or r["attempt"] == attempt]


# -- in a worker process ------------------------------------------------------------


def test_layers_run_in_order_around_the_handler_in_its_app_context(app, dsn, start_worker):
    worker = start_worker()
    task = final(mw_task.push("run", "order"))
    assert task.state is State.SUCCEEDED
    # The handler's own layer wraps the result; the extension's layers
    # return it as they got it.  g set by the outer layer reached the handler.
    assert task.result == {"wrapped": {"how": "run", "seen": "order", "pid": worker.pid}}
    assert events(dsn, "order") == FULL_RUN


def test_a_layer_that_returns_without_calling_next_skips_the_handler(app, dsn, start_worker):
    start_worker()
    task = final(mw_task.push("skip", "skip"))
    assert task.state is State.SUCCEEDED
    assert task.result == "skipped"
    assert task.attempts == 1
    assert events(dsn, "skip") == ["outer-before"]


def test_retry_raised_by_a_layer_retries_the_task(app, dsn, start_worker):
    start_worker()
    task = final(mw_task.push("mw-retry", "later"))
    assert task.state is State.SUCCEEDED
    assert task.attempts == 2
    assert "the middleware says later" in task.history[0]["error"]
    assert events(dsn, "later", attempt=1) == ["outer-before"]
    assert events(dsn, "later", attempt=2) == FULL_RUN


def test_an_exception_from_a_layer_is_a_failed_attempt(app, dsn, start_worker):
    start_worker()
    task = final(mw_task.push("mw-raise", "refused"))
    assert task.state is State.FAILED
    assert task.attempts == 2  # retried like a handler's failure
    assert task.error.startswith("Traceback (most recent call last):")
    assert task.error.rstrip().endswith("ValueError: the middleware refused refused")
    assert "ran" not in events(dsn, "refused")
    assert len(task.history) == 2


def test_an_isolated_handler_runs_its_layers_in_its_child(app, dsn, start_worker):
    worker = start_worker()
    task = final(mw_isolated.push("run", "child"))
    assert task.state is State.SUCCEEDED
    child = task.result["wrapped"]["pid"]
    assert child != worker.pid
    assert task.result["wrapped"]["seen"] == "child"
    rows = runs(dsn, "child")
    assert [r["event"] for r in rows] == FULL_RUN
    assert {r["pid"] for r in rows} == {child}


def test_other_handlers_pass_through(app, dsn, start_worker):
    start_worker()
    task = final(worker_app.add.push(2, 3))
    assert task.result == 5


# -- in this process ----------------------------------------------------------------


def make_app(dsn: str, **settings: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(PGTQ_DSN=dsn, **settings)
    return app


def layer(seen: list[str], name: str) -> Callable[[Task, Callable[[], Any]], Any]:
    def wrap(task: Task, call_next: Callable[[], Any]) -> Any:
        seen.append(f"{name} {task.name}")
        return call_next()

    return wrap


def test_task_run_and_drain_go_through_the_layers(dsn: str) -> None:
    seen: list[str] = []
    app = make_app(dsn)
    q = PgTq(app)
    q.middleware(layer(seen, "first"))

    @q.handler(middleware=[layer(seen, "own")])
    def double(x: int) -> int:
        seen.append(f"ran {current_task.id == task.id}")
        return 2 * x

    q.middleware(layer(seen, "second"))  # registered after the handler: still used

    with app.app_context():
        task = double.push(21)
        (ran,) = q.drain()
        assert ran.result == 42
    assert seen == ["first double", "second double", "own double", "ran True"]


def test_eager_pushes_go_through_the_layers(dsn: str) -> None:
    seen: list[str] = []
    app = make_app(dsn, PGTQ_EAGER=True)
    q = PgTq(app)

    @q.middleware
    def tag(task: Task, call_next: Callable[[], Any]) -> Any:
        seen.append(f"tag {task.args}")
        return {"tagged": call_next()}

    @q.handler()
    def echo(x: int) -> int:
        return x

    with app.app_context():
        assert echo.push(7).result == {"tagged": 7}
        assert echo(8) == 8  # a plain call is no task: no middleware
    assert seen == ["tag [7]"]


def test_a_layer_may_wrap_the_run_and_see_its_app_context(dsn: str) -> None:
    app = make_app(dsn)
    q = PgTq(app)
    opened: list[str] = []

    @q.middleware
    def in_transaction(task: Task, call_next: Callable[[], Any]) -> Any:
        g.transaction = "open"
        opened.append("begin")
        try:
            value = call_next()
        except BaseException:
            opened.append("rollback")
            raise
        opened.append("commit")
        return value

    @q.handler(max_attempts=1)
    def uses_it(fail: bool) -> str:
        if fail:
            raise Retry(reason="not now")
        return str(g.transaction)

    with app.app_context():
        uses_it.push(False)
        uses_it.push(True)
        good, bad = q.drain()
    assert good.result == "open"
    assert bad.state is State.FAILED and "Retry: not now" in bad.error
    assert opened == ["begin", "commit", "begin", "rollback"]


def test_middleware_must_be_callable(dsn: str) -> None:
    q = PgTq(make_app(dsn))
    with pytest.raises(ConfigurationError, match="a middleware is a function"):
        q.middleware("timing")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="must be a list"):
        q.handler(middleware=lambda task, call_next: call_next())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="a middleware is a function"):
        q.handler(middleware=[None])  # type: ignore[list-item]
